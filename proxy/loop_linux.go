//go:build linux

package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tidwall/redcon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// The event loop serves the hot path: single-slot commands, what the proxy answers alone and
// the lock commands that are one script call (classify says which). One goroutine per loop
// waits in epoll on its clients and on its own pipelined connections to each primary; in one
// pass it reads what every ready client sent, appends each command to its primary's buffer,
// reads every reply that came back, and then writes each buffer once. No goroutine hand-off
// and no futex sits between a request and its reply, and a read never ends in EAGAIN, which is
// what a goroutine per connection costs here (BENCHMARKS.md).
//
// A client leaves the loop for a goroutine of its own (serve, as before) at the first command
// the loop does not serve: transactions, pub/sub, blocking commands, a LOCK that must wait,
// KEEPALIVE, fan-out, scripts. Its replies so far are written first, and its parser, with whatever it had
// buffered, goes with it, so the hand-over is invisible to the client.

const (
	evWake   = 1
	evClient = 2
	evNode   = 3

	// A client with this many commands unanswered, or this many reply bytes unwritten, is not
	// read until it has caught up: a pipeline that does not read its replies is held here and
	// not in memory.
	loopMaxInflight = 1024
	loopMaxUnsent   = 256 << 10
	// The read buffer of an upstream connection.
	loopNodeBuf = 64 << 10
	// A dial that failed is not retried for this long: the loop is not kept busy dialling a
	// dead node for every command.
	loopDialBackoff = 100 * time.Millisecond
)

var errAgain = errors.New("would block")

type loopGroup struct {
	loops []*loop
	next  atomic.Uint32
}

// startLoops starts n event loops, or none when n is 0 or the upstream needs TLS or replica
// reads (which the goroutine path serves).
func (s *Server) startLoops(n int) error {
	if n <= 0 || !s.pool.RawCapable() {
		return nil
	}
	g := &loopGroup{}
	for range n {
		l, err := newLoop(s)
		if err != nil {
			for _, o := range g.loops {
				o.destroy()
			}
			return err
		}
		g.loops = append(g.loops, l)
	}
	for _, l := range g.loops {
		go l.run()
	}
	s.mu.Lock()
	s.loops = g
	s.mu.Unlock()
	return nil
}

// adopt takes an accepted connection's descriptor for a loop and closes conn; on failure conn
// is left open for a goroutine to serve.
func (g *loopGroup) adopt(conn net.Conn) (func(*client), error) {
	fd, err := takeFd(conn)
	if err != nil {
		return nil, err
	}
	l := g.loops[int(g.next.Add(1))%len(g.loops)]
	return func(c *client) {
		if !l.post(func() { l.addClient(c, fd) }) {
			_ = unix.Close(fd)
			c.s.clientDone(c)
		}
	}, nil
}

func (s *Server) loopCount() int {
	if s.loops == nil {
		return 0
	}
	return len(s.loops.loops)
}

// shutdown lets the loops' clients finish what they sent (force: closes them now).
func (g *loopGroup) shutdown(force bool) {
	for _, l := range g.loops {
		l.post(func() { l.beginShutdown(force) })
	}
}

// stop ends the loops once their clients are gone, closing their upstream connections.
func (g *loopGroup) stop() {
	for _, l := range g.loops {
		l.post(func() { l.exiting = true })
	}
}

type loop struct {
	s      *Server
	epfd   int
	wakefd int
	events []unix.EpollEvent

	mu     sync.Mutex
	inbox  []func()
	spare  []func()
	signal bool
	exited bool // under mu

	exiting bool

	clients  []*lclient               // by fd
	nodeFds  []*lnode                 // by fd
	nodes    map[*cluster.Node]*lnode // by the Pool's node of the same address
	ackNodes map[*cluster.Node]*lnode
	dirtyC   []*lclient
	dirtyN   []*lnode
	spareC   []*lclient
	spareN   []*lnode
	checked  int64 // when checkStalled last ran
	closing  bool
	keys     []int
	lockOut  []byte
	timers   timerHeap // of the clients waiting for a lock
	now      int64
	wakeBuf  [8]byte
}

// lclient is a client connection served by a loop.
type lclient struct {
	c      *client
	fd     int
	src    fdSource
	events uint32 // registered with epoll

	out    []byte
	outOff int
	dirty  bool
	// wblocked: a write met a full socket buffer; epoll then reports when it drains.
	wblocked bool

	// Replies are written in request order. pend[i] is the request with sequence number
	// base+i; replies that arrive before an earlier one wait in park.
	pend     []pendEntry
	phead    int
	base     uint64
	nextSeq  uint64
	park     []byte
	inflight int
	epoch    uint64 // of the slot map the in-flight requests were routed with

	// held are parsed commands not yet sent, until what is in flight is answered (dispatch
	// says when), or until the client leaves the loop (detach).
	held    []resp.Command
	detach  bool
	capped  bool
	readEnd error // EOF, a read error or a protocol error: finish, then close
	closed  bool
	gone    bool // the peer closed both ways; no longer watched
	dry     bool // the last read found no complete command

	retryQ       []cluster.Redirected
	retryReqs    []nodeReq
	retryRunning bool
	// barriers counts LOCKs in flight that the client's later commands wait for: an
	// acknowledged one (it travels on another connection) or one with WAIT (if it must wait,
	// it does so on the loop). lockSent is when the latest was sent.
	barriers int
	lockSent time.Time
	// lwait is the LOCK WAIT the client waits for, on the loop; its later commands are held.
	lwait *loopWait
}

type pendEntry struct {
	done   bool
	off, n int
}

type fdSource struct {
	fd     int
	budget int
}

// Read performs at most budget reads: the loop reads a client once per readiness event.
func (f *fdSource) Read(p []byte) (int, error) {
	if f.budget <= 0 {
		return 0, errAgain
	}
	f.budget--
	for {
		n, err := unix.Read(f.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, errAgain
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// lnode is a loop's pipelined connection to one upstream node.
type lnode struct {
	addr       string
	fd         int
	events     uint32
	dead       bool
	connecting bool // dialling on a goroutine; requests queue in out and fifo

	out  []byte // requests; out[:woff] are written, kept until answered for redirects
	woff int
	fifo []nodeReq
	head int

	in   []byte
	r, w int
	scan cluster.ReplyScanner

	// needWait > 0: the acquisitions written since the last WAIT need that many replicas; the
	// flush appends one WAIT for all of them. Their replies are held until it answers.
	needWait int
	held     []heldReply

	dirty        bool
	lastProgress int64
	dialFailedAt int64 // when a dial last failed, with dialErr
	dialErr      error
}

type nodeReq struct {
	c          *lclient // nil for the proxy's own WAIT
	seq        uint64
	slot       uint16
	start, end int
	lk         *lockStep
	attempt    bool // an attempt of the client's wait for a lock (lwait)
}

type heldReply struct {
	req   nodeReq
	reply []byte
}

func newLoop(s *Server) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, err
	}
	l := &loop{s: s, epfd: epfd, wakefd: wakefd, events: make([]unix.EpollEvent, 256),
		nodes: map[*cluster.Node]*lnode{}, ackNodes: map[*cluster.Node]*lnode{}}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd), Pad: evWake}); err != nil {
		l.destroy()
		return nil, err
	}
	return l, nil
}

func (l *loop) destroy() {
	_ = unix.Close(l.wakefd)
	_ = unix.Close(l.epfd)
}

// post runs f on the loop's goroutine.
func (l *loop) post(f func()) bool {
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		return false
	}
	l.inbox = append(l.inbox, f)
	wake := !l.signal
	l.signal = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:])
	}
	return true
}

func (l *loop) runInbox() {
	_, _ = unix.Read(l.wakefd, l.wakeBuf[:])
	l.mu.Lock()
	work := l.inbox
	l.inbox = l.spare[:0]
	l.signal = false
	l.mu.Unlock()
	for i, f := range work {
		f()
		work[i] = nil
	}
	l.spare = work[:0]
}

func (l *loop) run() {
	timeout := int(l.s.pool.Timeout() / time.Millisecond)
	tick := min(max(timeout/4, 10), 100)
	for {
		wait := l.timerWait()
		if l.busyNodes() && (wait < 0 || wait > tick) {
			wait = tick
		}
		n, err := unix.EpollWait(l.epfd, l.events, wait)
		if err != nil && err != unix.EINTR {
			l.s.log.Error("event loop: epoll_wait failed", zap.Error(err))
			return
		}
		l.now = time.Now().UnixNano()
		l.handle(n)
		l.runTimers()
		if timeout > 0 && l.now-l.checked > int64(tick)*int64(time.Millisecond) {
			l.checked = l.now
			l.checkStalled(int64(timeout) * int64(time.Millisecond))
		}
		l.flush()
		if l.exiting {
			l.exit()
			return
		}
	}
}

// exit closes everything the loop owns. Posts after it are refused; what was posted before it
// and not run yet only carried results for clients that are gone.
func (l *loop) exit() {
	l.mu.Lock()
	l.exited = true
	l.mu.Unlock()
	for _, c := range l.clients {
		if c != nil {
			l.closeClient(c)
		}
	}
	for _, m := range [2]map[*cluster.Node]*lnode{l.nodes, l.ackNodes} {
		for _, nd := range m {
			if !nd.dead && !nd.connecting {
				nd.dead = true
				_ = unix.Close(nd.fd)
			}
		}
	}
	l.destroy()
}

func (l *loop) handle(n int) {
	for i := range max(n, 0) {
		ev := l.events[i]
		switch ev.Pad {
		case evWake:
			l.runInbox()
		case evClient:
			if c := l.client(int(ev.Fd)); c != nil {
				if ev.Events&unix.EPOLLOUT != 0 {
					l.writeClient(c)
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.closed {
					l.readClient(c, 1)
				}
				if ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 && !c.closed {
					l.peerGone(c)
				} else if ev.Events&unix.EPOLLRDHUP != 0 && c.lwait != nil && !c.closed {
					// A waiting client that left: it must not end up holding the lock.
					if c.readEnd == nil {
						c.readEnd = io.EOF
					}
					l.settle(c)
				}
			}
		case evNode:
			if nd := l.node(int(ev.Fd)); nd != nil {
				if ev.Events&unix.EPOLLOUT != 0 {
					l.writeNode(nd)
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !nd.dead {
					l.readNode(nd)
				}
			}
		}
	}
}

func (l *loop) client(fd int) *lclient {
	if fd < len(l.clients) {
		return l.clients[fd]
	}
	return nil
}

func (l *loop) node(fd int) *lnode {
	if fd < len(l.nodeFds) {
		return l.nodeFds[fd]
	}
	return nil
}

func (l *loop) busyNodes() bool {
	for _, m := range [2]map[*cluster.Node]*lnode{l.nodes, l.ackNodes} {
		for _, nd := range m {
			if nd.head < len(nd.fifo) {
				return true
			}
		}
	}
	return false
}

// flush writes every buffer that got bytes in this pass: requests first, then replies.
// Writing a client can release commands it held back, which dirties nodes again.
func (l *loop) flush() {
	for len(l.dirtyN) > 0 || len(l.dirtyC) > 0 {
		ns := l.dirtyN
		l.dirtyN = l.spareN[:0]
		for i, nd := range ns {
			nd.dirty = false
			if nd.needWait > 0 && !nd.dead {
				l.appendWait(nd)
			}
			if !nd.dead {
				l.writeNode(nd)
			}
			ns[i] = nil
		}
		l.spareN = ns[:0]
		cs := l.dirtyC
		l.dirtyC = l.spareC[:0]
		for i, c := range cs {
			c.dirty = false
			if !c.closed {
				l.writeClient(c)
			}
			cs[i] = nil
		}
		l.spareC = cs[:0]
	}
}

// ---------------------------------------------------------------------------------------------
// Clients.

func (l *loop) addClient(c *client, fd int) {
	lc := &lclient{c: c, fd: fd, src: fdSource{fd: fd}}
	c.rd.SetSource(&lc.src)
	if l.closing {
		l.closeClient(lc)
		return
	}
	for fd >= len(l.clients) {
		l.clients = append(l.clients, make([]*lclient, max(64, len(l.clients)))...)
	}
	l.clients[fd] = lc
	l.s.loopClients.Add(1)
	lc.events = unix.EPOLLIN
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: lc.events, Fd: int32(fd), Pad: evClient}); err != nil {
		l.s.log.Warn("event loop: cannot watch a client", zap.Error(err))
		l.closeClient(lc)
	}
}

// wantEvents is what epoll should report for c in its present state.
func (l *loop) wantEvents(c *lclient) uint32 {
	var ev uint32
	if c.wblocked {
		ev |= unix.EPOLLOUT
	}
	if c.readEnd == nil && c.held == nil && !c.detach && !c.capped && !l.closing {
		ev |= unix.EPOLLIN
	}
	if c.lwait != nil {
		ev |= unix.EPOLLRDHUP // a waiter that leaves is noticed even while it is not read
	}
	return ev
}

func (l *loop) rearm(c *lclient) {
	if c.closed || c.gone {
		return
	}
	ev := l.wantEvents(c)
	if ev == c.events {
		return
	}
	c.events = ev
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: ev, Fd: int32(c.fd), Pad: evClient})
}

// readClient reads at most budget times from c and sends what it can.
func (l *loop) readClient(c *lclient, budget int) {
	if c.closed || c.held != nil || c.detach || c.capped || c.readEnd != nil {
		return
	}
	c.src.budget = budget
	c.dry = true
	for {
		cmds, err := c.c.rd.ReadBatch()
		if len(cmds) > 0 {
			c.dry = false
			l.s.totalCmds.Add(int64(len(cmds)))
			c.c.lastCmd.Store(l.now)
			if k := l.dispatch(c, cmds); k < len(cmds) {
				c.held = cmds[k:]
				if err != nil && err != errAgain {
					c.readEnd = err
				}
				break
			}
		}
		if err != nil {
			if err != errAgain {
				c.readEnd = err
			}
			break
		}
		if c.waiting() >= loopMaxInflight || len(c.out)-c.outOff >= loopMaxUnsent {
			c.capped = true
			break
		}
	}
	l.settle(c)
}

// dispatch sends cmds upstream in order and returns how many it took. It stops at a command
// the loop does not serve, and holds the rest while something could let a later command
// overtake an earlier one: the slot map moved under requests in flight, redirects are being
// followed, or an acknowledged LOCK (on another connection) is in flight or would be sent
// while earlier commands are.
func (l *loop) dispatch(c *lclient, cmds []resp.Command) int {
	pool := l.s.pool
	for i := range cmds {
		if c.detach {
			return i
		}
		e := pool.Epoch()
		if c.inflight > 0 && (e != c.epoch || e&1 == 1 || c.retryRunning || c.barriers > 0 || c.lwait != nil) {
			return i
		}
		d := l.classify(c, &cmds[i])
		if d.act == actHandOver {
			c.detach = true
			return i
		}
		acks := 0
		if d.lk != nil && d.lk.kind == lkLock {
			acks = d.lk.acks
		}
		if acks > 0 && c.inflight > 0 {
			return i
		}
		var next *loopWait
		if d.act == actSend && d.lk != nil && d.lk.kind == lkUnlock {
			// The lock's next waiter on this loop tries right behind the UNLOCK. One whose
			// acquisition needs replicas does so on the acknowledged connection: the UNLOCK
			// goes there too, when nothing of its client's is in flight on the other.
			if next = l.handTo(d.lk); next != nil && next.ls.acks > 0 {
				// Not behind another acquisition's WAIT, which would hold the release up.
				if c.inflight > 0 || !l.ackIdle(d.slot) {
					next = nil
				} else {
					d.lk.viaAck = true
				}
			}
		}
		var nd *lnode
		errText := ""
		if d.act == actSend {
			nd, errText = l.route(d.slot, acks > 0 || d.lk != nil && d.lk.viaAck)
			if c.inflight > 0 && pool.Epoch() != e {
				return i // the map moved while this command was routed
			}
			// With nothing in flight the command goes, but c.epoch below keeps the epoch read
			// before routing: if the map moved meanwhile, the route may be the old one, and
			// the client's next command must not overtake this one on the new.
		}
		if c.inflight == 0 {
			c.epoch = e
		}
		seq := c.nextSeq
		c.nextSeq++
		c.pend = append(c.pend, pendEntry{})
		c.inflight++
		switch {
		case d.act == actReply:
			l.complete(c, seq, d.reply)
			continue
		case d.act == actWait:
			c.lockSent = time.Now() // WAIT counts from here (monotonic)
			l.startWait(c, seq, d.lk, 0)
			continue
		case nd == nil:
			l.complete(c, seq, appendErr(nil, errText))
			continue
		}
		start := len(nd.out)
		if next != nil {
			// The next waiter's attempt follows: the UNLOCK does not announce the release.
			d.lk.handed = true
			// How many subscribers of the release channel are this proxy's.
			own := zeroArg
			if n := l.s.locks.sub.Confirmed(d.lk.key); n == 1 || n < 0 && next.ready {
				own = oneArg
			}
			nd.out = appendScript(nd.out, commands.ScriptUnlock, d.lk.keys, [][]byte{d.lk.args[0], oneArg, own})
		} else {
			nd.out = append(nd.out, d.req...)
		}
		nd.fifo = append(nd.fifo, nodeReq{c: c, seq: seq, slot: d.slot, start: start, end: len(nd.out), lk: d.lk})
		if acks > 0 {
			nd.needWait = max(nd.needWait, acks)
		}
		if isBarrier(d.lk) {
			c.barriers++
			c.lockSent = time.Now() // WAIT counts from here (monotonic)
		}
		if d.lk != nil && d.lk.kind == lkLock {
			// A pipelined UNLOCK without a token means this LOCK's token, even before its
			// reply.
			if c.c.lk.sent == nil || len(c.c.lk.sent) >= loopMaxInflight {
				c.c.lk.sent = map[string]string{}
			}
			c.c.lk.sent[d.lk.key] = d.lk.token
		}
		l.sent(nd)
		if next != nil {
			l.sendAttempt(next, nd)
			next.handed = true
		}
	}
	return len(cmds)
}

var oneArg, zeroArg = []byte("1"), []byte("0")

// sent notes a request appended to nd: it is written at the end of the pass.
func (l *loop) sent(nd *lnode) {
	if nd.head == len(nd.fifo)-1 {
		nd.lastProgress = l.now
	}
	if !nd.dirty {
		nd.dirty = true
		l.dirtyN = append(l.dirtyN, nd)
	}
}

func appendErr(b []byte, text string) []byte {
	b = append(b, '-')
	b = append(b, text...)
	return append(b, '\r', '\n')
}

// decision is what the loop does with one command: send req to the primary of slot (lk, for
// a lock command, says how to turn the script's reply into the client's), answer reply, or
// hand the client over.
type decision struct {
	act   int
	slot  uint16
	req   []byte
	reply []byte
	lk    *lockStep
}

// What the loop does with one command.
const (
	actSend     = iota // to the primary of its slot
	actReply           // answered by the proxy itself, without the upstream
	actHandOver        // by the client's own goroutine, from this command on
	actWait            // a LOCK WAIT queued behind this proxy's waiters: wait on the loop
)

// classify decides how the loop serves cmd. It sends ordinary keyed commands whose keys share
// a slot (multi-key ones included), and answers what the proxy answers alone without touching the upstream (PING, ECHO,
// HELLO, CLIENT, AUTH, SELECT, unknown commands, arity, CROSSSLOT and policy errors) with the
// goroutine path's own code. Everything else is handed over.
func (l *loop) classify(lc *lclient, cmd *resp.Command) decision {
	c := lc.c
	args := cmd.Args
	if isCrossProtocol(args[0]) {
		return decision{act: actHandOver}
	}
	c.steps, c.local = c.steps[:0], c.local[:0]
	if l.s.auth != nil && !c.authed && !c.authGate(args[0]) {
		return decision{act: actReply, reply: c.local}
	}
	spec, errText := l.s.table.Lookup(args)
	if spec == nil {
		return decision{act: actReply, reply: redcon.AppendError(c.local, errText)}
	}
	switch spec.Class {
	case commands.Denied:
		return decision{act: actReply, reply: redcon.AppendError(c.local, errDenied(spec.Name))}
	case commands.Local:
		switch spec.Name {
		case "dbsize", "info", "reset", "quit":
			return decision{act: actHandOver}
		}
		if strings.HasPrefix(spec.Name, "command") {
			return decision{act: actHandOver}
		}
		c.runLocal(spec, args)
		return decision{act: actReply, reply: c.local}
	case commands.Lock:
		return l.classifyLock(lc, spec.Name, args)
	case commands.Routed:
	case commands.Split:
		// MGET, MSET, DEL ... whose keys share a slot go as they are; the goroutine path
		// splits the others.
		if spec.Name == "mset" && len(args)%2 == 0 {
			return decision{act: actHandOver}
		}
	default:
		return decision{act: actHandOver}
	}
	switch spec.Name {
	case "eval", "eval_ro", "evalsha", "evalsha_ro", "fcall", "fcall_ro":
		// Scripts are remembered for the NOSCRIPT retry, and a script may return an error
		// shaped like a redirect: the goroutine path knows both.
		return decision{act: actHandOver}
	}
	if cmd.Raw == nil {
		// An inline command: forwarded re-encoded by the goroutine path.
		return decision{act: actHandOver}
	}
	l.keys = spec.Keys(args, l.keys[:0])
	if len(l.keys) == 0 {
		return decision{act: actHandOver}
	}
	slot := cluster.SlotOf(args[l.keys[0]])
	for _, k := range l.keys[1:] {
		if cluster.SlotOf(args[k]) != slot {
			if spec.Class == commands.Split {
				return decision{act: actHandOver}
			}
			return decision{act: actReply, reply: redcon.AppendError(c.local, errCrossSlot)}
		}
	}
	if !spec.ReadOnly && c.touchesLockKey(args, l.keys) {
		return decision{act: actReply, reply: redcon.AppendError(c.local, errLockKeys)}
	}
	return decision{act: actSend, slot: slot, req: cmd.Raw}
}

// classifyLock plans a lock command with the goroutine path's own code. The loop serves those
// that run as one script call: LOCK without KEEPALIVE (with replica acknowledgement too, or
// with WAIT: a LOCK WAIT that does not get the lock at once waits on the loop), UNLOCK, RENEW,
// LOCKINFO and SAFESET.
func (l *loop) classifyLock(lc *lclient, name string, args [][]byte) decision {
	c := lc.c
	c.lk.steps = c.lk.steps[:0]
	c.ex.Reset()
	c.scratch = c.scratch[:0]
	n := len(c.lk.steps)
	c.planLockCommand(name, args)
	if len(c.lk.steps) == n {
		return decision{act: actReply, reply: c.local} // LOCKID, or a bad argument
	}
	ls := &c.lk.steps[n]
	if ls.req.KeepAlive {
		// Kept alive: the client's goroutine renews it.
		c.lk.steps = c.lk.steps[:n]
		return decision{act: actHandOver}
	}
	lk := new(lockStep)
	*lk = *ls
	if ls.call < 0 {
		// Queued behind this proxy's waiters, first come first served.
		return decision{act: actWait, slot: ls.slot, lk: lk}
	}
	call := &c.ex.Calls[ls.call]
	return decision{act: actSend, slot: ls.slot, req: call.Req, lk: lk}
}

// answer delivers the upstream reply to req to its client; a lock command's reply is turned
// into the client's first.
func (l *loop) answer(req nodeReq, r []byte) { l.answerAcked(req, r, 0) }

// answerAcked is answer for a LOCK that acked replicas acknowledged.
func (l *loop) answerAcked(req nodeReq, r []byte, acked int) {
	c := req.c
	if req.attempt {
		l.attemptAnswered(req, r, acked)
		return
	}
	l.acked(req)
	if req.lk == nil {
		l.complete(c, req.seq, r)
		return
	}
	lockAnswered(c, req.lk)
	if req.lk.kind == lkLock && req.lk.req.Wait > 0 && c.gone {
		// A LOCK WAIT of a client that has closed its connection: a lock it took is given
		// back.
		l.orphaned(req, r)
		l.complete(c, req.seq, nil)
		return
	}
	var waits bool
	var pttl int64
	l.lockOut, waits, pttl = c.c.appendLockReply(l.lockOut[:0], req.lk, r, acked)
	if waits {
		l.startWait(c, req.seq, req.lk, pttl)
		return
	}
	l.complete(c, req.seq, l.lockOut)
}

// lockAnswered forgets the token of a LOCK in flight once it is answered.
func lockAnswered(c *lclient, lk *lockStep) {
	if lk.kind == lkLock && c.c.lk.sent[lk.key] == lk.token {
		delete(c.c.lk.sent, lk.key)
	}
}

// complete delivers the reply of c's request seq, writing it now if every earlier reply is out.
func (l *loop) complete(c *lclient, seq uint64, reply []byte) {
	if c.closed {
		return
	}
	if c.lwait != nil && c.lwait.seq == seq {
		l.endWait(c)
	}
	c.inflight--
	i := int(seq - c.base)
	if i != c.phead {
		c.pend[i] = pendEntry{done: true, off: len(c.park), n: len(reply)}
		c.park = append(c.park, reply...)
		return
	}
	c.out = append(c.out, reply...)
	c.phead++
	for c.phead < len(c.pend) && c.pend[c.phead].done {
		e := c.pend[c.phead]
		c.out = append(c.out, c.park[e.off:e.off+e.n]...)
		c.phead++
	}
	switch {
	case c.phead == len(c.pend):
		c.base += uint64(c.phead)
		c.pend, c.phead, c.park = c.pend[:0], 0, c.park[:0]
		if cap(c.park) > loopMaxUnsent {
			c.park = nil
		}
	case c.phead >= 1024 && 2*c.phead >= len(c.pend):
		c.compactPending()
	}
	if !c.dirty {
		c.dirty = true
		l.dirtyC = append(l.dirtyC, c)
	}
}

// compactPending drops the answered entries at the front of a queue that never empties (a
// pipeline that keeps sending), and the parked replies already written.
func (c *lclient) compactPending() {
	live := c.pend[c.phead:]
	var park []byte
	for i := range live {
		if e := &live[i]; e.done {
			off := len(park)
			park = append(park, c.park[e.off:e.off+e.n]...)
			e.off = off
		}
	}
	c.base += uint64(c.phead)
	c.pend = c.pend[:copy(c.pend, live)]
	c.phead, c.park = 0, park
}

// waiting is how many of c's commands have no reply written yet.
func (c *lclient) waiting() int { return len(c.pend) - c.phead }

// settle moves c on once its requests in flight are answered: held commands are sent, a
// detaching client is handed over, a finished one is closed, a capped one is read again.
func (l *loop) settle(c *lclient) {
	if c.closed {
		return
	}
	if c.lwait != nil && (c.readEnd != nil || c.gone) {
		// The waiting client left (or sent EOF): it stops waiting, with no reply, and what it
		// pipelined after the LOCK is not run (as on the goroutine path).
		c.held, c.detach = nil, false
		l.complete(c, c.lwait.seq, nil)
	}
	if c.inflight == 0 && c.held != nil && !c.detach {
		cmds := c.held
		c.held = nil
		if k := l.dispatch(c, cmds); k < len(cmds) {
			c.held = cmds[k:]
		} else if c.readEnd == nil {
			// Commands parsed with the held ones may still be buffered (budget 0: the
			// socket is not read).
			l.readClient(c, 0)
			return
		}
	}
	unsent := len(c.out) - c.outOff
	if c.capped && c.waiting() == 0 && unsent < loopMaxUnsent {
		c.capped = false
		if c.readEnd == nil {
			l.readClient(c, 0)
			return
		}
	}
	if c.inflight == 0 && unsent == 0 && !c.retryRunning {
		switch {
		case c.detach:
			l.handOver(c)
			return
		case c.readEnd != nil:
			l.finish(c)
			return
		case l.closing && c.held == nil:
			if !c.dry && c.readEnd == nil {
				// Shutting down: serve the complete commands already received first, as
				// the goroutine path does.
				l.readClient(c, 0)
				return
			}
			l.closeClient(c)
			return
		}
	}
	l.rearm(c)
}

// peerGone stops watching a connection the peer has closed both ways (epoll would report it
// again and again): what is in flight is let finish, then the client is closed.
func (l *loop) peerGone(c *lclient) {
	if c.readEnd == nil {
		c.readEnd = io.EOF
	}
	c.held, c.detach, c.capped = nil, false, false
	c.out, c.outOff, c.wblocked = c.out[:0], 0, false
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	c.events = 0
	c.gone = true
	l.settle(c)
}

// finish answers a protocol error, as the goroutine path does, and closes c.
func (l *loop) finish(c *lclient) {
	var pe *resp.ProtocolError
	if errors.As(c.readEnd, &pe) {
		l.s.protoErrors.Add(1)
		l.s.log.Debug("protocol error", zap.Int64("client", c.c.id), zap.String("error", pe.Msg))
		b := appendErr(nil, "ERR "+pe.Error())
		_, _ = unix.Write(c.fd, b)
	}
	l.closeClient(c)
}

func (l *loop) writeClient(c *lclient) {
	for c.outOff < len(c.out) {
		n, err := unix.Write(c.fd, c.out[c.outOff:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN && !c.gone {
			c.wblocked = true
			break
		}
		if err != nil {
			l.closeClient(c)
			return
		}
		c.outOff += n
	}
	if c.outOff == len(c.out) {
		c.wblocked = false
		c.outOff = 0
		if cap(c.out) > loopMaxUnsent {
			c.out = nil
		} else {
			c.out = c.out[:0]
		}
	}
	l.settle(c)
}

func (l *loop) unwatch(fd int) {
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	if fd < len(l.clients) {
		l.clients[fd] = nil
	}
}

func (l *loop) closeClient(c *lclient) {
	if c.closed {
		return
	}
	c.closed = true
	if c.lwait != nil {
		l.endWait(c)
	}
	if c.fd < len(l.clients) && l.clients[c.fd] == c {
		l.unwatch(c.fd)
		l.s.loopClients.Add(-1)
	}
	_ = unix.Close(c.fd)
	l.s.clientDone(c.c)
}

// handOver gives c to a goroutine of its own, with the commands it had sent that the loop did
// not serve still parsed in its reader.
func (l *loop) handOver(c *lclient) {
	rest := c.held
	c.held = nil
	c.closed = true
	c.c.lk.sent = nil // nothing is in flight any more
	l.unwatch(c.fd)
	l.s.loopClients.Add(-1)
	l.s.loopHandovers.Add(1)
	if len(rest) > 0 && l.s.log.Core().Enabled(zap.DebugLevel) {
		l.s.log.Debug("client leaves the event loop", zap.Int64("client", c.c.id), zap.ByteString("command", rest[0].Args[0]))
	}
	f := os.NewFile(uintptr(c.fd), "client")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		l.s.log.Warn("event loop: cannot hand a client over", zap.Error(err))
		l.s.clientDone(c.c)
		return
	}
	l.s.serveDetached(c.c, nc, rest, c.readEnd)
}

func (l *loop) beginShutdown(force bool) {
	l.closing = true
	for _, c := range l.clients {
		if c == nil {
			continue
		}
		switch {
		case force:
			l.closeClient(c)
		case c.lwait != nil:
			// Waiting for a lock: nil, as the goroutine path answers at shutdown.
			l.complete(c, c.lwait.seq, redcon.AppendNull(nil))
			l.settle(c)
		default:
			l.settle(c)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Upstream.

// route returns the loop's connection to the primary serving slot, or the error the client
// gets. A new connection is dialled on a goroutine, never on the loop: requests queue on it
// meanwhile, and are written once it is up (or answered with the dial's error).
func (l *loop) route(slot uint16, ack bool) (*lnode, string) {
	n := l.s.pool.NodeForSlot(slot)
	if n == nil {
		return nil, errNoSlot
	}
	nodes := l.nodes
	if ack {
		// Acquisitions followed by WAIT have a connection of their own, so that a WAIT for a
		// slow replica holds up nothing else.
		nodes = l.ackNodes
	}
	nd := nodes[n]
	if nd != nil && !nd.dead {
		return nd, ""
	}
	if nd != nil && nd.dialErr != nil && l.now-nd.dialFailedAt < int64(loopDialBackoff) {
		return nil, errUpstream(nd.dialErr)
	}
	nd = &lnode{addr: n.Addr, fd: -1, connecting: true}
	nodes[n] = nd
	pool, addr := l.s.pool, n.Addr
	go func() {
		fd := -1
		conn, err := pool.DialRaw(addr)
		if err == nil {
			if fd, err = takeFd(conn); err != nil {
				_ = conn.Close()
			}
		}
		if !l.post(func() { l.connected(nd, fd, err) }) && fd >= 0 {
			_ = unix.Close(fd)
		}
	}()
	return nd, ""
}

// connected finishes a dial started by route.
func (l *loop) connected(nd *lnode, fd int, err error) {
	nd.connecting = false
	if err == nil {
		err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: evNode})
		if err != nil {
			_ = unix.Close(fd)
		}
	}
	if err != nil {
		nd.dead, nd.dialFailedAt, nd.dialErr = true, l.now, err
		l.failRequests(nd, appendErr(nil, errUpstream(err)))
		return
	}
	nd.fd, nd.events, nd.in = fd, unix.EPOLLIN, make([]byte, loopNodeBuf)
	for fd >= len(l.nodeFds) {
		l.nodeFds = append(l.nodeFds, make([]*lnode, max(16, len(l.nodeFds)))...)
	}
	l.nodeFds[fd] = nd
	nd.lastProgress = l.now
	if !nd.dirty && nd.woff < len(nd.out) {
		nd.dirty = true
		l.dirtyN = append(l.dirtyN, nd)
	}
}

// takeFd gives the caller a non-blocking duplicate of conn's descriptor and closes conn; on
// failure conn is left open.
func takeFd(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, errors.New("not a TCP connection")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := rc.Control(func(f uintptr) { fd, err = unix.Dup(int(f)) }); cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	_ = conn.Close()
	return fd, nil
}

func (l *loop) writeNode(nd *lnode) {
	if nd.connecting {
		return // connected writes what queued
	}
	for nd.woff < len(nd.out) {
		n, err := unix.Write(nd.fd, nd.out[nd.woff:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			l.failNode(nd, err)
			return
		}
		nd.woff += n
	}
	want := uint32(unix.EPOLLIN)
	if nd.woff < len(nd.out) {
		want |= unix.EPOLLOUT
	}
	if want != nd.events {
		nd.events = want
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, nd.fd, &unix.EpollEvent{Events: want, Fd: int32(nd.fd), Pad: evNode})
	}
}

func (l *loop) readNode(nd *lnode) {
	if nd.w == len(nd.in) {
		// One reply bigger than the buffer: grow it.
		nb := make([]byte, 2*len(nd.in))
		copy(nb, nd.in[:nd.w])
		nd.in = nb
	}
	n, err := unix.Read(nd.fd, nd.in[nd.w:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		l.failNode(nd, err)
		return
	case n == 0:
		l.failNode(nd, io.EOF)
		return
	}
	nd.w += n
	nd.lastProgress = l.now
	for nd.r < nd.w {
		size, err := nd.scan.Scan(nd.in[nd.r:nd.w])
		if err != nil {
			l.failNode(nd, err)
			return
		}
		if size == 0 {
			break
		}
		if nd.head == len(nd.fifo) {
			l.failNode(nd, errors.New("reply without a request"))
			return
		}
		reply := nd.in[nd.r : nd.r+size]
		nd.r += size
		req := nd.fifo[nd.head]
		nd.fifo[nd.head] = nodeReq{}
		nd.head++
		if req.c == nil {
			l.settleWait(nd, reply)
			continue
		}
		if req.lk != nil && req.lk.kind == lkLock && req.lk.acks > 0 && reply[0] != '-' {
			// Held even for a client that is gone: a lock too few replicas have is released.
			nd.held = append(nd.held, heldReply{req: req, reply: append([]byte(nil), reply...)})
			continue
		}
		if l.stale(req) {
			l.orphaned(req, reply)
			continue
		}
		if reply[0] == '-' && cluster.IsRedirect(reply) {
			l.redirect(req, nd, reply)
			continue
		}
		l.answer(req, reply)
		if req.c.inflight == 0 {
			l.settle(req.c)
		}
	}
	// Keep the unfinished reply at the start of the buffer.
	if nd.r == nd.w {
		nd.r, nd.w = 0, 0
		if len(nd.in) > loopNodeBuf {
			nd.in = make([]byte, loopNodeBuf)
		}
	} else if nd.r > 0 {
		nd.w = copy(nd.in, nd.in[nd.r:nd.w])
		nd.r = 0
	}
	l.trimNode(nd)
}

// trimNode drops the request bytes and queue entries of answered requests.
func (l *loop) trimNode(nd *lnode) {
	if nd.head == len(nd.fifo) {
		nd.fifo, nd.head = nd.fifo[:0], 0
		if nd.woff == len(nd.out) {
			nd.out, nd.woff = nd.out[:0], 0
			if cap(nd.out) > loopMaxUnsent {
				nd.out = nil
			}
		}
		return
	}
	first := nd.fifo[nd.head].start
	if first < loopNodeBuf || first < len(nd.out)/2 {
		return
	}
	nd.out = nd.out[:copy(nd.out, nd.out[first:])]
	nd.woff -= first
	k := copy(nd.fifo, nd.fifo[nd.head:])
	clear(nd.fifo[k:])
	nd.fifo, nd.head = nd.fifo[:k], 0
	for i := range nd.fifo {
		nd.fifo[i].start -= first
		nd.fifo[i].end -= first
	}
}

// redirect hands a request answered MOVED, ASK or TRYAGAIN to the Pool, which follows it on a
// goroutine. A client's redirects are followed one at a time in request order, and the client
// sends nothing new until they are done.
func (l *loop) redirect(req nodeReq, nd *lnode, reply []byte) {
	c := req.c
	r := cluster.Redirected{
		Req:   append([]byte(nil), nd.out[req.start:req.end]...),
		Slot:  req.slot,
		Reply: append([]byte(nil), reply...),
		From:  nd.addr,
	}
	if req.lk != nil && req.lk.kind == lkLock {
		r.Acks = req.lk.acks
	}
	if req.lk != nil && req.lk.kind == lkUnlock && req.lk.handed {
		// The waiter's attempt that went behind it may now run before it: the release is
		// announced after all, and wakes the waiter when it is done.
		req.lk.handed = false
		r.Req = appendScript(nil, commands.ScriptUnlock, req.lk.keys, req.lk.args)
	}
	c.retryQ = append(c.retryQ, r)
	c.retryReqs = append(c.retryReqs, req)
	l.startRetries(c)
}

func (l *loop) startRetries(c *lclient) {
	if c.retryRunning || len(c.retryQ) == 0 {
		return
	}
	c.retryRunning = true
	batch, reqs := c.retryQ, c.retryReqs
	c.retryQ, c.retryReqs = nil, nil
	pool := l.s.pool
	go func() {
		pool.FollowRedirects(batch)
		l.post(func() {
			c.retryRunning = false
			for i := range batch {
				r := &batch[i]
				if l.stale(reqs[i]) {
					if r.Err == nil && r.Acks == 0 {
						l.orphaned(reqs[i], r.Reply)
					} else if r.Err == nil {
						l.finishAcked(reqs[i], r.Reply, r.Acked)
					}
					continue
				}
				switch {
				case r.Err != nil:
					l.acked(reqs[i])
					if reqs[i].lk != nil {
						lockAnswered(c, reqs[i].lk)
					}
					l.complete(c, reqs[i].seq, appendErr(nil, errUpstream(r.Err)))
				case r.Acks > 0:
					l.finishAcked(reqs[i], r.Reply, r.Acked)
				default:
					l.answer(reqs[i], r.Reply)
				}
			}
			l.startRetries(c)
			l.settle(c)
		})
	}()
}

// appendWait writes one WAIT after the acquisitions that need it.
func (l *loop) appendWait(nd *lnode) {
	start := len(nd.out)
	nd.out = cluster.AppendCommand(nd.out, "WAIT", strconv.Itoa(nd.needWait),
		strconv.FormatInt(max(l.s.pool.WaitTimeout().Milliseconds(), 1), 10))
	nd.fifo = append(nd.fifo, nodeReq{start: start, end: len(nd.out)})
	nd.needWait = 0
}

// settleWait answers the acquisitions a WAIT covered, now that it says how many replicas have
// them.
func (l *loop) settleWait(nd *lnode, reply []byte) {
	n, _ := cluster.IntValue(reply)
	held := nd.held
	nd.held = nil
	for _, h := range held {
		l.finishAcked(h.req, h.reply, int(n))
	}
}

// ackIdle reports whether the acknowledged connection to the primary of slot is up and has
// nothing in flight.
func (l *loop) ackIdle(slot uint16) bool {
	nd := l.ackNodes[l.s.pool.NodeForSlot(slot)]
	return nd != nil && !nd.dead && !nd.connecting && nd.head == len(nd.fifo) && len(nd.held) == 0 && nd.needWait == 0
}

// isBarrier reports whether later commands of the client wait for this lock command.
func isBarrier(lk *lockStep) bool {
	return lk != nil && (lk.kind == lkLock && (lk.acks > 0 || lk.req.Wait > 0) || lk.viaAck)
}

// acked notes that a LOCK its client's later commands wait for is settled.
func (l *loop) acked(req nodeReq) {
	if isBarrier(req.lk) && !req.attempt {
		req.c.barriers--
	}
}

// finishAcked answers an acknowledged LOCK. One that got the lock but too few replicas is
// released first, on a goroutine, and answered NOREPLICAS after.
func (l *loop) finishAcked(req nodeReq, reply []byte, acked int) {
	c := req.c
	got, _, good := parseLockReply(reply)
	short := good && got && acked < req.lk.acks
	if l.stale(req) {
		if short {
			go c.c.noReplicas(nil, req.lk)
		} else {
			l.orphaned(req, reply)
		}
		return
	}
	if !short {
		l.answerAcked(req, reply, acked)
		l.settle(c)
		return
	}
	go func() {
		r := c.c.noReplicas(nil, req.lk)
		l.post(func() {
			if l.stale(req) {
				return
			}
			l.acked(req)
			lockAnswered(c, req.lk)
			l.complete(c, req.seq, r)
			l.settle(c)
		})
	}()
}

// failNode answers every request waiting on nd with the connection's failure and closes it.
func (l *loop) failNode(nd *lnode, cause error) {
	if nd.dead {
		return
	}
	nd.dead = true
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, nd.fd, nil)
	_ = unix.Close(nd.fd)
	if nd.fd < len(l.nodeFds) {
		l.nodeFds[nd.fd] = nil
	}
	err := l.s.pool.ConnLost(nd.addr, len(nd.fifo)-nd.head, cause)
	l.failRequests(nd, appendErr(nil, errUpstream(err)))
}

// failRequests answers every request queued or waiting on nd with reply.
func (l *loop) failRequests(nd *lnode, reply []byte) {
	waiting := nd.fifo[nd.head:]
	// Acquisitions answered but not yet acknowledged: a lock taken is given back (NOREPLICAS,
	// or released for a client that has gone), one not taken is answered as usual.
	held := nd.held
	nd.held = nil
	for _, h := range held {
		l.finishAcked(h.req, h.reply, 0)
	}
	var touched []*lclient
	for _, req := range waiting {
		if req.c != nil && !l.stale(req) {
			l.acked(req)
			if req.lk != nil {
				lockAnswered(req.c, req.lk)
			}
			l.complete(req.c, req.seq, reply)
			touched = append(touched, req.c)
		}
	}
	nd.fifo, nd.head, nd.out, nd.woff, nd.held, nd.needWait = nil, 0, nil, 0, nil, 0
	for _, c := range touched {
		l.settle(c)
	}
}

// checkStalled fails connections on which requests waited longer than the upstream timeout
// without a byte of reply.
func (l *loop) checkStalled(timeout int64) {
	for _, m := range [2]map[*cluster.Node]*lnode{l.nodes, l.ackNodes} {
		for _, nd := range m {
			if !nd.dead && !nd.connecting && nd.head < len(nd.fifo) && l.now-nd.lastProgress > timeout {
				l.failNode(nd, errors.New("no reply within upstream.timeout"))
			}
		}
	}
}
