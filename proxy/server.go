package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// Options configure the client side.
type Options struct {
	// Limits bound what one client may send.
	Limits resp.Limits
	// MaxClients caps concurrent client connections.
	MaxClients int
	// MaxBatch caps the commands of a pipeline sent upstream in one round; replies are written
	// after each round, so a long pipeline is answered in bounded chunks.
	MaxBatch int
	// Version is reported by INFO and HELLO.
	Version string
	// Locks configure the lock commands.
	Locks LockOptions
	// SlowClientTimeout disconnects a subscriber that has not taken a message for this long.
	SlowClientTimeout time.Duration
	// EventLoops serve ordinary single-slot traffic on this many epoll loops (Linux, plain TCP
	// upstream, reads from primaries); 0 serves every client on a goroutine of its own.
	EventLoops int
	// Auth, when set, requires clients to authenticate.
	Auth   *Auth
	Logger *zap.Logger
}

// Server accepts client connections and serves each on its own goroutine.
type Server struct {
	opts  Options
	log   *zap.Logger
	pool  *cluster.Pool
	table *commands.Table
	locks *lockManager
	auth  *Auth
	// scripts maps the SHA1 of scripts seen in EVAL and SCRIPT LOAD to their bodies.
	scripts *lru.Cache[string, string]
	start   time.Time

	upstreamVersion string

	mu        sync.Mutex
	clients   map[*client]struct{}
	closing   bool
	closingCh chan struct{}
	wg        sync.WaitGroup
	listener  net.Listener
	loops     *loopGroup

	nextID       atomic.Int64
	nClients     atomic.Int64
	totalConns   atomic.Int64
	totalCmds    atomic.Int64
	rejectedConn atomic.Int64
	protoErrors  atomic.Int64
	// Clients on event loops now, and clients handed from a loop to a goroutine so far.
	loopClients   atomic.Int64
	loopHandovers atomic.Int64
}

// NewServer returns a server that uses pool for upstream traffic and table to classify commands.
func NewServer(opts Options, pool *cluster.Pool, table *commands.Table, upstreamVersion string) *Server {
	if opts.MaxClients <= 0 {
		opts.MaxClients = 10000
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.SlowClientTimeout <= 0 {
		opts.SlowClientTimeout = 10 * time.Second
	}
	lo := &opts.Locks
	if lo.KeyPrefix == "" {
		lo.KeyPrefix = "lock:"
	}
	if lo.DefaultTTL <= 0 {
		lo.DefaultTTL = 10 * time.Second
	}
	if lo.MaxTTL <= 0 {
		lo.MaxTTL = 24 * time.Hour
	}
	if lo.MaxWait <= 0 {
		lo.MaxWait = 5 * time.Minute
	}
	if lo.ReplicaTimeout <= 0 {
		lo.ReplicaTimeout = 200 * time.Millisecond
	}
	if lo.Recheck <= 0 {
		lo.Recheck = time.Second
	}
	if lo.TokenCache <= 0 {
		lo.TokenCache = 1024
	}
	scripts, _ := lru.New[string, string](4096)
	return &Server{
		scripts:         scripts,
		auth:            opts.Auth,
		locks:           newLockManager(opts.Locks, pool, opts.Logger),
		closingCh:       make(chan struct{}),
		opts:            opts,
		log:             opts.Logger,
		pool:            pool,
		table:           table,
		start:           time.Now(),
		upstreamVersion: upstreamVersion,
		clients:         map[*client]struct{}{},
	}
}

// Serve accepts connections on ln until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.listener = ln
	s.mu.Unlock()
	if err := s.startLoops(s.opts.EventLoops); err != nil {
		s.log.Warn("event loops unavailable; serving every client on its own goroutine", zap.Error(err))
	}
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.accept(conn)
	}
}

func isTemporary(err error) bool {
	// EMFILE and friends: back off instead of failing the listener.
	var se interface{ Temporary() bool }
	return errors.As(err, &se) && se.Temporary()
}

func (s *Server) accept(conn net.Conn) {
	s.totalConns.Add(1)
	if s.nClients.Load() >= int64(s.opts.MaxClients) {
		s.rejectedConn.Add(1)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write([]byte("-" + errMaxClients + "\r\n"))
		_ = conn.Close()
		return
	}
	c := newClient(s, conn)
	var start func(*client)
	if s.loops != nil {
		var err error
		if start, err = s.loops.adopt(conn); err != nil {
			s.log.Warn("cannot move a client to an event loop; serving it on a goroutine", zap.Error(err))
		} else {
			c.conn = nil
		}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		if c.conn != nil {
			_ = conn.Close()
		} else {
			start(c) // the loop closes it
		}
		return
	}
	s.clients[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.nClients.Add(1)
	if start != nil {
		start(c)
		return
	}
	go func() {
		c.serve()
		s.clientDone(c)
	}()
}

// clientDone forgets a client whose connection is closed.
func (s *Server) clientDone(c *client) {
	s.mu.Lock()
	_, ok := s.clients[c]
	delete(s.clients, c)
	s.mu.Unlock()
	if ok {
		s.nClients.Add(-1)
		s.wg.Done()
	}
}

// serveDetached serves on a goroutine a client an event loop handed over, starting with the
// commands it had parsed and not served, then the read error it had met, if any.
func (s *Server) serveDetached(c *client, conn net.Conn, rest []resp.Command, readErr error) {
	s.mu.Lock()
	c.conn = conn
	closing := s.closing
	s.mu.Unlock()
	c.rd.SetSource(conn)
	if closing {
		c.interrupt()
	}
	go func() {
		c.serveFrom(rest, readErr)
		s.clientDone(c)
	}()
}

// Shutdown stops accepting, lets every client finish the commands it has sent, then closes the
// client connections. Clients still busy when ctx ends are closed at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		close(s.closingCh)
	}
	s.closing = true
	if s.listener != nil {
		_ = s.listener.Close()
	}
	for c := range s.clients {
		if c.conn != nil {
			c.interrupt()
		}
	}
	loops := s.loops
	s.mu.Unlock()
	if loops != nil {
		loops.shutdown(false)
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	defer s.locks.close()
	if loops != nil {
		defer loops.stop()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.clients {
			if c.conn != nil {
				_ = c.conn.Close()
			}
		}
		s.mu.Unlock()
		if loops != nil {
			loops.shutdown(true)
		}
		<-done
		return ctx.Err()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// clientList snapshots the connected clients.
func (s *Server) clientList() []*client {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*client, 0, len(s.clients))
	for c := range s.clients {
		out = append(out, c)
	}
	return out
}
