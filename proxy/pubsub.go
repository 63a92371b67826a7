package proxy

import (
	"bytes"
	"slices"
	"strconv"
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
	sharded  map[string]*cluster.Conn      // shard channel -> the connection it is subscribed on
	pending  map[*cluster.Conn]*pendingSub // the (un)subscribe each connection is answering
	seq      uint64                        // the last pendingSub token
	wg       sync.WaitGroup
	closing  atomic.Bool
}

// pendingSub is an (un)subscribe sent on one connection with "PING token" right behind it:
// whatever the connection sends before that pong (the command's confirmations or its error,
// and any unsubscription the server pushes on its own) is written to the client first, so the
// pong ends the command, however many confirmations came.
type pendingSub struct {
	token []byte
	// shardAll: a SUNSUBSCRIBE without channels; a confirmation without a channel (the
	// connection held none any more) is not passed on, as the client asked all shards at once.
	shardAll bool
	failed   bool          // the connection or the client went away first
	done     chan struct{} // closed at the pong, or on failure
	// answered: a confirmation or the error of the command was written; an error after
	// that is the PING's (a user without +ping, a node still loading), which ends the command.
	answered bool
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
// that never came leave nothing to say in order). Whatever the outcome, a client left with
// nothing subscribed is out of subscribed mode, as with one server.
func (c *client) runPubSub() []byte {
	out := c.pubsubCommand()
	if out != nil {
		c.endIfEmpty()
	}
	return out
}

func (c *client) pubsubCommand() []byte {
	s := c.sync
	names := s.args[1:]
	if s.name == "ssubscribe" {
		for _, n := range names[1:] {
			if cluster.SlotOf(n) != cluster.SlotOf(names[0]) {
				return redcon.AppendError(nil, errCrossSlot)
			}
		}
	}
	if c.ps == nil {
		c.ps = &pubsubState{c: c, shards: map[*cluster.Node]*cluster.Conn{}, channels: map[string]struct{}{},
			patterns: map[string]struct{}{}, sharded: map[string]*cluster.Conn{}, pending: map[*cluster.Conn]*pendingSub{}}
	}
	ps := c.ps
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
		if out, stop := c.exchange(ps.main, s.req, false); stop {
			return out
		}
	case "ssubscribe":
		node := c.s.pool.NodeForSlot(cluster.SlotOf(names[0]))
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
		if out, stop := c.exchange(conn, s.req, false); stop {
			return out
		}
	case "sunsubscribe":
		if out, stop := c.sunsubscribe(names); stop {
			return out
		}
	}
	return []byte{}
}

// sunsubscribe leaves shard channels: each on the connection it was subscribed on, a command
// per run of channels of one slot there (the server refuses several slots in one), one at a
// time. A channel this client is not subscribed to is answered here, as Valkey answers it
// (with the current count): its owner may have no connection of ours, and another shard would
// answer MOVED. Replies keep the order of the channels. Without channels, every connection
// that still holds some is asked.
func (c *client) sunsubscribe(names [][]byte) (out []byte, stop bool) {
	ps := c.ps
	if len(names) == 0 {
		ps.mu.Lock()
		var order []*cluster.Conn
		for _, conn := range ps.sharded {
			if !slices.Contains(order, conn) {
				order = append(order, conn)
			}
		}
		ps.mu.Unlock()
		if len(order) == 0 {
			return appendUnsubscribeNone(nil, "sunsubscribe", nil), true
		}
		req := appendRequest(nil, [][]byte{[]byte("SUNSUBSCRIBE")})
		for _, conn := range order {
			if out, stop := c.exchange(conn, req, true); stop {
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
		return c.exchange(runG.conn, appendRequest(nil, append([][]byte{[]byte("SUNSUBSCRIBE")}, chs...)), false)
	}
	for _, n := range names {
		ps.mu.Lock()
		conn := ps.sharded[string(n)]
		ps.mu.Unlock()
		g := group{conn, cluster.SlotOf(n)}
		if len(run) > 0 && (conn == nil || g != runG) {
			if out, stop := flush(); stop {
				return out, true
			}
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

// exchange sends req on conn with a PING behind it and waits for that pong: by then every
// reply to req is written to the client. stop: the command ends with out.
func (c *client) exchange(conn *cluster.Conn, req []byte, shardAll bool) (out []byte, stop bool) {
	ps := c.ps
	ps.mu.Lock()
	if shardAll && !holds(ps.sharded, conn) {
		ps.mu.Unlock()
		return nil, false // its channels went meanwhile (the server moved their slots)
	}
	ps.seq++
	p := &pendingSub{token: strconv.AppendUint([]byte("vlp-"), ps.seq, 10), shardAll: shardAll, done: make(chan struct{})}
	ps.pending[conn] = p
	ps.mu.Unlock()
	drop := func() {
		ps.mu.Lock()
		if ps.pending[conn] == p {
			delete(ps.pending, conn)
		}
		ps.mu.Unlock()
	}
	if err := conn.Write(append(req, appendRequest(nil, [][]byte{[]byte("PING"), p.token})...)); err != nil {
		drop()
		return redcon.AppendError(nil, errUpstream(err)), true
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-p.done:
		if p.failed {
			return nil, true
		}
		return nil, false
	case <-timeout.C:
		drop()
		c.s.log.Warn("pubsub: confirmation timed out")
		return nil, true
	}
}

// holds reports whether conn holds any of the shard channels.
func holds(sharded map[string]*cluster.Conn, conn *cluster.Conn) bool {
	for _, c := range sharded {
		if c == conn {
			return true
		}
	}
	return false
}

// endIfEmpty leaves subscribed mode when nothing is subscribed any more.
func (c *client) endIfEmpty() {
	if c.ps == nil {
		return
	}
	c.ps.mu.Lock()
	empty := len(c.ps.channels)+len(c.ps.patterns)+len(c.ps.sharded) == 0
	c.ps.mu.Unlock()
	if empty {
		// Out of subscribed mode: the upstream connections go.
		c.endPubSub()
	}
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
	kMessage      = []byte("message")
	kPMessage     = []byte("pmessage")
	kSMessage     = []byte("smessage")
	kSunsubscribe = []byte("sunsubscribe")
	kPong         = []byte("pong")
)

// forward copies one upstream subscription connection to the client until it closes.
func (ps *pubsubState) forward(conn *cluster.Conn) {
	defer ps.wg.Done()
	// Whatever ends the loop ends the command waiting on this connection too.
	defer ps.finish(conn, nil, true)
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
			p, ping := ps.answering(conn)
			if p == nil {
				continue // no command of the client's asked for it
			}
			if ping {
				ps.c.s.log.Warn("pubsub: PING after an (un)subscribe refused", zap.ByteString("reply", bytes.TrimSpace(reply)))
				ps.finish(conn, p.token, false)
				continue
			}
			if !ps.write(reply) {
				return
			}
			continue
		}
		if len(reply) > 0 && reply[0] == '$' {
			// The pong of a connection no longer in subscribed mode (nothing left on it, or
			// its subscribe refused) is a plain bulk string.
			ps.finish(conn, cluster.BulkValue(reply), false)
			continue
		}
		elems, _ = cluster.ArrayElems(reply, elems[:0])
		if len(elems) == 2 && bytes.Equal(cluster.BulkValue(elems[0]), kPong) {
			ps.finish(conn, cluster.BulkValue(elems[1]), false)
			continue
		}
		if len(elems) < 3 {
			continue
		}
		kind := cluster.BulkValue(elems[0])
		out := reply
		if !bytes.Equal(kind, kMessage) && !bytes.Equal(kind, kPMessage) && !bytes.Equal(kind, kSMessage) {
			name := cluster.BulkValue(elems[1])
			if name == nil && bytes.Equal(kind, kSunsubscribe) {
				if p := ps.pendingOn(conn); p != nil && p.shardAll {
					continue // this shard held none any more; others answer for the client
				}
			}
			out = ps.confirmation(conn, string(kind), name)
		}
		if !ps.write(out) {
			return
		}
	}
}

// pendingOn returns the command conn is answering, or nil.
func (ps *pubsubState) pendingOn(conn *cluster.Conn) *pendingSub {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.pending[conn]
}

// answering marks the command conn is answering as answered and reports whether it already
// was (an error then is its PING's); p is nil when no command is pending.
func (ps *pubsubState) answering(conn *cluster.Conn) (p *pendingSub, already bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p = ps.pending[conn]; p != nil {
		already, p.answered = p.answered, true
	}
	return p, already
}

// finish ends the command conn is answering: at its pong (token), or failed.
func (ps *pubsubState) finish(conn *cluster.Conn, token []byte, failed bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.pending[conn]
	if p == nil || !failed && !bytes.Equal(p.token, token) {
		return
	}
	delete(ps.pending, conn)
	p.failed = failed
	close(p.done)
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
// on conn with the count one server would give: channels + patterns, or shard channels.
func (ps *pubsubState) confirmation(conn *cluster.Conn, kind string, name []byte) []byte {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p := ps.pending[conn]; p != nil {
		p.answered = true
	}
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
