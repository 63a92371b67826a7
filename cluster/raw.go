package cluster

import (
	"net"
	"time"
)

// This file is what an event-loop front end needs to run its own pipelined upstream
// connections while the Pool keeps the topology, redirects and statistics.

// RawCapable reports whether plain TCP connections reach the primaries: no TLS, and reads go
// to primaries.
func (p *Pool) RawCapable() bool {
	return p.opts.TLS == nil && !p.replicaReads
}

// DialRaw connects to addr and authenticates; the caller owns the connection.
func (p *Pool) DialRaw(addr string) (net.Conn, error) {
	conn, err := p.dial(addr)
	if err != nil {
		return nil, p.dialFailed(p.node(addr), err)
	}
	return conn, nil
}

// ConnLost records that a connection opened by DialRaw failed with requests outstanding and
// returns the error those requests get.
func (p *Pool) ConnLost(addr string, failed int, cause error) error {
	p.connLost(addr, failed)
	return lostErr(addr, cause)
}

// WaitTimeout is the timeout of the WAIT after acknowledged writes.
func (p *Pool) WaitTimeout() time.Duration { return p.opts.WaitTimeout }

// Timeout is how long requests may wait with no reply byte before their connection is closed.
func (p *Pool) Timeout() time.Duration { return p.opts.Timeout }

// Epoch changes whenever a slot moves to another primary: it is odd while slots are being
// changed, and even again once they have been.
func (p *Pool) Epoch() uint64 { return p.epoch.Load() }

// Redirected is a call that got a redirect reply on a connection outside the Pool.
type Redirected struct {
	Req   []byte // the request, as sent
	Slot  uint16
	Reply []byte // the redirect on input; the final reply (or nil with Err) on output
	From  string // the node that answered
	Err   error
	// Acks > 0: the call is an acquisition to be followed by WAIT for that many replicas;
	// Acked is WAIT's answer.
	Acks  int
	Acked int
}

// FollowRedirects finishes calls whose first reply was MOVED, ASK or TRYAGAIN, one at a time
// and in order, as Do would have. A reply that is not a genuine redirect is left as it is.
func (p *Pool) FollowRedirects(rs []Redirected) {
	ex := NewExchange()
	for i := range rs {
		ex.Calls = append(ex.Calls, Call{Req: rs[i].Req, Slot: rs[i].Slot, Reply: rs[i].Reply, from: rs[i].From, Acks: rs[i].Acks})
	}
	p.followRedirects(ex)
	for i := range rs {
		rs[i].Reply, rs[i].Err, rs[i].Acked = ex.Calls[i].Reply, ex.Calls[i].Err, ex.Calls[i].Acked
	}
}

// IsRedirect reports whether a reply starts like MOVED, ASK or TRYAGAIN.
func IsRedirect(r []byte) bool { return isRedirect(r) }

// ReplyScanner finds where replies end in a stream of RESP2 replies, resuming where it
// stopped when a reply arrives in pieces.
type ReplyScanner struct{ s replyScanner }

// Scan returns the length of the reply at the start of b, or 0 when more bytes are needed.
// After 0, the next call must pass the same bytes extended.
func (s *ReplyScanner) Scan(b []byte) (int, error) { return s.s.scan(b) }
