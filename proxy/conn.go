package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"
	"go.uber.org/zap"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// stepKind says where one command's reply comes from.
type stepKind uint8

const (
	stepLocal stepKind = iota // bytes in client.local[a:b]
	stepCall                  // ex.Calls[a].Reply
	stepMerge                 // ex.Calls[a:b] merged by merge
	stepLock                  // lk.steps[a], turned into stepLocal by finishLocks
	stepSync                  // c.sync: runs after the round's calls, ending the round
)

type mergeKind uint8

const (
	mergeSum     mergeKind = iota // integer replies added up (DEL, EXISTS, DBSIZE ...)
	mergeOK                       // +OK from every part (MSET)
	mergeMGet                     // arrays scattered back into the client's key order
	mergeInfo                     // INFO: upstream server section, proxy section, keyspace sum
	mergeCommand                  // COMMAND and its subcommands, with the lock commands added
	mergeConcat                   // arrays concatenated (KEYS)
	mergeFirst                    // the first error, else the first reply (SCRIPT LOAD, FLUSHALL ...)
	mergeRandom                   // a random non-nil reply (RANDOMKEY)
	mergeAnd                      // element-wise AND of 0/1 arrays (SCRIPT EXISTS)
	mergeKill                     // OK if any node killed it (SCRIPT KILL, FUNCTION KILL)
	mergeScan                     // a node's SCAN reply with the proxy's cursor
	mergeUnion                    // arrays merged without duplicates (PUBSUB CHANNELS)
	mergeNumSub                   // name/count pairs summed (PUBSUB NUMSUB)
)

type step struct {
	kind  stepKind
	merge mergeKind
	a, b  int
	// For mergeMGet: positions[pa:pb] map each part's elements to the client's order.
	pa, pb int
	// For mergeInfo: which sections were asked for.
	info infoSections
	// For mergeCommand and EVALSHA: the request's arguments.
	args [][]byte
	// evalsha marks a client EVALSHA, retried after loading the script on NOSCRIPT.
	evalsha bool
}

// client is one downstream connection. Everything in it is owned by its goroutine, except the
// fields read by CLIENT LIST, which are behind mu.
type client struct {
	s    *Server
	conn net.Conn
	id   int64
	rd   *resp.Reader
	ex   *cluster.Exchange

	out       []byte
	local     []byte
	scratch   []byte
	steps     []step
	keys      []int
	positions []int
	elems     [][]byte
	slotIdx   map[uint16]int

	created  time.Time
	raddr    string
	laddr    string
	lastCmd  atomic.Int64
	quitting bool
	lk       lockState
	tx       txState
	sync     syncStep

	hasEvalSHA bool
	ps         *pubsubState
	authed     bool

	mu          sync.Mutex
	name        string
	libName     string
	libVer      string
	lastCmdName string
}

func newClient(s *Server, conn net.Conn) *client {
	c := &client{
		s:       s,
		conn:    conn,
		id:      s.nextID.Add(1),
		rd:      resp.NewReader(conn, s.opts.Limits),
		authed:  s.auth == nil,
		ex:      cluster.NewExchange(),
		created: time.Now(),
		raddr:   conn.RemoteAddr().String(),
		laddr:   conn.LocalAddr().String(),
	}
	c.lastCmd.Store(c.created.UnixNano())
	if !c.authed {
		c.rd.SetLimits(PreAuthLimits)
	}
	return c
}

// interrupt wakes a client blocked reading so that it notices shutdown.
func (c *client) interrupt() { _ = c.conn.SetReadDeadline(time.Now()) }

func (c *client) serve() { c.serveFrom(nil, nil) }

// serveFrom serves the connection until it closes, starting with cmds and then err, which an
// event loop had read before handing the client over.
func (c *client) serveFrom(cmds []resp.Command, err error) {
	defer func() {
		_ = c.conn.Close()
		c.endTx(false)
		c.endPubSub()
		c.releaseKeepalives()
	}()
	for !c.quitting {
		if cmds == nil && err == nil {
			cmds, err = c.rd.ReadBatch()
		}
		for len(cmds) > 0 && !c.quitting {
			n := min(len(cmds), c.s.opts.MaxBatch)
			if !c.runBatch(cmds[:n]) {
				return
			}
			cmds = cmds[n:]
		}
		cmds = nil
		if err != nil {
			var pe *resp.ProtocolError
			if errors.As(err, &pe) && !c.quitting {
				c.s.protoErrors.Add(1)
				c.out = redcon.AppendError(c.out[:0], "ERR "+pe.Error())
				c.flush()
				c.s.log.Debug("protocol error", zap.Int64("client", c.id), zap.String("error", pe.Msg))
			} else if !errors.Is(err, io.EOF) && !c.s.isClosing() {
				c.s.log.Debug("client read", zap.Int64("client", c.id), zap.Error(err))
			}
			return
		}
		if c.s.isClosing() && c.rd.Buffered() == 0 {
			return
		}
	}
}

func (c *client) flush() bool {
	if len(c.out) == 0 {
		return true
	}
	var err error
	if c.ps != nil {
		// Subscribed: upstream readers write messages to this connection too.
		c.ps.wmu.Lock()
		_, err = c.conn.Write(c.out)
		c.ps.wmu.Unlock()
	} else {
		_, err = c.conn.Write(c.out)
	}
	if cap(c.out) > 1<<20 {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return err == nil
}

// runBatch handles a run of pipelined commands: it plans them, sends all upstream calls of a
// round together, then writes every reply in order. A LOCK that may wait ends its round, so
// that the commands after it run only once it is settled. It returns false when the
// connection must close.
func (c *client) runBatch(cmds []resp.Command) bool {
	c.s.totalCmds.Add(int64(len(cmds)))
	c.lastCmd.Store(time.Now().UnixNano())
	for len(cmds) > 0 && !c.quitting {
		c.steps = c.steps[:0]
		c.local = c.local[:0]
		c.scratch = c.scratch[:0]
		c.positions = c.positions[:0]
		c.lk.steps = c.lk.steps[:0]
		c.hasEvalSHA = false
		c.ex.Reset()
		started := time.Now()
		n, closeNow, barrier := 0, false, false
		for n < len(cmds) && !c.quitting && !barrier {
			var ok bool
			ok, barrier = c.plan(&cmds[n])
			n++
			if !ok {
				closeNow = true
				break
			}
		}
		cmds = cmds[n:]
		if len(c.ex.Calls) > 0 {
			c.s.pool.Do(c.ex)
			if c.hasEvalSHA {
				c.retryEvalSHA()
			}
		}
		waiting, pttl := c.finishLocks()
		last := len(c.steps) - 1
		switch {
		case last >= 0 && c.steps[last].kind == stepSync:
			c.assemble(c.steps[:last])
			if c.sync.blocks() && !c.flush() {
				return false
			}
			reply := c.runSync()
			if reply == nil {
				return false
			}
			c.out = append(c.out, reply...)
		case waiting == nil:
			c.assemble(c.steps)
		default:
			// Answer what came before the LOCK, then block this client alone.
			c.assemble(c.steps[:last])
			if !c.flush() {
				return false
			}
			reply := c.waitForLock(waiting, pttl, started)
			if reply == nil {
				return false
			}
			c.out = append(c.out, reply...)
		}
		if !c.flush() || closeNow {
			return false
		}
	}
	return true
}

// plan decides how one command is answered and appends its step. ok is false when the
// connection must be closed without a reply (cross-protocol attacks); barrier is true for a
// LOCK that may wait.
func (c *client) plan(cmd *resp.Command) (ok, barrier bool) {
	args := cmd.Args
	if isCrossProtocol(args[0]) {
		c.s.log.Warn("possible cross-protocol attack: closing the connection",
			zap.Int64("client", c.id), zap.String("addr", c.raddr))
		return false, false
	}
	if c.s.auth != nil && !c.authed && !c.authGate(args[0]) {
		return true, false
	}
	spec, errText := c.s.table.Lookup(args)
	if c.ps != nil {
		return true, c.planSubscribed(spec, errText, cmd)
	}
	if c.tx.active {
		return true, c.planInMulti(spec, errText, cmd)
	}
	if spec == nil {
		c.localError(errText)
		return true, false
	}
	switch spec.Class {
	case commands.Lock:
		return true, c.planLockCommand(spec.Name, args)
	case commands.Local:
		c.runLocal(spec, args)
	case commands.Routed:
		c.planRouted(spec, cmd)
	case commands.Keyless:
		c.addCall(cmd, 0)
	case commands.Split:
		c.planSplit(spec, cmd)
	case commands.Pinned:
		if (spec.Name == "xread" || spec.Name == "xreadgroup") && !hasBlockOption(args) {
			c.planRouted(spec, cmd)
			return true, false
		}
		return true, c.planPinned(spec, cmd)
	case commands.Denied:
		c.localError(errDenied(spec.Name))
	case commands.FanOut:
		c.planFanOut(spec, cmd)
	}
	return true, false
}

func isCrossProtocol(name []byte) bool {
	return bytes.EqualFold(name, []byte("post")) || bytes.EqualFold(name, []byte("host:"))
}

func hasBlockOption(args [][]byte) bool {
	for _, a := range args[1:] {
		if bytes.EqualFold(a, []byte("block")) {
			return true
		}
	}
	return false
}

// request returns the command's RESP bytes: as received when the client sent multibulk, else
// re-encoded into scratch.
func (c *client) request(cmd *resp.Command) []byte {
	if cmd.Raw != nil {
		return cmd.Raw
	}
	start := len(c.scratch)
	c.scratch = appendRequest(c.scratch, cmd.Args)
	return c.scratch[start:len(c.scratch):len(c.scratch)]
}

func appendRequest(b []byte, args [][]byte) []byte {
	b = redcon.AppendArray(b, len(args))
	for _, a := range args {
		b = redcon.AppendBulk(b, a)
	}
	return b
}

func (c *client) addCall(cmd *resp.Command, slot uint16) {
	i := c.ex.Add(c.request(cmd), slot)
	c.steps = append(c.steps, step{kind: stepCall, a: i})
}

// planRouted sends a keyed command to the primary of its slot, or answers CROSSSLOT.
func (c *client) planRouted(spec *commands.Spec, cmd *resp.Command) {
	c.keys = spec.Keys(cmd.Args, c.keys[:0])
	if len(c.keys) == 0 {
		c.addCall(cmd, 0)
		c.noteScript(spec, cmd.Args)
		return
	}
	slot := cluster.SlotOf(cmd.Args[c.keys[0]])
	for _, k := range c.keys[1:] {
		if cluster.SlotOf(cmd.Args[k]) != slot {
			c.localError(errCrossSlot)
			return
		}
	}
	if !spec.ReadOnly && c.touchesLockKey(cmd.Args, c.keys) {
		c.localError(errLockKeys)
		return
	}
	c.addCall(cmd, slot)
	c.ex.Calls[len(c.ex.Calls)-1].Read = spec.ReadOnly
	c.noteScript(spec, cmd.Args)
}

func (c *client) localError(text string) {
	start := len(c.local)
	c.local = redcon.AppendError(c.local, text)
	c.steps = append(c.steps, step{kind: stepLocal, a: start, b: len(c.local)})
}

func (c *client) localReply(start int) {
	c.steps = append(c.steps, step{kind: stepLocal, a: start, b: len(c.local)})
}

// assemble writes the steps' replies, in order, to the output buffer.
func (c *client) assemble(steps []step) {
	for i := range steps {
		st := &steps[i]
		switch st.kind {
		case stepLocal:
			c.out = append(c.out, c.local[st.a:st.b]...)
		case stepCall:
			c.out = c.appendCallReply(c.out, &c.ex.Calls[st.a])
		case stepMerge:
			c.out = c.merge(c.out, st)
		}
	}
}

func (c *client) appendCallReply(out []byte, call *cluster.Call) []byte {
	switch {
	case call.Err == nil:
		return append(out, call.Reply...)
	case errors.Is(call.Err, cluster.ErrNoSlot):
		return redcon.AppendError(out, errNoSlot)
	default:
		return redcon.AppendError(out, errUpstream(call.Err))
	}
}

func appendInt(b []byte, n int64) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\r', '\n')
}

// touchesLockKey reports whether a write would reach a lock or fence key (locks.protect-keys).
func (c *client) touchesLockKey(args [][]byte, keys []int) bool {
	if !c.s.locks.opts.ProtectKeys {
		return false
	}
	for _, k := range keys {
		if commands.IsLockKey(args[k], c.s.locks.opts.KeyPrefix) {
			return true
		}
	}
	return false
}

// noteScript remembers EVAL bodies and marks EVALSHA calls for the NOSCRIPT retry.
func (c *client) noteScript(spec *commands.Spec, args [][]byte) {
	switch spec.Name {
	case "eval", "eval_ro":
		c.rememberScript(args[1])
	case "evalsha", "evalsha_ro":
		st := &c.steps[len(c.steps)-1]
		st.evalsha, st.args = true, args
		c.hasEvalSHA = true
	}
}
