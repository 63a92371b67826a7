//go:build linux

package proxy

import (
	"container/heap"
	"time"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// A LOCK WAIT that does not get the lock at once waits on the loop, and its client stays there.
// The request keeps its place in the reply order: it is the client's last one sent, and later
// commands are held as behind any barrier. The client joins this proxy's FIFO queue for the
// lock like a goroutine waiter, and the loop makes the attempts:
//   - once when the wait starts, subscribed to the lock's release channel;
//   - when the head is woken by a release (this proxy's UNLOCK, or one another proxy published);
//   - when the holder's TTL runs out, or at the bounded re-check.
//
// An UNLOCK the loop sends while the lock's head waiter is on the same loop carries that
// waiter's attempt right behind it, on the same connection and in the same write: a handoff
// between two clients of the proxy costs one upstream round trip and no goroutine switch.

// loopWait is a LOCK WAIT in progress on a loop.
type loopWait struct {
	l   *loop // immutable: another loop may read it to tell the wait is not its own
	c   *lclient
	ls  lockStep // its own copy: nothing points into the client's parser buffer
	req []byte   // the script call of an attempt
	seq uint64   // the client's request waiting for the reply
	w   *waiter

	deadline int64 // monoNow() at which WAIT runs out
	pttl     int64 // the holder's remaining TTL at the last failed attempt
	timerAt  int64 // when its timer is due
	hidx     int   // its index in the loop's timer heap, -1 when it has no timer
	trying   bool  // an attempt is in flight
	again    bool  // woken while trying: try again if that attempt fails
	ready    bool  // subscribed to the release channel (or gave up waiting for it)
	took     bool  // the last attempt took the lock
	// handed: the attempt in flight rides behind an UNLOCK that did not announce the release;
	// if it comes back with neither the lock nor its holder, the release is announced after all.
	handed bool
	// subRef is closed once the goroutine that subscribes holds its reference; nil when the
	// loop took a reference on an existing subscription.
	subRef chan struct{}
}

var monoBase = time.Now()

// monoNow is a monotonic clock in nanoseconds.
func monoNow() int64 { return int64(time.Since(monoBase)) }

// timerHeap orders the loop's waits by when their timer is due; each wait is in it at most
// once.
type timerHeap []*loopWait

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].timerAt < h[j].timerAt }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}
func (h *timerHeap) Push(x any) {
	lw := x.(*loopWait)
	lw.hidx = len(*h)
	*h = append(*h, lw)
}
func (h *timerHeap) Pop() any {
	old := *h
	lw := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	lw.hidx = -1
	return lw
}

// timerWait is how long epoll may sleep before the next wait timer is due (-1: no timer).
func (l *loop) timerWait() int {
	if len(l.timers) == 0 {
		return -1
	}
	d := l.timers[0].timerAt - monoNow()
	return int(max(d+int64(time.Millisecond)-1, 0) / int64(time.Millisecond))
}

// runTimers acts on the wait timers that are due: a wait that ran out is answered nil, a head
// waiter makes its re-check attempt.
func (l *loop) runTimers() {
	if len(l.timers) == 0 {
		return
	}
	now := monoNow()
	for len(l.timers) > 0 && l.timers[0].timerAt <= now {
		lw := heap.Pop(&l.timers).(*loopWait)
		l.tryWait(lw)
	}
}

// schedule sets lw's timer to at.
func (l *loop) schedule(lw *loopWait, at int64) {
	lw.timerAt = at
	if lw.hidx >= 0 {
		heap.Fix(&l.timers, lw.hidx)
		return
	}
	heap.Push(&l.timers, lw)
}

// startWait begins the wait of c's LOCK WAIT seq (ls): after a first attempt that found the lock
// held (pttl its holder's remaining TTL), or at once when this proxy's clients already queue for
// it (pttl 0).
func (l *loop) startWait(c *lclient, seq uint64, ls *lockStep, pttl int64) {
	if c.gone || c.readEnd != nil || l.closing {
		// Nobody to wait for (a lock taken for a client that left would be held by no one),
		// or the proxy is shutting down: nil, as the goroutine path answers.
		l.complete(c, seq, redcon.AppendNull(nil))
		return
	}
	m := l.s.locks
	lw := &loopWait{l: l, c: c, ls: *ls, seq: seq, pttl: pttl, hidx: -1}
	lw.ls.req.Resource, lw.ls.req.Token = nil, nil // they point into the parser's buffer
	lw.req = lw.ls.appendCall(nil)
	lw.deadline = int64(c.lockSent.Sub(monoBase)) + int64(lw.ls.req.Wait)
	lw.w = &waiter{owner: lw, onWake: func(attempt bool) {
		l.post(func() {
			switch {
			case c.lwait != lw:
			case attempt:
				l.tryWait(lw)
			case !lw.trying:
				l.sleepWait(lw)
			}
		})
	}}
	c.lwait = lw
	l.rearm(c) // watch for the client leaving
	m.push(lw.ls.key, lw.w)
	if m.sub.TryRef(lw.ls.key) {
		lw.ready = true
		l.tryWait(lw) // a release between the first attempt and now announced itself to nobody
		return
	}
	// Subscribing may dial: on a goroutine. The first attempt waits for the subscription (or a
	// short bound), so that a release published after it cannot be missed; WAIT's end does not.
	l.schedule(lw, lw.deadline)
	lw.subRef = make(chan struct{})
	key, slot := lw.ls.key, lw.ls.slot
	go func() {
		ready := m.sub.Subscribe(key, slot)
		close(lw.subRef)
		select {
		case <-ready:
		case <-time.After(200 * time.Millisecond):
		}
		l.post(func() {
			if c.lwait == lw {
				lw.ready = true
				l.tryWait(lw)
			}
		})
	}()
}

// tryWait makes an attempt if lw's client is the head of the queue (else sleeps until its WAIT
// runs out), or answers nil when WAIT has run out.
func (l *loop) tryWait(lw *loopWait) {
	if lw.trying {
		lw.again = true
		return
	}
	c := lw.c
	if monoNow() >= lw.deadline {
		l.s.locks.waitTimeouts.Add(1)
		l.complete(c, lw.seq, redcon.AppendNull(nil))
		l.settle(c)
		return
	}
	if !lw.ready {
		// Still subscribing: it tries once subscribed; until then only WAIT's end is due.
		l.schedule(lw, lw.deadline)
		return
	}
	if !l.s.locks.isHead(lw.ls.key, lw.w) {
		l.schedule(lw, lw.deadline)
		return
	}
	nd, errText := l.route(lw.ls.slot, lw.ls.acks > 0)
	if nd == nil {
		l.complete(c, lw.seq, appendErr(nil, errText))
		l.settle(c)
		return
	}
	l.sendAttempt(lw, nd)
}

// sleepWait sets the timer of a waiter after a failed attempt: WAIT's end, and for the head also
// the holder's TTL or the bounded re-check, whichever is first.
func (l *loop) sleepWait(lw *loopWait) {
	at := lw.deadline
	if l.s.locks.isHead(lw.ls.key, lw.w) {
		recheck := l.s.locks.opts.Recheck
		if lw.pttl > 0 {
			recheck = min(recheck, time.Duration(lw.pttl)*time.Millisecond+time.Millisecond)
		}
		at = min(at, monoNow()+int64(recheck))
	}
	l.schedule(lw, at)
}

func (l *loop) sendAttempt(lw *loopWait, nd *lnode) {
	start := len(nd.out)
	nd.out = append(nd.out, lw.req...)
	nd.fifo = append(nd.fifo, nodeReq{c: lw.c, seq: lw.seq, slot: lw.ls.slot, start: start, end: len(nd.out), lk: &lw.ls, attempt: true})
	if lw.ls.acks > 0 {
		nd.needWait = max(nd.needWait, lw.ls.acks)
	}
	lw.trying, lw.again = true, false
	l.sent(nd)
}

// handTo returns the lock's head waiter when it is this loop's and idle: its attempt can ride
// right behind an UNLOCK of the lock on the same connection, and if the UNLOCK releases the
// lock, the attempt takes it.
func (l *loop) handTo(unlock *lockStep) *loopWait {
	if !l.s.locks.opts.Handoff {
		return nil
	}
	w := l.s.locks.handoffHead(unlock.key)
	if w == nil {
		return nil
	}
	lw, _ := w.owner.(*loopWait)
	if lw == nil || lw.l != l {
		return nil // a goroutine's waiter, or another loop's: the release wakes it
	}
	if lw.c.lwait != lw || lw.trying || lw.ls.slot != unlock.slot || monoNow() >= lw.deadline {
		return nil
	}
	return lw
}

// current reports whether an attempt's reply is still awaited: its client is still waiting
// for that lock.
func (l *loop) current(req nodeReq) bool {
	c := req.c
	return !c.closed && c.lwait != nil && req.lk == &c.lwait.ls
}

// attemptAnswered acts on the reply to a waiter's attempt: the wait ends with the lock (or an
// error), or goes on.
func (l *loop) attemptAnswered(req nodeReq, r []byte, acked int) {
	c := req.c
	lw := c.lwait
	lw.trying = false
	got, _, good := parseLockReply(r)
	lw.took = good && got && acked >= lw.ls.acks
	if good {
		lw.handed = false // the lock was taken, by this waiter or someone else
	}
	var waits bool
	var pttl int64
	l.lockOut, waits, pttl = c.c.appendLockReply(l.lockOut[:0], req.lk, r, acked)
	if !waits {
		l.complete(c, lw.seq, l.lockOut)
		// A lock handed over is what the next holder, and everyone queued behind it, waits
		// for: its reply is written first in this pass.
		if i := len(l.dirtyC) - 1; i > 0 && l.dirtyC[i] == c {
			l.dirtyC[0], l.dirtyC[i] = c, l.dirtyC[0]
		}
		return
	}
	lw.pttl = pttl
	if lw.again {
		l.tryWait(lw)
		return
	}
	l.sleepWait(lw)
}

// endWait takes c's wait out of the lock's queue, once its request is answered.
func (l *loop) endWait(c *lclient) {
	lw := c.lwait
	c.lwait = nil
	if lw.hidx >= 0 {
		heap.Remove(&l.timers, lw.hidx)
	}
	l.rearm(c)
	m := l.s.locks
	if lw.handed {
		// Its attempt behind a silent UNLOCK failed (an error, a lost connection) or was
		// abandoned: the lock may be free, and other proxies' waiters have not been told.
		pool, key, slot := l.s.pool, lw.ls.key, lw.ls.slot
		go func() {
			ex := cluster.NewExchange()
			ex.Add(cluster.AppendCommand(nil, "SPUBLISH", key, "released"), slot)
			pool.Do(ex)
		}()
	}
	if next := m.remove(lw.ls.key, lw.w); next != nil {
		nlw, _ := next.owner.(*loopWait)
		switch {
		case nlw != nil && nlw.l == l && lw.took:
			// This loop's waiter is head now, with nothing to try for yet: it sleeps until the
			// new holder's TTL runs out at the latest.
			if !nlw.trying {
				nlw.pttl = lw.ls.req.TTL.Milliseconds()
				l.sleepWait(nlw)
			}
		default:
			// Another loop's waiter tries even after a taking: that tells it the holder's TTL.
			wake(next, !lw.took || nlw != nil)
		}
	}
	key := lw.ls.key
	if lw.subRef != nil {
		select {
		case <-lw.subRef:
		default:
			go func() {
				<-lw.subRef
				m.sub.Unsubscribe(key)
			}()
			return
		}
	}
	if !m.sub.TryUnref(key) {
		go m.sub.Unsubscribe(key)
	}
}

// orphaned gives back a lock that a LOCK WAIT took for a client that has left or stopped
// waiting: such a client never ends up holding it.
func (l *loop) orphaned(req nodeReq, reply []byte) {
	lk := req.lk
	if lk == nil || lk.kind != lkLock || lk.req.Wait == 0 {
		return
	}
	if got, _, good := parseLockReply(reply); good && got {
		if !lk.ownToken { // see giveBack
			cl, key, slot, token := req.c.c, lk.key, lk.slot, lk.token
			go cl.unlockNow(key, slot, token)
		}
	}
}

// stale reports whether nobody awaits the reply to req any more: its client is closed, or it
// is an attempt of a wait that has ended.
func (l *loop) stale(req nodeReq) bool {
	return req.c.closed || (req.attempt && !l.current(req))
}
