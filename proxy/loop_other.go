//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// Event loops need epoll; elsewhere every client is served on a goroutine.
type loopGroup struct{}

func (s *Server) startLoops(int) error { return nil }

func (s *Server) loopCount() int { return 0 }

func (g *loopGroup) adopt(net.Conn) (func(*client), error) {
	return nil, errors.New("event loops need Linux")
}

func (g *loopGroup) shutdown(bool) {}

func (g *loopGroup) stop() {}
