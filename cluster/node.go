package cluster

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

const (
	readBufSize     = 64 << 10
	shrinkBufsAbove = 1 << 20
)

// ErrUpstream wraps every transport failure; the text after it is for the client.
var ErrUpstream = errors.New("upstream")

// Node is one upstream server reached over a single pipelined connection shared by every
// client. Requests from all clients are coalesced into as few writes as possible, replies are
// matched to requests in FIFO order by one reader goroutine. Node is safe for concurrent use.
type Node struct {
	Addr string
	pool *Pool

	mu      sync.Mutex
	conn    net.Conn
	wbuf    []byte
	spare   []byte
	writing bool
	queue   []*op
	head    int

	// On a node that carries lock acquisitions needing replica acknowledgement (see
	// Pool.ackNode): the requests written since the last WAIT, and that WAIT's timeout.
	ackPending  []*op
	waitTimeout int64
	replicas    atomic.Int32

	readonly    atomic.Bool // a replica: connections send READONLY first
	lastDialLog atomic.Int64
	writerOnce  sync.Once
	kick        chan struct{}
	ackNext     atomic.Uint32

	// lastProgress is the coarse time (pool clock) of the last read, or of the moment the queue
	// stopped being empty; the watchdog closes a connection that makes no progress.
	lastProgress atomic.Int64
	outstanding  atomic.Int64
}

// op is the part of one Exchange that goes to one node: replies arrive in order into buf.
type op struct {
	node  *Node
	ex    *Exchange
	calls []int // indexes into ex.Calls; -1 marks an ASKING prefix whose reply is dropped
	buf   []byte
	ends  []int
	err   error

	// needAcks > 0: the op completes only when the WAIT written after it answers; acks is
	// that answer. received is set once all of the op's own replies are in.
	needAcks int
	acks     int
	received atomic.Bool
	done     atomic.Bool
	// waitFor is set on the op of a WAIT: the ops whose writes it covers.
	waitFor []*op
}

func (o *op) reset(n *Node, ex *Exchange) {
	o.node, o.ex, o.err = n, ex, nil
	o.needAcks, o.acks, o.waitFor = 0, 0, nil
	o.received.Store(false)
	o.done.Store(false)
	o.calls = o.calls[:0]
	if cap(o.buf) > shrinkBufsAbove {
		o.buf = nil
	}
	o.buf = o.buf[:0]
	o.ends = o.ends[:0]
}

// complete finishes o once; for a WAIT's op it finishes the ops it covers.
func (o *op) complete(err error) {
	if o.waitFor != nil {
		o.settleWait(err)
		return
	}
	if !o.done.CompareAndSwap(false, true) {
		return
	}
	if err != nil && o.err == nil {
		o.err = err
	}
	if o.ex.remaining.Add(-1) == 0 {
		o.ex.wake <- struct{}{}
	}
}

// settleWait hands a WAIT's outcome to the ops it covers. On failure only the ops whose replies
// are all in are finished here; the others are finished by the queue or the reader.
func (o *op) settleWait(err error) {
	for _, w := range o.waitFor {
		if err != nil && !w.received.Load() {
			continue
		}
		w.acks = o.acks
		w.complete(err)
	}
}

// parseAcks reads WAIT's integer reply; anything else counts as no acknowledgement.
func parseAcks(r []byte) int {
	if len(r) < 4 || r[0] != ':' {
		return 0
	}
	n, ok := atoi(r[1 : len(r)-2])
	if !ok || n < 0 {
		return 0
	}
	return n
}

var askingReq = []byte("*1\r\n$6\r\nASKING\r\n")

// submit queues o's requests on the node's connection, dialling it when needed, and writes
// pending bytes unless another goroutine is already writing them.
func (n *Node) submit(o *op) {
	n.mu.Lock()
	if n.pool.stopped.Load() {
		n.mu.Unlock()
		o.complete(fmt.Errorf("%w: the proxy is shutting down", ErrUpstream))
		return
	}
	if n.conn == nil {
		if err := n.dialLocked(); err != nil {
			n.mu.Unlock()
			o.complete(err)
			return
		}
	}
	if o.needAcks > 0 {
		n.ackPending = append(n.ackPending, o)
	}
	for _, i := range o.calls {
		if i < 0 {
			n.wbuf = append(n.wbuf, askingReq...)
		} else {
			n.wbuf = append(n.wbuf, o.ex.Calls[i].Req...)
		}
	}
	if len(n.queue) == n.head {
		n.lastProgress.Store(n.pool.now())
	}
	n.outstanding.Add(1)
	n.queue = append(n.queue, o)
	if n.writing {
		n.mu.Unlock()
		return
	}
	n.writing = true
	n.mu.Unlock()
	// The node's writer takes this request together with whatever other clients add before it
	// runs, in one write: at pipeline 1 with 50 clients that is about one write for several
	// requests instead of one each (measured: proxy CPU per request 34 -> 29 µs, Valkey's
	// reads per request 0.45 -> 0.15).
	n.kickWriter()
}

// kickWriter wakes the node's writer goroutine, starting it on first use.
func (n *Node) kickWriter() {
	n.writerOnce.Do(func() {
		n.kick = make(chan struct{}, 1)
		n.pool.wg.Add(1)
		go n.writeLoop()
	})
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// writeLoop flushes on request until the pool stops.
func (n *Node) writeLoop() {
	defer n.pool.wg.Done()
	for {
		select {
		case <-n.pool.stop:
			return
		case <-n.kick:
		}
		// Let the clients that were woken with this one queue their requests first.
		runtime.Gosched()
		n.mu.Lock()
		n.flushLocked()
	}
}

// appendWaitLocked covers every acquisition written since the last WAIT with one WAIT on the
// same connection: WAIT counts the replicas that have every write this connection sent.
func (n *Node) appendWaitLocked() {
	need := 0
	for _, o := range n.ackPending {
		need = max(need, o.needAcks)
	}
	w := &op{node: n, waitFor: n.ackPending, calls: []int{-2}}
	n.ackPending = nil
	n.wbuf = AppendCommand(n.wbuf, "WAIT", strconv.Itoa(need), strconv.FormatInt(n.waitTimeout, 10))
	n.queue = append(n.queue, w)
	n.outstanding.Add(1)
}

// flushLocked writes the pending bytes until none are left. It runs on the node's writer,
// is entered with mu held and writing set, and returns with mu released.
func (n *Node) flushLocked() {
	var failed []*op
	var lost error
	conn := n.conn
	for len(n.wbuf) > 0 && conn != nil {
		if len(n.ackPending) > 0 {
			n.appendWaitLocked()
		}
		b := n.wbuf
		n.wbuf = n.spare[:0]
		n.mu.Unlock()
		_, err := conn.Write(b)
		n.mu.Lock()
		if cap(b) <= shrinkBufsAbove {
			n.spare = b[:0]
		}
		if err != nil {
			// The requests on this connection fail; requests queued on a connection dialled
			// meanwhile are still written.
			failed = append(failed, n.detachLocked(conn)...)
			lost = n.lostErr(err)
		}
		conn = n.conn
	}
	n.writing = false
	n.mu.Unlock()
	failAll(failed, lost)
}

func (n *Node) lostErr(err error) error { return lostErr(n.Addr, err) }

func lostErr(addr string, err error) error {
	return fmt.Errorf("%w: connection to %s lost (%v); the command may have been executed", ErrUpstream, addr, err)
}

// connLost counts and logs a lost connection and has the topology re-read.
func (p *Pool) connLost(addr string, failed int) {
	p.requestRefresh()
	if !p.stopped.Load() {
		p.stats.connLost.Add(1)
		p.log.Warn("upstream connection lost", zap.String("node", addr), zap.Int("requests_failed", failed))
	}
}

// dialFailed counts a failed dial to n, logs it at most once a second (while a node is down
// every request tries it), has the topology re-read, and returns the error requests get.
func (p *Pool) dialFailed(n *Node, err error) error {
	p.requestRefresh()
	p.stats.dialFailed.Add(1)
	if now := p.now(); now-n.lastDialLog.Load() > int64(time.Second) {
		n.lastDialLog.Store(now)
		p.log.Warn("cannot connect to upstream node", zap.String("node", n.Addr), zap.Error(err))
	}
	return fmt.Errorf("%w: cannot connect to %s: %v", ErrUpstream, n.Addr, err)
}

// detachLocked closes conn if it is still the node's connection and returns the requests that
// were waiting on it.
func (n *Node) detachLocked(conn net.Conn) []*op {
	if n.conn != conn || conn == nil {
		return nil
	}
	_ = conn.Close()
	n.conn = nil
	n.wbuf = n.wbuf[:0]
	n.ackPending = nil // those ops are in the queue and fail with it
	failed := append([]*op(nil), n.queue[n.head:]...)
	clear(n.queue)
	n.queue, n.head = n.queue[:0], 0
	n.outstanding.Add(-int64(len(failed)))
	n.pool.connLost(n.Addr, len(failed))
	return failed
}

func failAll(ops []*op, err error) {
	for _, o := range ops {
		o.complete(err)
	}
}

// dialLocked connects and runs the handshake, then starts the reader.
func (n *Node) dialLocked() error {
	conn, err := n.pool.dialNode(n)
	if err != nil {
		return n.pool.dialFailed(n, err)
	}
	n.conn = conn
	n.pool.readers.Add(1)
	go n.readLoop(conn)
	return nil
}

// pop takes the oldest queued request.
func (n *Node) pop(conn net.Conn) *op {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn != conn || n.head == len(n.queue) {
		return nil
	}
	o := n.queue[n.head]
	n.queue[n.head] = nil
	n.head++
	if n.head == len(n.queue) {
		n.queue, n.head = n.queue[:0], 0
	} else {
		n.lastProgress.Store(n.pool.now())
	}
	return o
}

// readLoop matches replies to requests until the connection fails.
func (n *Node) readLoop(conn net.Conn) {
	defer n.pool.readers.Done()
	buf := make([]byte, readBufSize)
	var sc replyScanner
	var cur *op
	r, w := 0, 0
	var err error
	for err == nil {
		for r < w {
			var l int
			l, err = sc.scan(buf[r:w])
			if err != nil || l == 0 {
				break
			}
			if cur == nil {
				if cur = n.pop(conn); cur == nil {
					err = errors.New("reply without a request")
					break
				}
			}
			if cur.waitFor != nil {
				cur.acks = parseAcks(buf[r : r+l])
				r += l
				n.outstanding.Add(-1)
				cur.complete(nil)
				cur = nil
				continue
			}
			cur.buf = append(cur.buf, buf[r:r+l]...)
			cur.ends = append(cur.ends, len(cur.buf))
			r += l
			if len(cur.ends) == len(cur.calls) {
				n.outstanding.Add(-1)
				if cur.needAcks > 0 {
					// Finished by the WAIT queued behind it.
					cur.received.Store(true)
				} else {
					cur.complete(nil)
				}
				cur = nil
			}
		}
		if err != nil {
			break
		}
		if r == w {
			r, w = 0, 0
			if len(buf) > readBufSize {
				buf = make([]byte, readBufSize)
			}
		} else if r > 0 {
			w = copy(buf, buf[r:w])
			r = 0
		}
		if w == len(buf) {
			nb := make([]byte, 2*len(buf))
			copy(nb, buf[:w])
			buf = nb
		}
		var k int
		k, err = conn.Read(buf[w:])
		w += k
		if k > 0 {
			n.lastProgress.Store(n.pool.now())
			err = nil
		}
	}
	n.mu.Lock()
	failed := n.detachLocked(conn)
	n.mu.Unlock()
	lost := n.lostErr(err)
	if cur != nil {
		n.outstanding.Add(-1)
		cur.complete(lost)
	}
	failAll(failed, lost)
}

// checkStalled closes the connection when requests have waited longer than timeout with no
// reply bytes arriving.
func (n *Node) checkStalled(now, timeout int64) {
	if n.outstanding.Load() == 0 {
		return
	}
	if now-n.lastProgress.Load() < timeout {
		return
	}
	n.mu.Lock()
	conn := n.conn
	n.mu.Unlock()
	if conn != nil {
		// Closing makes the reader fail every request on this connection.
		_ = conn.SetDeadline(time.Unix(0, 1))
	}
}

// close drops the connection; requests waiting on it fail.
func (n *Node) close() {
	n.mu.Lock()
	failed := n.detachLocked(n.conn)
	n.mu.Unlock()
	failAll(failed, fmt.Errorf("%w: proxy is shutting down", ErrUpstream))
}
