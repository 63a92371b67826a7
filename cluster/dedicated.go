package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrTooManyPinned is returned when a node already has MaxPinned connections owned by clients.
var ErrTooManyPinned = errors.New("too many pinned upstream connections (upstream.max-pinned)")

// Conn is an upstream connection owned by one client at a time: for WATCH and MULTI, blocking
// commands and subscriptions, whose state must never leak to another client. It is not safe for
// concurrent use, except Close, which may be called from any goroutine to abort a blocked Do.
type Conn struct {
	Node *Node
	conn net.Conn
	buf  []byte
	r, w int
	sc   replyScanner
	dead bool
}

// pinnedPool keeps a node's idle dedicated connections and counts the ones in use.
type pinnedPool struct {
	mu    sync.Mutex
	idle  []*Conn
	inUse int
}

const maxIdlePinned = 16

// Acquire returns a clean dedicated connection to node n, reusing an idle one when it can.
func (p *Pool) Acquire(n *Node) (*Conn, error) {
	pp := p.pinned(n)
	pp.mu.Lock()
	if p.opts.MaxPinned > 0 && pp.inUse >= p.opts.MaxPinned {
		pp.mu.Unlock()
		return nil, ErrTooManyPinned
	}
	pp.inUse++
	if k := len(pp.idle); k > 0 {
		c := pp.idle[k-1]
		pp.idle = pp.idle[:k-1]
		pp.mu.Unlock()
		return c, nil
	}
	pp.mu.Unlock()
	conn, err := p.dial(n.Addr)
	if err != nil {
		pp.mu.Lock()
		pp.inUse--
		pp.mu.Unlock()
		p.requestRefresh()
		return nil, fmt.Errorf("%w: cannot connect to %s: %v", ErrUpstream, n.Addr, err)
	}
	return &Conn{Node: n, conn: conn, buf: make([]byte, 4096)}, nil
}

// Release gives c back. clean says the connection holds no state (no WATCH, MULTI or
// subscription); otherwise, or if it failed, it is closed.
func (p *Pool) Release(c *Conn, clean bool) {
	pp := p.pinned(c.Node)
	pp.mu.Lock()
	pp.inUse--
	keep := clean && !c.dead && c.r == c.w && len(pp.idle) < maxIdlePinned
	if keep {
		if cap(c.buf) > 64<<10 {
			c.buf = make([]byte, 4096)
			c.r, c.w = 0, 0
		}
		pp.idle = append(pp.idle, c)
	}
	pp.mu.Unlock()
	if !keep {
		c.Close()
	}
}

func (p *Pool) pinned(n *Node) *pinnedPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.pins[n]
	if pp == nil {
		pp = &pinnedPool{}
		p.pins[n] = pp
	}
	return pp
}

// PinnedInUse counts the dedicated connections clients hold, over all nodes.
func (p *Pool) PinnedInUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := 0
	for _, pp := range p.pins {
		pp.mu.Lock()
		total += pp.inUse
		pp.mu.Unlock()
	}
	return total
}

// Close closes the connection; a Do blocked on it returns an error.
func (c *Conn) Close() {
	c.dead = true
	_ = c.conn.Close()
}

// Write sends requests without waiting for replies.
func (c *Conn) Write(req []byte) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(req); err != nil {
		c.dead = true
		return fmt.Errorf("%w: connection to %s lost (%v); the command may have been executed", ErrUpstream, c.Node.Addr, err)
	}
	return nil
}

// Read returns the next reply's raw bytes, valid until the next Read; it blocks as long as the
// server takes (a blocking command) unless the connection is closed.
func (c *Conn) Read() ([]byte, error) {
	for {
		if c.r < c.w {
			l, err := c.sc.scan(c.buf[c.r:c.w])
			if err != nil {
				c.dead = true
				return nil, fmt.Errorf("%w: %v", ErrUpstream, err)
			}
			if l > 0 {
				reply := c.buf[c.r : c.r+l]
				c.r += l
				return reply, nil
			}
		}
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w])
			c.r = 0
		}
		if c.w == len(c.buf) {
			nb := make([]byte, 2*len(c.buf))
			copy(nb, c.buf[:c.w])
			c.buf = nb
		}
		k, err := c.conn.Read(c.buf[c.w:])
		c.w += k
		if k == 0 && err != nil {
			c.dead = true
			return nil, fmt.Errorf("%w: connection to %s lost (%v); the command may have been executed", ErrUpstream, c.Node.Addr, err)
		}
	}
}

// Call writes req (which may hold several requests) and reads replies replies; it returns a
// copy of the last one, the others are dropped.
func (c *Conn) Call(req []byte, replies int) ([]byte, error) {
	if err := c.Write(req); err != nil {
		return nil, err
	}
	var last []byte
	for range replies {
		r, err := c.Read()
		if err != nil {
			return nil, err
		}
		last = r
	}
	return append([]byte(nil), last...), nil
}
