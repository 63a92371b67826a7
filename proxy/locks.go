package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/tidwall/redcon"
	"go.uber.org/zap"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
)

// LockOptions configure the lock commands.
type LockOptions struct {
	commands.LockLimits
	// KeyPrefix starts every lock and fence key ("lock:").
	KeyPrefix string
	// Replicas is how many replicas must acknowledge an acquisition; -1 means one when the
	// shard has a replica, else none.
	Replicas int
	// ReplicaTimeout bounds the WAIT for those acknowledgements.
	ReplicaTimeout time.Duration
	// ProtectKeys refuses pass-through writes to lock and fence keys.
	ProtectKeys bool
	// Recheck bounds how long a waiter sleeps without news: a holder that is not a proxy
	// releases without publishing.
	Recheck time.Duration
	// TokenCache is how many resources per connection remember their latest token, for
	// UNLOCK without a token.
	TokenCache int
	// Handoff: an UNLOCK on an event loop whose lock has a waiter on the same loop takes the
	// waiter's attempt along and does not announce the release (see handTo). Off, every
	// release is announced and waiters of all proxies try for it.
	Handoff bool
}

// lockManager owns this proxy's waiters: FIFO queues per lock key, woken by local releases and
// by releases other proxies publish on the lock's shard channel.
type lockManager struct {
	opts LockOptions
	log  *zap.Logger
	sub  *cluster.Subscriber

	mu     sync.Mutex
	queues map[string]*waitQueue
	// othersWait holds lock keys whose last release handed over found waiters of other
	// proxies: the next release is announced instead of handed over, so that they get a
	// chance at it. An announced release clears the key.
	othersWait map[string]struct{}

	acquired      atomic.Int64
	released      atomic.Int64
	handedOver    atomic.Int64 // releases whose next waiter's attempt went right behind them
	notAcquired   atomic.Int64
	noReplicas    atomic.Int64
	waitTimeouts  atomic.Int64
	keepaliveLost atomic.Int64
	waiting       atomic.Int64
}

type waitQueue struct {
	waiters []*waiter
}

type waiter struct {
	wake chan struct{}
	// onWake, when set, is how a waiter on an event loop is woken instead of wake: attempt
	// says whether to try the lock now, or only to take up being the head (the waiter before
	// it took the lock, so there is nothing to try for yet).
	onWake func(attempt bool)
	// owner is the loop's state of the wait (an event loop's waiter), else nil.
	owner any
}

func newLockManager(opts LockOptions, pool *cluster.Pool, log *zap.Logger) *lockManager {
	m := &lockManager{opts: opts, log: log, queues: map[string]*waitQueue{}}
	m.sub = pool.NewSubscriber(func(channel []byte) { m.wakeHead(string(channel)) })
	return m
}

func (m *lockManager) close() { m.sub.Close() }

// enqueue adds a waiter for key; the first waiter subscribes to the key's release channel.
// It returns once the subscription is confirmed (or after a short bound), so that a release
// published after enqueue returns cannot be missed.
func (m *lockManager) enqueue(key string, slot uint16) *waiter {
	w := &waiter{wake: make(chan struct{}, 1)}
	m.push(key, w)
	// Every waiter holds a reference to the release channel's subscription (dequeue drops
	// it). Subscribing may dial: never while holding the queues' lock, which releases need.
	ready := m.sub.Subscribe(key, slot)
	select {
	case <-ready:
	case <-time.After(200 * time.Millisecond):
		// The bounded re-check covers a subscription that is late.
	}
	return w
}

// push puts w at the tail of key's queue. The caller takes care of the subscription.
func (m *lockManager) push(key string, w *waiter) {
	m.mu.Lock()
	q := m.queues[key]
	if q == nil {
		q = &waitQueue{}
		m.queues[key] = q
	}
	q.waiters = append(q.waiters, w)
	m.mu.Unlock()
	m.waiting.Add(1)
}

// dequeue removes w and drops its reference to the release channel.
func (m *lockManager) dequeue(key string, w *waiter) {
	if next := m.remove(key, w); next != nil {
		wake(next, true)
	}
	m.sub.Unsubscribe(key)
}

// remove takes w out of key's queue. When w was the head, it returns the next waiter, now the
// head, for the caller to wake: to try, unless w took the lock (then the next release wakes
// it).
func (m *lockManager) remove(key string, w *waiter) (next *waiter) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.waiting.Add(-1)
	q := m.queues[key]
	if q == nil {
		return nil
	}
	for i, x := range q.waiters {
		if x != w {
			continue
		}
		q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
		if i == 0 && len(q.waiters) > 0 {
			next = q.waiters[0]
		}
		break
	}
	if len(q.waiters) == 0 {
		delete(m.queues, key)
	}
	return next
}

// handoffHead returns the first waiter for key, for a release to be handed to, or nil: none
// waits, or this release is the turn of other proxies' waiters (see othersWait).
func (m *lockManager) handoffHead(key string) *waiter {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queues[key]
	if q == nil || len(q.waiters) == 0 {
		return nil
	}
	if _, ok := m.othersWait[key]; ok {
		return nil
	}
	return q.waiters[0]
}

// othersWaiting notes that a release handed over found other proxies waiting for key.
func (m *lockManager) othersWaiting(key string) {
	m.mu.Lock()
	if m.othersWait == nil || len(m.othersWait) >= 4096 {
		// Keys not released since (their holders gave up, or their waiters left): forgotten,
		// at worst one more local handoff each.
		m.othersWait = map[string]struct{}{}
	}
	m.othersWait[key] = struct{}{}
	m.mu.Unlock()
}

// announced notes a release of key that was announced (other proxies' waiters had their
// chance, so the next release may be handed over again) and wakes this proxy's head waiter.
func (m *lockManager) announced(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.othersWait) > 0 {
		delete(m.othersWait, key)
	}
	if q := m.queues[key]; q != nil && len(q.waiters) > 0 {
		wake(q.waiters[0], true)
	}
}

func (m *lockManager) isHead(key string, w *waiter) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queues[key]
	return q != nil && len(q.waiters) > 0 && q.waiters[0] == w
}

// wakeHead tells the first waiter for key that the lock was released.
func (m *lockManager) wakeHead(key string) {
	m.mu.Lock()
	if q := m.queues[key]; q != nil && len(q.waiters) > 0 {
		wake(q.waiters[0], true)
	}
	m.mu.Unlock()
}

func (m *lockManager) waiters(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q := m.queues[key]; q != nil {
		return len(q.waiters)
	}
	return 0
}

// wake tells w about news for its lock (attempt: it may be free). It never blocks (wakeHead
// calls it under the queues' lock).
func wake(w *waiter, attempt bool) {
	if w.onWake != nil {
		w.onWake(attempt)
		return
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// replicasFor is how many acknowledgements an acquisition in slot needs.
func (m *lockManager) replicasFor(pool *cluster.Pool, slot uint16) int {
	if m.opts.Replicas >= 0 {
		return m.opts.Replicas
	}
	return min(pool.ReplicasChecked(slot), 1)
}

// lockState is a connection's part of the lock machinery.
type lockState struct {
	id     string
	seq    uint64
	tokens *lru.Cache[string, string] // lock key -> latest token taken on this connection
	keep   map[string]*keepalive
	keepMu sync.Mutex
	steps  []lockStep
	waitEx *cluster.Exchange
	// sent maps lock keys to the token of the latest LOCK an event loop sent and has no reply
	// for: a pipelined UNLOCK without a token means it.
	sent map[string]string
}

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// lockID returns the connection's client id: 128 random bits, so tokens are unique across
// proxies and restarts.
func (c *client) lockID() string {
	if c.lk.id == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		c.lk.id = idEncoding.EncodeToString(b[:])
	}
	return c.lk.id
}

func (c *client) newToken() string {
	c.lk.seq++
	return c.lockID() + ":" + strconv.FormatUint(c.lk.seq, 10)
}

func (c *client) rememberToken(key, token string) {
	if c.lk.tokens == nil {
		c.lk.tokens, _ = lru.New[string, string](c.s.locks.opts.TokenCache)
	}
	c.lk.tokens.Add(key, token)
}

// lockKind tells what to make of a lock script's reply.
type lockKind uint8

const (
	lkLock lockKind = iota
	lkUnlock
	lkRenew
	lkInfo
	lkSafeSet
)

// lockStep is a lock command planned into the current round.
type lockStep struct {
	kind   lockKind
	step   int // index into client.steps
	call   int // index into ex.Calls
	script *commands.Script
	keys   [][]byte
	args   [][]byte
	slot   uint16
	key    string // the lock key
	token  string
	req    commands.LockRequest
	acks   int
	// handed: an UNLOCK that carries the head waiter's attempt right behind it (event loop);
	// viaAck: it goes on the acknowledged connection, as that attempt needs replicas.
	handed, viaAck bool
	// ownToken: a LOCK with the client's own token (TOKEN), which the proxy never gives back
	// (req.Token itself is cleared once the request's buffer is gone).
	ownToken bool
	// nx: a LOCK without FENCE, TOKEN or WAIT, sent as SET key token NX PX ttl (appendCall).
	nx bool
}

// planLockCommand parses a lock command and plans its script call. It reports whether the
// command is a LOCK that may wait, which must end the round.
func (c *client) planLockCommand(name string, args [][]byte) (barrier bool) {
	m := c.s.locks
	lim := m.opts.LockLimits
	switch name {
	case "lockid":
		start := len(c.local)
		c.local = redcon.AppendBulkString(c.local, c.lockID())
		c.localReply(start)
	case "lock":
		req, e := commands.ParseLock(args, lim)
		if e != "" {
			c.localError(e)
			return false
		}
		key := commands.LockKey(nil, m.opts.KeyPrefix, req.Resource)
		slot := cluster.SlotOf(req.Resource)
		token := string(req.Token)
		if token == "" {
			token = c.newToken()
		}
		fence := "0"
		if req.Fence {
			fence = "1"
		}
		ls := lockStep{kind: lkLock, script: commands.ScriptLock, slot: slot, key: string(key), token: token, req: req,
			ownToken: req.Token != nil, nx: !req.Fence && req.Token == nil && req.Wait == 0,
			keys: [][]byte{key, commands.FenceKey(nil, m.opts.KeyPrefix, slot)},
			args: [][]byte{[]byte(token), strconv.AppendInt(nil, req.TTL.Milliseconds(), 10), []byte(fence)},
			acks: m.replicasFor(c.s.pool, slot)}
		if req.Wait > 0 && req.Token == nil && m.waiters(ls.key) > 0 {
			// Clients of this proxy already wait for it: queue behind them, first come first
			// served, instead of racing them for the next release. Not with TOKEN: that may
			// be the holder re-taking its own lock, which must not wait for those waiting
			// for it.
			ls.call = -1
			ls.step = len(c.steps)
			c.steps = append(c.steps, step{kind: stepLock, a: len(c.lk.steps)})
			c.lk.steps = append(c.lk.steps, ls)
			return true
		}
		c.addLockStep(ls)
		return req.Wait > 0
	case "unlock":
		req, e := commands.ParseUnlock(args)
		if e != "" {
			c.localError(e)
			return false
		}
		key := string(commands.LockKey(nil, m.opts.KeyPrefix, req.Resource))
		token := string(req.Token)
		if req.Token == nil {
			t, ok := c.pendingToken(key)
			if !ok && c.lk.tokens != nil {
				t, ok = c.lk.tokens.Get(key)
			}
			if !ok {
				c.localError("ERR UNLOCK without a token needs a lock taken on this connection; pass the token")
				return false
			}
			token = t
		}
		c.addLockStep(lockStep{kind: lkUnlock, script: commands.ScriptUnlock, slot: cluster.SlotOf(req.Resource), key: key, token: token,
			keys: [][]byte{[]byte(key)}, args: [][]byte{[]byte(token)}})
	case "renew":
		req, e := commands.ParseRenew(args, lim)
		if e != "" {
			c.localError(e)
			return false
		}
		key := commands.LockKey(nil, m.opts.KeyPrefix, req.Resource)
		c.addLockStep(lockStep{kind: lkRenew, script: commands.ScriptRenew, slot: cluster.SlotOf(req.Resource), key: string(key),
			keys: [][]byte{key}, args: [][]byte{req.Token, strconv.AppendInt(nil, req.TTL.Milliseconds(), 10)}})
	case "lockinfo":
		key := commands.LockKey(nil, m.opts.KeyPrefix, args[1])
		c.addLockStep(lockStep{kind: lkInfo, script: commands.ScriptInfo, slot: cluster.SlotOf(args[1]), key: string(key),
			keys: [][]byte{key}})
	case "safeset":
		req, e := commands.ParseSafeSet(args, lim)
		if e != "" {
			c.localError(e)
			return false
		}
		key := commands.LockKey(nil, m.opts.KeyPrefix, req.Key)
		mode, token := []byte("free"), []byte{}
		if req.Token != nil {
			mode, token = []byte("owner"), req.Token
		}
		sargs := append([][]byte{mode, token, req.Value}, req.Expiry...)
		c.addLockStep(lockStep{kind: lkSafeSet, script: commands.ScriptSafeSet, slot: cluster.SlotOf(req.Key), key: string(key),
			keys: [][]byte{key, req.Key}, args: sargs})
	}
	return false
}

// pendingToken returns the token of the latest LOCK on key planned earlier in this round: a
// pipelined "LOCK r" then "UNLOCK r" means that LOCK's token.
func (c *client) pendingToken(key string) (string, bool) {
	for i := len(c.lk.steps) - 1; i >= 0; i-- {
		if ls := &c.lk.steps[i]; ls.kind == lkLock && ls.key == key {
			return ls.token, true
		}
	}
	t, ok := c.lk.sent[key]
	return t, ok
}

func (c *client) addLockStep(ls lockStep) {
	start := len(c.scratch)
	c.scratch = ls.appendCall(c.scratch)
	ls.call = c.ex.Add(c.scratch[start:len(c.scratch):len(c.scratch)], ls.slot)
	if ls.kind == lkLock && ls.acks > 0 {
		c.ex.Calls[ls.call].Acks = ls.acks
	}
	ls.step = len(c.steps)
	c.steps = append(c.steps, step{kind: stepLock, a: len(c.lk.steps)})
	c.lk.steps = append(c.lk.steps, ls)
}

// appendCall encodes the lock step's call: EVAL of its script, or for nx the SET NX that takes
// a new token's lock as atomically at a fraction of a script's cost in Valkey (its token is
// new, so never the holder's; no fence; no holder's TTL to sleep on). Its reply is OK or nil.
func (ls *lockStep) appendCall(b []byte) []byte {
	if !ls.nx {
		return appendScript(b, ls.script, ls.keys, ls.args)
	}
	// keys and args are the lock script's: lock key, fence key; token, TTL, fence flag.
	b = redcon.AppendArray(b, 6)
	b = redcon.AppendBulkString(b, "SET")
	b = redcon.AppendBulk(b, ls.keys[0])
	b = redcon.AppendBulk(b, ls.args[0])
	b = redcon.AppendBulkString(b, "NX")
	b = redcon.AppendBulkString(b, "PX")
	return redcon.AppendBulk(b, ls.args[1])
}

// appendScript encodes EVAL of a lock script. Always EVAL, never EVALSHA: a node that lost its
// scripts (a SCRIPT FLUSH, a restart) would answer NOSCRIPT, and re-sending after the round
// would run the script after commands the client pipelined behind it. The bodies are small
// (comments are not sent) and Valkey caches them by hash.
func appendScript(b []byte, s *commands.Script, keys, args [][]byte) []byte {
	b = redcon.AppendArray(b, 3+len(keys)+len(args))
	b = redcon.AppendBulkString(b, "EVAL")
	b = redcon.AppendBulkString(b, s.Body)
	b = redcon.AppendBulkString(b, strconv.Itoa(len(keys)))
	for _, k := range keys {
		b = redcon.AppendBulk(b, k)
	}
	for _, a := range args {
		b = redcon.AppendBulk(b, a)
	}
	return b
}

var noScript = []byte("-NOSCRIPT")

var (
	unlockedReply = []byte(":1\r\n")
	okReply       = []byte("+OK\r\n")
	nilReply      = []byte("$-1\r\n")
)

func isNoScript(r []byte) bool {
	return len(r) >= len(noScript) && string(r[:len(noScript)]) == string(noScript)
}

// finishLocks turns the replies of the round's lock calls into client replies. A LOCK that
// must wait is returned (at most one: it ends its round) for runBatch to wait on.
func (c *client) finishLocks() (waiting *lockStep, pttl int64) {
	if len(c.lk.steps) == 0 {
		return nil, 0
	}
	for i := range c.lk.steps {
		ls := &c.lk.steps[i]
		if ls.call < 0 {
			waiting, pttl = ls, 0
			continue
		}
		call := &c.ex.Calls[ls.call]
		start := len(c.local)
		if call.Err != nil {
			c.local = c.appendCallReply(c.local, call)
		} else {
			var waits bool
			var left int64
			c.local, waits, left = c.appendLockReply(c.local, ls, call.Reply, call.Acked)
			if waits {
				waiting, pttl = ls, left
				continue
			}
		}
		c.steps[ls.step] = step{kind: stepLocal, a: start, b: len(c.local)}
	}
	return waiting, pttl
}

// appendLockReply turns the reply of a lock script into the client's reply and does the
// bookkeeping. waits is set (and nothing appended) for a LOCK WAIT that did not get the lock:
// pttl is the holder's remaining time.
func (c *client) appendLockReply(out []byte, ls *lockStep, reply []byte, acked int) (_ []byte, waits bool, pttl int64) {
	if len(reply) > 0 && reply[0] == '-' {
		return append(out, reply...), false, 0
	}
	switch ls.kind {
	case lkLock:
		ok, n, good := parseLockReply(reply)
		switch {
		case !good:
			out = redcon.AppendError(out, "ERR proxy: unexpected reply to the lock script")
		case ok:
			out = c.lockAcquired(out, ls, acked, n)
		case ls.req.Wait > 0:
			return out, true, n
		default:
			c.s.locks.notAcquired.Add(1)
			out = redcon.AppendNull(out)
		}
	case lkUnlock:
		n, _ := cluster.IntValue(reply)
		if n == 2 {
			// Handed over, with other proxies' waiters seen: the client sees a release.
			c.s.locks.othersWaiting(ls.key)
			n, reply = 1, unlockedReply
		}
		if n == 1 {
			c.released(ls.key, ls.token, ls.handed)
		}
		out = append(out, reply...)
	case lkInfo:
		out = c.appendLockInfo(out, ls.key, reply)
	default:
		out = append(out, reply...)
	}
	return out, false, 0
}

// parseLockReply reads the lock script's {1, fence} or {0, pttl}, or SET NX's OK or nil (no
// fence, no TTL known).
func parseLockReply(r []byte) (acquired bool, n int64, ok bool) {
	switch {
	case bytes.Equal(r, okReply):
		return true, 0, true
	case bytes.Equal(r, nilReply):
		return false, -1, true
	}
	var buf [2][]byte
	elems, good := cluster.ArrayElems(r, buf[:0])
	if !good || len(elems) != 2 {
		return false, 0, false
	}
	flag, ok1 := cluster.IntValue(elems[0])
	n, ok2 := cluster.IntValue(elems[1])
	return flag == 1, n, ok1 && ok2
}

// lockAcquired finishes a successful acquisition: replica check, bookkeeping, reply.
func (c *client) lockAcquired(out []byte, ls *lockStep, acked int, fence int64) []byte {
	m := c.s.locks
	if ls.acks > 0 && acked < ls.acks {
		return c.noReplicas(out, ls)
	}
	m.acquired.Add(1)
	c.rememberToken(ls.key, ls.token)
	if ls.req.KeepAlive {
		c.startKeepalive(ls.key, ls.slot, ls.token, ls.req.TTL)
	}
	if ls.req.Fence {
		out = redcon.AppendArray(out, 2)
		out = redcon.AppendBulkString(out, ls.token)
		return redcon.AppendInt(out, fence)
	}
	return redcon.AppendBulkString(out, ls.token)
}

// noReplicas gives back a lock too few replicas acknowledged, before anyone relies on it.
func (c *client) noReplicas(out []byte, ls *lockStep) []byte {
	c.s.locks.noReplicas.Add(1)
	c.giveBack(ls)
	return redcon.AppendError(out, "NOREPLICAS Not enough replicas acknowledged the lock")
}

// released does the bookkeeping of a successful UNLOCK and wakes this proxy's next waiter
// (handed: an event loop sent that waiter's attempt right behind the UNLOCK).
func (c *client) released(key, token string, handed bool) {
	c.s.locks.released.Add(1)
	c.stopKeepalive(key, token)
	if handed {
		c.s.locks.handedOver.Add(1)
	} else {
		c.s.locks.announced(key)
	}
}

// giveBack releases a lock an acquisition took that its client must not rely on (NOREPLICAS,
// a waiter that has gone). Only a token the proxy generated: a client's own token (TOKEN) may
// be re-taking the lock by now on another connection, as a retry after a timeout does, and
// deleting it would leave that retry believing it holds a lock that is free. Such a lock stays
// with its token, for the client to UNLOCK or retry, or until its TTL.
func (c *client) giveBack(ls *lockStep) {
	if !ls.ownToken {
		c.unlockNow(ls.key, ls.slot, ls.token)
	}
}

// unlockNow releases a lock outside the pipeline (NOREPLICAS, a waiter that disconnected).
func (c *client) unlockNow(key string, slot uint16, token string) bool {
	ex := cluster.NewExchange()
	ex.Add(appendScript(nil, commands.ScriptUnlock, [][]byte{[]byte(key)}, [][]byte{[]byte(token)}), slot)
	c.s.pool.Do(ex)
	if n, _ := cluster.IntValue(ex.Calls[0].Reply); n == 1 {
		c.s.locks.wakeHead(key)
		return true
	}
	return false
}

func (c *client) appendLockInfo(out []byte, key string, reply []byte) []byte {
	var buf [2][]byte
	elems, ok := cluster.ArrayElems(reply, buf[:0])
	if !ok || len(elems) != 2 {
		// nil: the lock is free.
		return append(out, reply...)
	}
	ttl, _ := cluster.IntValue(elems[1])
	out = redcon.AppendArray(out, 6)
	out = redcon.AppendBulkString(out, "token")
	out = append(out, elems[0]...)
	out = redcon.AppendBulkString(out, "ttl-ms")
	out = redcon.AppendInt(out, ttl)
	out = redcon.AppendBulkString(out, "waiters")
	return redcon.AppendInt(out, int64(c.s.locks.waiters(key)))
}

// waitForLock blocks this client (and only it) until the lock is taken, WAIT runs out, the
// client disconnects or the proxy shuts down. It returns the reply to write, or nil when the
// connection is gone.
func (c *client) waitForLock(ls *lockStep, pttl int64, started time.Time) []byte {
	m := c.s.locks
	deadline := started.Add(ls.req.Wait)
	w := m.enqueue(ls.key, ls.slot)
	defer m.dequeue(ls.key, w)
	gone, stopWatch := c.watchDisconnect()
	defer stopWatch()
	if c.lk.waitEx == nil {
		c.lk.waitEx = cluster.NewExchange()
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	// Try once more now that this client is queued and subscribed: a release between the
	// first attempt and now announced itself to nobody.
	attempt := true
	for {
		now := time.Now()
		if !now.Before(deadline) {
			m.waitTimeouts.Add(1)
			return redcon.AppendNull(nil)
		}
		if attempt && m.isHead(ls.key, w) {
			ex := c.lk.waitEx
			ex.Reset()
			i := ex.Add(ls.appendCall(nil), ls.slot)
			ex.Calls[i].Acks = ls.acks
			c.s.pool.Do(ex)
			call := &ex.Calls[i]
			if call.Err != nil || (len(call.Reply) > 0 && call.Reply[0] == '-') {
				return c.appendCallReply(nil, call)
			}
			ok, n, good := parseLockReply(call.Reply)
			if !good {
				return redcon.AppendError(nil, "ERR proxy: unexpected reply to the lock script")
			}
			if ok {
				select {
				case <-gone:
					// Taken for a client that has left: never leave it held.
					c.giveBack(ls)
					return nil
				default:
				}
				return c.lockAcquired(nil, ls, call.Acked, n)
			}
			pttl = n
		}
		attempt = false
		// Sleep until a release is announced, the holder's TTL runs out, the bounded re-check
		// is due, or WAIT ends.
		sleep := time.Until(deadline)
		if m.isHead(ls.key, w) {
			recheck := m.opts.Recheck
			if pttl > 0 {
				recheck = min(recheck, time.Duration(pttl)*time.Millisecond+time.Millisecond)
			}
			sleep = min(sleep, recheck)
		}
		timer.Reset(max(sleep, 0))
		select {
		case <-w.wake:
			if !timer.Stop() {
				<-timer.C
			}
			attempt = true
		case <-timer.C:
			attempt = time.Now().Before(deadline)
		case <-gone:
			return nil
		case <-c.s.closingCh:
			return redcon.AppendNull(nil)
		}
	}
}

// watchDisconnect reads the connection while the client goroutine is busy waiting, so that a
// client that leaves is noticed at once. Bytes it reads are handed back to the request reader
// when the watch stops. gone is closed when the client has disconnected.
func (c *client) watchDisconnect() (gone <-chan struct{}, stop func()) {
	ch := make(chan struct{})
	done := make(chan []byte, 1)
	go func() {
		var got []byte
		buf := make([]byte, 4096)
		for len(got) < 64<<10 {
			n, err := c.conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				if !isTimeout(err) {
					close(ch)
				}
				break
			}
		}
		done <- got
	}()
	return ch, func() {
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
		got := <-done
		_ = c.conn.SetReadDeadline(time.Time{})
		c.rd.Feed(got)
		select {
		case <-ch:
			c.quitting = true
		default:
		}
	}
}

// keepalive renews one lock taken with KEEPALIVE while its connection stays open.
type keepalive struct {
	c       *client
	key     string
	slot    uint16
	token   string
	ttl     time.Duration
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func (c *client) startKeepalive(key string, slot uint16, token string, ttl time.Duration) {
	ka := &keepalive{c: c, key: key, slot: slot, token: token, ttl: ttl}
	c.lk.keepMu.Lock()
	if c.lk.keep == nil {
		c.lk.keep = map[string]*keepalive{}
	}
	if old := c.lk.keep[key]; old != nil {
		old.stop()
	}
	c.lk.keep[key] = ka
	c.lk.keepMu.Unlock()
	ka.mu.Lock()
	ka.timer = time.AfterFunc(ttl/3, ka.renew)
	ka.mu.Unlock()
}

func (ka *keepalive) stop() {
	ka.mu.Lock()
	ka.stopped = true
	if ka.timer != nil {
		ka.timer.Stop()
	}
	ka.mu.Unlock()
}

func (ka *keepalive) renew() {
	ka.mu.Lock()
	if ka.stopped {
		ka.mu.Unlock()
		return
	}
	ka.mu.Unlock()
	c := ka.c
	ex := cluster.NewExchange()
	ttl := strconv.FormatInt(ka.ttl.Milliseconds(), 10)
	ex.Add(appendScript(nil, commands.ScriptRenew, [][]byte{[]byte(ka.key)}, [][]byte{[]byte(ka.token), []byte(ttl)}), ka.slot)
	c.s.pool.Do(ex)
	call := ex.Calls[0]
	next := ka.ttl / 3
	if call.Err == nil {
		if n, ok := cluster.IntValue(call.Reply); ok && n == 0 {
			c.s.locks.keepaliveLost.Add(1)
			c.s.log.Warn("keepalive: lock lost before renewal", zap.String("key", ka.key), zap.Int64("client", c.id))
			c.lk.keepMu.Lock()
			if c.lk.keep[ka.key] == ka {
				delete(c.lk.keep, ka.key)
			}
			c.lk.keepMu.Unlock()
			return
		}
	} else {
		// Transport trouble: try again sooner, while the lease still runs.
		next = ka.ttl / 6
		c.s.log.Debug("keepalive: renewal failed", zap.String("key", ka.key), zap.Error(call.Err))
	}
	ka.mu.Lock()
	if !ka.stopped {
		ka.timer = time.AfterFunc(max(next, time.Millisecond), ka.renew)
	}
	ka.mu.Unlock()
}

// stopKeepalive stops renewing key when token (or any token, if empty) holds it.
func (c *client) stopKeepalive(key, token string) {
	c.lk.keepMu.Lock()
	ka := c.lk.keep[key]
	if ka != nil && (token == "" || ka.token == token) {
		delete(c.lk.keep, key)
	} else {
		ka = nil
	}
	c.lk.keepMu.Unlock()
	if ka != nil {
		ka.stop()
	}
}

// releaseKeepalives frees every KEEPALIVE lock of a closing connection.
func (c *client) releaseKeepalives() {
	c.lk.keepMu.Lock()
	kas := c.lk.keep
	c.lk.keep = nil
	c.lk.keepMu.Unlock()
	if len(kas) == 0 {
		return
	}
	list := make([]*keepalive, 0, len(kas))
	ex := cluster.NewExchange()
	for _, ka := range kas {
		ka.stop()
		list = append(list, ka)
		ex.Add(appendScript(nil, commands.ScriptUnlock, [][]byte{[]byte(ka.key)}, [][]byte{[]byte(ka.token)}), ka.slot)
	}
	c.s.pool.Do(ex)
	for i, ka := range list {
		if n, _ := cluster.IntValue(ex.Calls[i].Reply); n == 1 {
			c.s.locks.released.Add(1)
			c.s.locks.wakeHead(ka.key)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
