package proxy

import (
	"bytes"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"
	"go.uber.org/zap"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// pubsubState is a subscribed client: SUBSCRIBE and PSUBSCRIBE live on one upstream
// connection of the client's own (a cluster delivers every PUBLISH on every node), SSUBSCRIBE
// on one per shard. Reader goroutines forward messages as raw bytes; confirmations carry the
// counts a single server would report. Every write to the client goes through wmu.
type pubsubState struct {
	c   *client
	wmu sync.Mutex

	mu       sync.Mutex
	main     *cluster.Conn
	shards   map[*cluster.Node]*cluster.Conn
	channels map[string]struct{}
	patterns map[string]struct{}
	sharded  map[string]*cluster.Conn // shard channel -> the connection it is subscribed on
	// pending: the (un)subscribe each connection is answering; the server's confirmations
	// count towards it, and a sunsubscribe it pushes on its own (the slot moved) does not.
	pending map[*cluster.Conn]*pendingSub
	wg      sync.WaitGroup
	closing atomic.Bool
}

// pendingSub is an (un)subscribe sent on one connection, waiting for its confirmations.
type pendingSub struct {
	kind  string         // the confirmations' kind: "subscribe", "sunsubscribe" ...
	names map[string]int // confirmations still due per channel; nil: any left
	left  int
	done  chan struct{} // closed once every confirmation is written, or the refusal
}

func errSubscribedContext(name string) string {
	return "ERR Can't execute '" + name + "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
}

// planSubscribeCommand handles a (P|S)(UN)SUBSCRIBE outside subscribed mode.
func (c *client) planSubscribeCommand(spec *commands.Spec, cmd *resp.Command) bool {
	if strings.Contains(spec.Name, "unsubscribe") {
		// Nothing to leave: answer like Valkey 8 does a RESP2 client.
		c.localError("NOSUB '" + spec.Name + "' command executed not in subscribed mode")
		return false
	}
	return c.addSync(syncStep{kind: syncPubSub, name: spec.Name, req: c.request(cmd), args: cmd.Args})
}

func appendUnsubscribeNone(b []byte, kind string, names [][]byte) []byte {
	if len(names) == 0 {
		b = redcon.AppendArray(b, 3)
		b = redcon.AppendBulkString(b, kind)
		b = redcon.AppendNull(b)
		return redcon.AppendInt(b, 0)
	}
	for _, n := range names {
		b = redcon.AppendArray(b, 3)
		b = redcon.AppendBulkString(b, kind)
		b = redcon.AppendBulk(b, n)
		b = redcon.AppendInt(b, 0)
	}
	return b
}

// planSubscribed handles a command in subscribed mode.
func (c *client) planSubscribed(spec *commands.Spec, errText string, cmd *resp.Command) bool {
	if spec == nil {
		c.localError(errText)
		return false
	}
	switch {
	case strings.Contains(spec.Name, "subscribe"):
		return c.addSync(syncStep{kind: syncPubSub, name: spec.Name, req: c.request(cmd), args: cmd.Args})
	case spec.Name == "ping":
		start := len(c.local)
		c.local = redcon.AppendArray(c.local, 2)
		c.local = redcon.AppendBulkString(c.local, "pong")
		if len(cmd.Args) > 1 {
			c.local = redcon.AppendBulk(c.local, cmd.Args[1])
		} else {
			c.local = redcon.AppendBulkString(c.local, "")
		}
		c.localReply(start)
	case spec.Name == "quit":
		c.runLocal(spec, cmd.Args)
	case spec.Name == "reset":
		c.endPubSub()
		c.runLocal(spec, cmd.Args)
	default:
		c.localError(errSubscribedContext(strings.ReplaceAll(spec.Name, "|", " ")))
	}
	return false
}

// runPubSub sends a (P|S)(UN)SUBSCRIBE upstream and waits until its confirmations have been
// forwarded, so that replies keep the order of the client's commands. The reply is already
// written when it returns an empty slice; nil closes the client's connection (confirmations
// that never came leave nothing to say in order).
func (c *client) runPubSub() []byte {
	s := c.sync
	if c.ps == nil {
		c.ps = &pubsubState{c: c, shards: map[*cluster.Node]*cluster.Conn{}, channels: map[string]struct{}{},
			patterns: map[string]struct{}{}, sharded: map[string]*cluster.Conn{}, pending: map[*cluster.Conn]*pendingSub{}}
	}
	ps := c.ps
	names := s.args[1:]
	switch s.name {
	case "subscribe", "psubscribe", "unsubscribe", "punsubscribe":
		if ps.main == nil {
			if strings.HasPrefix(s.name, "un") || strings.HasPrefix(s.name, "pun") {
				return appendUnsubscribeNone(nil, s.name, names)
			}
			conn, err := c.openSub(c.s.pool.NodeForSlot(0))
			if err != nil {
				return redcon.AppendError(nil, errUpstream(err))
			}
			ps.main = conn
		}
		n := len(names)
		if n == 0 {
			// Unsubscribing from all: a confirmation per channel (or pattern), or one with
			// a nil name when there is none.
			ps.mu.Lock()
			if s.name == "unsubscribe" {
				n = max(len(ps.channels), 1)
			} else {
				n = max(len(ps.patterns), 1)
			}
			ps.mu.Unlock()
		}
		if out, stop := c.exchange(ps.main, s.name, s.req, names, n); stop {
			return out
		}
	case "ssubscribe":
		slot := cluster.SlotOf(names[0])
		for _, n := range names[1:] {
			if cluster.SlotOf(n) != slot {
				return redcon.AppendError(nil, errCrossSlot)
			}
		}
		node := c.s.pool.NodeForSlot(slot)
		if node == nil {
			return redcon.AppendError(nil, errNoSlot)
		}
		conn := ps.shards[node]
		if conn == nil {
			var err error
			if conn, err = c.openSub(node); err != nil {
				return redcon.AppendError(nil, errUpstream(err))
			}
			ps.shards[node] = conn
		}
		if out, stop := c.exchange(conn, s.name, s.req, names, len(names)); stop {
			return out
		}
	case "sunsubscribe":
		if out, stop := c.sunsubscribe(names); stop {
			return out
		}
	}
	return c.endIfEmpty()
}

// sunsubscribe leaves shard channels: each on the connection it was subscribed on, a command
// per run of channels of one slot there (the server refuses several slots in one), one at a
// time, as each is answered with either its confirmations or one error. A channel this client
// is not subscribed to is answered here, as Valkey answers it (with the current count): its
// owner may have no connection of ours, and another shard would answer MOVED. Replies keep
// the order of the channels. Without channels, every connection holding some is asked.
func (c *client) sunsubscribe(names [][]byte) (out []byte, stop bool) {
	ps := c.ps
	if len(names) == 0 {
		ps.mu.Lock()
		held := map[*cluster.Conn]int{}
		var order []*cluster.Conn
		for _, conn := range ps.sharded {
			if held[conn] == 0 {
				order = append(order, conn)
			}
			held[conn]++
		}
		ps.mu.Unlock()
		if len(order) == 0 {
			return appendUnsubscribeNone(nil, "sunsubscribe", nil), true
		}
		for _, conn := range order {
			if out, stop := c.exchange(conn, "sunsubscribe", appendRequest(nil, [][]byte{[]byte("SUNSUBSCRIBE")}), nil, held[conn]); stop {
				return out, true
			}
		}
		return nil, false
	}
	type group struct {
		conn *cluster.Conn
		slot uint16
	}
	var run [][]byte
	var runG group
	flush := func() (out []byte, stop bool) {
		if len(run) == 0 {
			return nil, false
		}
		chs := run
		run = nil
		return c.exchange(runG.conn, "sunsubscribe", appendRequest(nil, append([][]byte{[]byte("SUNSUBSCRIBE")}, chs...)), chs, len(chs))
	}
	for _, n := range names {
		ps.mu.Lock()
		conn := ps.sharded[string(n)]
		ps.mu.Unlock()
		g := group{conn, cluster.SlotOf(n)}
		if conn != nil && (len(run) == 0 || g == runG) {
			runG = g
			run = append(run, n)
			continue
		}
		if out, stop := flush(); stop {
			return out, true
		}
		if conn != nil {
			runG = g
			run = append(run, n)
			continue
		}
		ps.mu.Lock()
		count := len(ps.sharded) // after the run just flushed
		ps.mu.Unlock()
		b := redcon.AppendArray(nil, 3)
		b = redcon.AppendBulkString(b, "sunsubscribe")
		b = redcon.AppendBulk(b, n)
		if !ps.write(redcon.AppendInt(b, int64(count))) {
			return nil, true
		}
	}
	return flush()
}

// exchange sends req on conn and waits until its n confirmations (of kind; for names, when
// given) or its refusal are written to the client. stop: the command ends with out.
func (c *client) exchange(conn *cluster.Conn, kind string, req []byte, names [][]byte, n int) (out []byte, stop bool) {
	ps := c.ps
	p := &pendingSub{kind: kind, left: n, done: make(chan struct{})}
	if len(names) > 0 {
		p.names = make(map[string]int, len(names))
		for _, name := range names {
			p.names[string(name)]++
		}
	}
	ps.mu.Lock()
	ps.pending[conn] = p
	ps.mu.Unlock()
	drop := func() {
		ps.mu.Lock()
		if ps.pending[conn] == p {
			delete(ps.pending, conn)
		}
		ps.mu.Unlock()
	}
	if err := conn.Write(req); err != nil {
		drop()
		return redcon.AppendError(nil, errUpstream(err)), true
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-p.done:
		return nil, false
	case <-timeout.C:
		drop()
		c.s.log.Warn("pubsub: confirmation timed out", zap.String("command", kind))
		return nil, true
	}
}

// endIfEmpty leaves subscribed mode when nothing is subscribed any more; the replies are
// already written, so it returns an empty (non-nil) slice.
func (c *client) endIfEmpty() []byte {
	c.ps.mu.Lock()
	empty := len(c.ps.channels)+len(c.ps.patterns)+len(c.ps.sharded) == 0
	c.ps.mu.Unlock()
	if empty {
		// Out of subscribed mode: the upstream connections go.
		c.endPubSub()
	}
	return []byte{}
}

// openSub opens a dedicated connection for subscriptions and starts its reader.
func (c *client) openSub(n *cluster.Node) (*cluster.Conn, error) {
	if n == nil {
		return nil, cluster.ErrNoSlot
	}
	conn, err := c.s.pool.Acquire(n)
	if err != nil {
		return nil, err
	}
	ps := c.ps
	ps.wg.Add(1)
	go ps.forward(conn)
	return conn, nil
}

var (
	kMessage  = []byte("message")
	kPMessage = []byte("pmessage")
	kSMessage = []byte("smessage")
)

// forward copies one upstream subscription connection to the client until it closes.
func (ps *pubsubState) forward(conn *cluster.Conn) {
	defer ps.wg.Done()
	var elems [][]byte
	for {
		reply, err := conn.Read()
		if err != nil {
			if !ps.closing.Load() {
				// The server dropped the subscription (its output buffer limit, a failover):
				// the client must not believe it is still subscribed.
				_ = ps.c.conn.Close()
			}
			return
		}
		if len(reply) > 0 && reply[0] == '-' {
			// The server refused an (un)subscribe: NOPERM, or MOVED for a shard channel whose
			// slot moved before the proxy's map did. The error is the command's reply.
			ps.mu.Lock()
			p := ps.pending[conn]
			delete(ps.pending, conn)
			ps.mu.Unlock()
			if cluster.IsRedirect(reply) {
				go ps.c.s.pool.RefreshNow()
				reply = redcon.AppendError(nil, errChannelMoved)
			}
			if p == nil {
				continue // no command of the client's asked for it
			}
			ok := ps.write(reply)
			close(p.done)
			if !ok {
				return
			}
			continue
		}
		elems, _ = cluster.ArrayElems(reply, elems[:0])
		if len(elems) < 3 {
			continue
		}
		kind := cluster.BulkValue(elems[0])
		out := reply
		var p *pendingSub
		if !bytes.Equal(kind, kMessage) && !bytes.Equal(kind, kPMessage) && !bytes.Equal(kind, kSMessage) {
			out, p = ps.confirmation(conn, string(kind), cluster.BulkValue(elems[1]))
		}
		ok := ps.write(out)
		if p != nil {
			ps.mu.Lock()
			if p.left--; p.left == 0 {
				if ps.pending[conn] == p {
					delete(ps.pending, conn)
				}
				close(p.done)
			}
			ps.mu.Unlock()
		}
		if !ok {
			return
		}
	}
}

// write sends b to the client; a subscriber that stopped reading is dropped rather than
// buffered for, and write reports false.
func (ps *pubsubState) write(b []byte) bool {
	ps.wmu.Lock()
	_ = ps.c.conn.SetWriteDeadline(time.Now().Add(ps.c.s.opts.SlowClientTimeout))
	_, werr := ps.c.conn.Write(b)
	_ = ps.c.conn.SetWriteDeadline(time.Time{})
	ps.wmu.Unlock()
	if werr != nil {
		_ = ps.c.conn.Close()
		return false
	}
	return true
}

// confirmation updates the client's subscription sets and re-encodes a (un)subscribe reply
// on conn with the count one server would give: channels + patterns, or shard channels. p is
// the pending command it answers, nil for one the server sent on its own.
func (ps *pubsubState) confirmation(conn *cluster.Conn, kind string, name []byte) (out []byte, p *pendingSub) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	key := string(name)
	if q := ps.pending[conn]; q != nil && q.kind == kind && q.left > 0 {
		switch {
		case q.names == nil:
			p = q
		case q.names[key] > 0:
			q.names[key]--
			p = q
		}
	}
	var count int
	switch kind {
	case "subscribe":
		ps.channels[key] = struct{}{}
	case "unsubscribe":
		delete(ps.channels, key)
	case "psubscribe":
		ps.patterns[key] = struct{}{}
	case "punsubscribe":
		delete(ps.patterns, key)
	case "ssubscribe":
		ps.sharded[key] = conn
	case "sunsubscribe":
		if ps.sharded[key] == conn {
			delete(ps.sharded, key)
		}
	}
	if kind == "ssubscribe" || kind == "sunsubscribe" {
		count = len(ps.sharded)
	} else {
		count = len(ps.channels) + len(ps.patterns)
	}
	b := redcon.AppendArray(nil, 3)
	b = redcon.AppendBulkString(b, kind)
	if name == nil {
		b = redcon.AppendNull(b)
	} else {
		b = redcon.AppendBulk(b, name)
	}
	return redcon.AppendInt(b, int64(count)), p
}

// endPubSub leaves subscribed mode: closing the upstream connections drops every server-side
// subscription at once.
func (c *client) endPubSub() {
	ps := c.ps
	if ps == nil {
		return
	}
	var conns []*cluster.Conn
	if ps.main != nil {
		conns = append(conns, ps.main)
	}
	for _, conn := range ps.shards {
		conns = append(conns, conn)
	}
	ps.closing.Store(true)
	for _, conn := range conns {
		conn.Close()
	}
	ps.wg.Wait()
	for _, conn := range conns {
		c.s.pool.Release(conn, false)
	}
	c.ps = nil
}
