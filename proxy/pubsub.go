package proxy

import (
	"bytes"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"

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
	sharded  map[string]struct{}
	acks     chan struct{} // one per confirmation forwarded
	// refused: one per (un)subscribe the server answered with an error, already written to
	// the client as that command's reply; it ends the wait for confirmations.
	refused chan struct{}
	wg      sync.WaitGroup
	closing atomic.Bool
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
// forwarded, so that replies keep the order of the client's commands.
func (c *client) runPubSub() []byte {
	s := c.sync
	if c.ps == nil {
		c.ps = &pubsubState{c: c, shards: map[*cluster.Node]*cluster.Conn{}, channels: map[string]struct{}{},
			patterns: map[string]struct{}{}, sharded: map[string]struct{}{}, acks: make(chan struct{}, 1024),
			refused: make(chan struct{}, 64)}
	}
	ps := c.ps
	names := s.args[1:]
	var targets []*cluster.Conn
	expect := len(names)
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
		targets = []*cluster.Conn{ps.main}
		if len(names) == 0 {
			ps.mu.Lock()
			if s.name == "unsubscribe" {
				expect = max(len(ps.channels), 1)
			} else {
				expect = max(len(ps.patterns), 1)
			}
			ps.mu.Unlock()
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
		targets = []*cluster.Conn{conn}
	case "sunsubscribe":
		if len(names) == 0 {
			ps.mu.Lock()
			expect = len(ps.sharded)
			ps.mu.Unlock()
			if expect == 0 {
				return appendUnsubscribeNone(nil, s.name, nil)
			}
			for _, conn := range ps.shards {
				targets = append(targets, conn)
			}
			break
		}
		// A channel this client is not subscribed to is answered here, as Valkey answers it
		// (with the current count): the shard that owns it may have no connection of ours,
		// and another shard would answer MOVED. The others go to the connection to their
		// slot's owner (else any, as the server may not have dropped them yet): a command
		// per run of channels of one slot (the server refuses several slots in one), one at
		// a time, as each is answered with either its confirmations or one error. Replies
		// keep the order of the channels.
		type group struct {
			conn *cluster.Conn
			slot uint16
		}
		var run [][]byte
		var runG group
		// flush sends the run; stop: the command ends with out (nil: the connection closes, as
		// confirmations that never came leave nothing to say in order).
		flush := func() (out []byte, stop bool) {
			if len(run) == 0 {
				return nil, false
			}
			chs := run
			run = nil
			if err := runG.conn.Write(appendRequest(nil, append([][]byte{[]byte("SUNSUBSCRIBE")}, chs...))); err != nil {
				return redcon.AppendError(nil, errUpstream(err)), true
			}
			return nil, !c.waitAcks(len(chs))
		}
		for _, n := range names {
			slot := cluster.SlotOf(n)
			conn := ps.shards[c.s.pool.NodeForSlot(slot)]
			ps.mu.Lock()
			_, subscribed := ps.sharded[string(n)]
			ps.mu.Unlock()
			if conn == nil && subscribed {
				for _, any := range ps.shards {
					conn = any
					break
				}
			}
			if g := (group{conn, slot}); conn != nil && subscribed && (len(run) == 0 || g == runG) {
				runG = g
				run = append(run, n)
				continue
			}
			if out, stop := flush(); stop {
				return out
			}
			if conn != nil && subscribed {
				runG = group{conn, slot}
				run = append(run, n)
				continue
			}
			ps.mu.Lock()
			count := len(ps.sharded)
			ps.mu.Unlock()
			b := redcon.AppendArray(nil, 3)
			b = redcon.AppendBulkString(b, s.name)
			b = redcon.AppendBulk(b, n)
			if !ps.write(redcon.AppendInt(b, int64(count))) {
				return nil
			}
		}
		if out, stop := flush(); stop {
			return out
		}
		return c.endIfEmpty()
	}
	for _, conn := range targets {
		if err := conn.Write(s.req); err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
	}
	return c.awaitAcks(expect)
}

// awaitAcks waits for n confirmations to be forwarded; the reply is already written, so it
// returns an empty (non-nil) slice (nil when they did not come).
func (c *client) awaitAcks(n int) []byte {
	if !c.waitAcks(n) {
		return nil
	}
	return c.endIfEmpty()
}

// waitAcks waits for n confirmations of one command on one connection, or for its refusal.
func (c *client) waitAcks(n int) bool {
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for ; n > 0; n-- {
		select {
		case <-c.ps.acks:
		case <-c.ps.refused:
			n = 0
		case <-timeout.C:
			c.s.log.Warn("pubsub: confirmation timed out")
			return false
		}
	}
	return true
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
			if cluster.IsRedirect(reply) {
				go ps.c.s.pool.RefreshNow()
				reply = redcon.AppendError(nil, errChannelMoved)
			}
			if !ps.write(reply) {
				return
			}
			select {
			case ps.refused <- struct{}{}:
			default:
			}
			continue
		}
		elems, _ = cluster.ArrayElems(reply, elems[:0])
		if len(elems) < 3 {
			continue
		}
		kind := cluster.BulkValue(elems[0])
		out := reply
		confirm := false
		if !bytes.Equal(kind, kMessage) && !bytes.Equal(kind, kPMessage) && !bytes.Equal(kind, kSMessage) {
			out = ps.confirmation(string(kind), cluster.BulkValue(elems[1]))
			confirm = true
		}
		if !ps.write(out) {
			return
		}
		if confirm {
			select {
			case ps.acks <- struct{}{}:
			default:
			}
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
// with the count one server would give: channels + patterns, or shard channels.
func (ps *pubsubState) confirmation(kind string, name []byte) []byte {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	key := string(name)
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
		ps.sharded[key] = struct{}{}
	case "sunsubscribe":
		delete(ps.sharded, key)
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
	return redcon.AppendInt(b, int64(count))
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
