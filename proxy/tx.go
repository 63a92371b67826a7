package proxy

import (
	"bytes"
	"strings"
	"time"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// txState is a client's transaction: MULTI queues commands locally (answering +QUEUED after
// the checks Valkey makes at queue time), EXEC sends MULTI … EXEC to the slot's primary as one
// contiguous block. A WATCH pins an upstream connection of the client's own, on which the
// transaction then runs; without WATCH the shared pipeline carries it, since nothing can
// interleave with a block written in one piece.
type txState struct {
	active    bool
	dirty     bool
	slot      int32 // -1 until a keyed command fixes it
	queued    []byte
	count     int
	watch     *cluster.Conn
	watchSlot int32
}

func (t *txState) slotOrZero() uint16 {
	if t.slot < 0 {
		return 0
	}
	return uint16(t.slot)
}

type syncKind uint8

const (
	syncExec syncKind = iota
	syncWatch
	syncUnwatch
	syncBlocking
	syncPubSub
)

// syncStep is a command that runs after the round's pipelined calls, alone.
type syncStep struct {
	kind syncKind
	req  []byte
	slot uint16
	name string
	args [][]byte
}

// blocks reports whether replies before the step must be written first: it may wait long,
// or (pub/sub) other goroutines write its replies.
func (s *syncStep) blocks() bool { return s.kind == syncBlocking || s.kind == syncPubSub }

var (
	reqMulti   = cluster.AppendCommand(nil, "MULTI")
	reqExec    = cluster.AppendCommand(nil, "EXEC")
	reqUnwatch = cluster.AppendCommand(nil, "UNWATCH")
)

const (
	errExecAbort     = "EXECABORT Transaction discarded because of previous errors."
	errNestedMulti   = "ERR MULTI calls can not be nested"
	errWatchInMulti  = "ERR WATCH inside MULTI is not allowed"
	errExecNoMulti   = "ERR EXEC without MULTI"
	errDiscardNoMult = "ERR DISCARD without MULTI"
)

func errNotInMulti(name string) string {
	return "ERR command '" + name + "' is not allowed inside a transaction by the proxy"
}

func (c *client) addSync(s syncStep) bool {
	c.sync = s
	c.steps = append(c.steps, step{kind: stepSync})
	return true
}

// planPinned handles the commands that need a connection of the client's own, outside MULTI.
func (c *client) planPinned(spec *commands.Spec, cmd *resp.Command) (barrier bool) {
	switch spec.Name {
	case "multi":
		c.tx.active, c.tx.dirty, c.tx.count = true, false, 0
		c.tx.queued = c.tx.queued[:0]
		c.tx.slot = -1
		if c.tx.watch != nil {
			c.tx.slot = c.tx.watchSlot
		}
		start := len(c.local)
		c.local = redcon.AppendOK(c.local)
		c.localReply(start)
	case "exec":
		c.localError(errExecNoMulti)
	case "discard":
		c.localError(errDiscardNoMult)
	case "watch":
		slot, ok := c.sameSlot(spec, cmd.Args)
		if !ok || (c.tx.watch != nil && int32(slot) != c.tx.watchSlot) {
			c.localError(errCrossSlot)
			return false
		}
		return c.addSync(syncStep{kind: syncWatch, req: c.request(cmd), slot: slot})
	case "unwatch":
		if c.tx.watch == nil {
			start := len(c.local)
			c.local = redcon.AppendOK(c.local)
			c.localReply(start)
			return false
		}
		return c.addSync(syncStep{kind: syncUnwatch})
	default:
		if strings.Contains(spec.Name, "subscribe") {
			return c.planSubscribeCommand(spec, cmd)
		}
		slot, ok := c.sameSlot(spec, cmd.Args)
		if !ok {
			c.localError(errCrossSlot)
			return false
		}
		return c.addSync(syncStep{kind: syncBlocking, req: c.request(cmd), slot: slot, name: spec.Name})
	}
	return false
}

// sameSlot returns the slot of the command's keys (0 without keys); ok is false when they span
// slots.
func (c *client) sameSlot(spec *commands.Spec, args [][]byte) (uint16, bool) {
	c.keys = spec.Keys(args, c.keys[:0])
	if len(c.keys) == 0 {
		return 0, true
	}
	slot := cluster.SlotOf(args[c.keys[0]])
	for _, k := range c.keys[1:] {
		if cluster.SlotOf(args[k]) != slot {
			return 0, false
		}
	}
	return slot, true
}

// planInMulti queues a command of a transaction, with the checks Valkey makes at queue time.
func (c *client) planInMulti(spec *commands.Spec, errText string, cmd *resp.Command) (barrier bool) {
	fail := func(text string, dirty bool) bool {
		c.localError(text)
		c.tx.dirty = c.tx.dirty || dirty
		return false
	}
	if spec == nil {
		return fail(errText, true)
	}
	switch spec.Name {
	case "exec":
		if c.tx.dirty {
			c.endTx(false)
			return fail(errExecAbort, false)
		}
		return c.addSync(syncStep{kind: syncExec})
	case "discard":
		c.endTx(false)
		start := len(c.local)
		c.local = redcon.AppendOK(c.local)
		c.localReply(start)
		return false
	case "multi":
		return fail(errNestedMulti, false)
	case "watch":
		return fail(errWatchInMulti, false)
	}
	switch spec.Class {
	case commands.Denied:
		return fail(errDenied(spec.Name), true)
	case commands.Lock, commands.FanOut:
		return fail(errNotInMulti(spec.Name), true)
	case commands.Local:
		if spec.Name != "ping" && spec.Name != "echo" {
			return fail(errNotInMulti(spec.Name), true)
		}
	case commands.Pinned:
		if strings.Contains(spec.Name, "subscribe") {
			return fail(errNotInMulti(spec.Name), true)
		}
	}
	slot, ok := c.sameSlot(spec, cmd.Args)
	if !ok || (len(c.keys) > 0 && c.tx.slot >= 0 && int32(slot) != c.tx.slot) {
		return fail(errCrossSlot, true)
	}
	if !spec.ReadOnly && c.touchesLockKey(cmd.Args, c.keys) {
		return fail(errLockKeys, true)
	}
	if len(c.keys) > 0 {
		c.tx.slot = int32(slot)
	}
	// The request must outlive this batch's read buffer: copy it.
	if cmd.Raw != nil {
		c.tx.queued = append(c.tx.queued, cmd.Raw...)
	} else {
		c.tx.queued = appendRequest(c.tx.queued, cmd.Args)
	}
	c.tx.count++
	start := len(c.local)
	c.local = redcon.AppendString(c.local, "QUEUED")
	c.localReply(start)
	return false
}

// endTx leaves MULTI and, unless keepWatch, drops the WATCH connection (closing it: it may
// hold watched keys).
func (c *client) endTx(keepWatch bool) {
	c.tx.active, c.tx.dirty, c.tx.count = false, false, 0
	if cap(c.tx.queued) > 1<<20 {
		c.tx.queued = nil
	}
	c.tx.queued = c.tx.queued[:0]
	if !keepWatch && c.tx.watch != nil {
		c.s.pool.Release(c.tx.watch, false)
		c.tx.watch = nil
	}
}

// runSync runs the round's sync step and returns its reply, or nil when the connection must
// close.
func (c *client) runSync() []byte {
	switch c.sync.kind {
	case syncExec:
		return c.exec()
	case syncWatch:
		return c.watch()
	case syncUnwatch:
		reply, err := c.tx.watch.Call(reqUnwatch, 1)
		c.s.pool.Release(c.tx.watch, err == nil)
		c.tx.watch = nil
		if err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
		return reply
	case syncBlocking:
		return c.blocking()
	case syncPubSub:
		return c.runPubSub()
	}
	return redcon.AppendError(nil, "ERR proxy: internal error")
}

func (c *client) watch() []byte {
	if c.tx.watch == nil {
		n := c.s.pool.NodeForSlot(c.sync.slot)
		if n == nil {
			return redcon.AppendError(nil, errNoSlot)
		}
		conn, err := c.s.pool.Acquire(n)
		if err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
		c.tx.watch, c.tx.watchSlot = conn, int32(c.sync.slot)
	}
	reply, err := c.tx.watch.Call(c.sync.req, 1)
	if err != nil {
		c.s.pool.Release(c.tx.watch, false)
		c.tx.watch = nil
		return redcon.AppendError(nil, errUpstream(err))
	}
	return reply
}

// exec sends MULTI, the queued commands and EXEC as one block and returns EXEC's reply.
func (c *client) exec() []byte {
	defer c.endTx(false)
	if w := c.tx.watch; w != nil {
		block := append(append(append([]byte(nil), reqMulti...), c.tx.queued...), reqExec...)
		reply, err := w.Call(block, c.tx.count+2)
		if err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
		// EXEC dropped the watched keys: the connection is clean again.
		c.s.pool.Release(w, true)
		c.tx.watch = nil
		return reply
	}
	for attempt := 0; ; attempt++ {
		node := c.s.pool.NodeForSlot(c.tx.slotOrZero())
		if node == nil {
			return redcon.AppendError(nil, errNoSlot)
		}
		ex := cluster.NewExchange()
		ex.AddTo(reqMulti, node)
		for rest := c.tx.queued; len(rest) > 0; {
			l := requestLen(rest)
			ex.AddTo(rest[:l], node)
			rest = rest[l:]
		}
		ex.AddTo(reqExec, node)
		c.s.pool.Do(ex)
		last := &ex.Calls[len(ex.Calls)-1]
		if last.Err != nil {
			return c.appendCallReply(nil, last)
		}
		moved := false
		for _, call := range ex.Calls[1 : len(ex.Calls)-1] {
			if bytes.HasPrefix(call.Reply, []byte("-MOVED ")) || bytes.HasPrefix(call.Reply, []byte("-ASK ")) {
				moved = true
			}
		}
		if !moved || attempt == 2 {
			return append([]byte(nil), last.Reply...)
		}
		// The slot moved between MULTI and EXEC: nothing ran; send it again to the new owner.
		c.s.pool.RefreshNow()
		time.Sleep(10 * time.Millisecond)
	}
}

// requestLen is the length of the RESP request at the start of b (which holds whole requests
// the proxy produced or validated).
func requestLen(b []byte) int {
	l, err := cluster.ReplyLen(b)
	if err != nil || l == 0 {
		return len(b)
	}
	return l
}

// blocking runs a blocking command on a connection of its own, so that it never delays another
// client; a client that disconnects meanwhile frees that connection at once.
func (c *client) blocking() []byte {
	for attempt := 0; ; attempt++ {
		n := c.s.pool.NodeForSlot(c.sync.slot)
		if n == nil {
			return redcon.AppendError(nil, errNoSlot)
		}
		conn, err := c.s.pool.Acquire(n)
		if err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
		gone, stopWatch := c.watchDisconnect()
		done := make(chan struct{})
		go func() {
			select {
			case <-gone:
				conn.Close()
			case <-c.s.closingCh:
				conn.Close()
			case <-done:
			}
		}()
		reply, err := conn.Call(c.sync.req, 1)
		close(done)
		stopWatch()
		c.s.pool.Release(conn, err == nil)
		if c.quitting {
			return nil
		}
		if err != nil {
			return redcon.AppendError(nil, errUpstream(err))
		}
		if attempt < 2 && (bytes.HasPrefix(reply, []byte("-MOVED ")) || bytes.HasPrefix(reply, []byte("-ASK "))) {
			c.s.pool.RefreshNow()
			continue
		}
		return reply
	}
}
