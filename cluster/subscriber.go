package cluster

import (
	"bytes"
	"net"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Subscriber holds shard-channel subscriptions (SSUBSCRIBE) on one connection per primary and
// calls OnMessage with the channel of every message. Subscriptions follow their slot when it
// moves and are re-made after a connection fails; a background loop checks every half second.
// Safe for concurrent use.
type Subscriber struct {
	pool      *Pool
	onMessage func(channel []byte)

	mu       sync.Mutex
	conns    map[*Node]*subConn
	channels map[string]*subscription
	// ownUnsub counts the SUNSUBSCRIBEs sent per channel whose confirmation has not come
	// back: those confirmations are ours, not the server dropping a newer subscription.
	ownUnsub map[string]int
	stop     chan struct{}
	closed   bool // Close has begun: nothing new is dialled or subscribed
	wg       sync.WaitGroup
}

type subscription struct {
	slot    uint16
	refs    int
	on      *subConn      // nil until subscribed
	boundAt time.Time     // when the SSUBSCRIBE on on was sent
	ready   chan struct{} // closed when the server confirmed the subscription
	// again: confirmed before; a later confirmation (after a failed connection, a moved
	// slot) wakes the channel's waiters, as a release may have gone unheard meanwhile.
	again bool
}

type subConn struct {
	node *Node
	conn net.Conn
}

// NewSubscriber starts a subscriber; Close stops it.
func (p *Pool) NewSubscriber(onMessage func(channel []byte)) *Subscriber {
	s := &Subscriber{
		pool:      p,
		onMessage: onMessage,
		conns:     map[*Node]*subConn{},
		channels:  map[string]*subscription{},
		ownUnsub:  map[string]int{},
		stop:      make(chan struct{}),
	}
	s.wg.Add(1)
	go s.repairLoop()
	return s
}

// Subscribe adds a reference to channel, which hashes to slot, subscribing on first use. The
// returned channel is closed once the server has confirmed the subscription: from then on no
// message on it can be missed.
func (s *Subscriber) Subscribe(channel string, slot uint16) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.channels[channel]
	if sub == nil {
		sub = &subscription{slot: slot, ready: make(chan struct{})}
		s.channels[channel] = sub
	}
	sub.refs++
	if sub.on == nil && !s.closed {
		if n := s.pool.slots[slot].Load(); n != nil && s.conns[n] == nil {
			// Dial without the lock: a node that does not answer must not hold up
			// subscriptions on the others. The reference taken above keeps sub alive.
			s.mu.Unlock()
			s.connect(n)
			s.mu.Lock()
		}
		if sub.on == nil && !s.closed {
			s.bindLocked(channel, sub)
		}
	}
	return sub.ready
}

// connect dials the subscription connection to n, unless one exists by the time it is up.
// Called without s.mu.
func (s *Subscriber) connect(n *Node) {
	conn, err := s.pool.dial(n.Addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.pool.log.Debug("subscriber: dial failed", zap.String("node", n.Addr), zap.Error(err))
		return
	}
	if s.closed || s.conns[n] != nil {
		_ = conn.Close()
		return
	}
	sc := &subConn{node: n, conn: conn}
	s.conns[n] = sc
	s.wg.Add(1)
	go s.readLoop(sc)
}

// unbindLocked notes that sub is no longer subscribed anywhere: until a new subscription is
// confirmed, waiters must not count on it.
func (s *Subscriber) unbindLocked(sub *subscription) {
	sub.on = nil
	select {
	case <-sub.ready:
		sub.ready = make(chan struct{})
	default:
	}
}

// Unsubscribe drops a reference, unsubscribing with the last one.
func (s *Subscriber) Unsubscribe(channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.channels[channel]
	if sub == nil {
		return
	}
	if sub.refs--; sub.refs > 0 {
		return
	}
	delete(s.channels, channel)
	if sub.on != nil {
		s.writeLocked(sub.on, "SUNSUBSCRIBE", channel)
	}
}

// TryRef takes a reference on a subscription to channel that is already confirmed, without
// waiting: false when there is none yet or the subscriber is busy (Subscribe, which may dial,
// is then the way). An event loop uses it to stay off the subscriber's lock.
func (s *Subscriber) TryRef(channel string) bool {
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	sub := s.channels[channel]
	if sub == nil || sub.on == nil {
		return false
	}
	select {
	case <-sub.ready:
	default:
		return false
	}
	sub.refs++
	return true
}

// Confirmed reports whether the subscription to channel is confirmed by the server: 1 or 0,
// or -1 when the subscriber is busy and cannot tell without waiting.
func (s *Subscriber) Confirmed(channel string) int {
	if !s.mu.TryLock() {
		return -1
	}
	defer s.mu.Unlock()
	sub := s.channels[channel]
	if sub == nil || sub.on == nil {
		return 0
	}
	select {
	case <-sub.ready:
		return 1
	default:
		return 0
	}
}

// TryUnref drops a reference to channel that is not the last one, without waiting: false
// when it is the last or the subscriber is busy (Unsubscribe is then the way).
func (s *Subscriber) TryUnref(channel string) bool {
	if !s.mu.TryLock() {
		return false
	}
	defer s.mu.Unlock()
	sub := s.channels[channel]
	if sub == nil || sub.refs <= 1 {
		return false
	}
	sub.refs--
	return true
}

// bindLocked subscribes channel on the connection to its slot's primary, if that connection
// is up (connect makes it; the repair loop binds what is left).
func (s *Subscriber) bindLocked(channel string, sub *subscription) {
	n := s.pool.slots[sub.slot].Load()
	if n == nil {
		return
	}
	sc := s.conns[n]
	if sc == nil {
		return
	}
	if s.writeLocked(sc, "SSUBSCRIBE", channel) {
		sub.on, sub.boundAt = sc, time.Now()
	}
}

func (s *Subscriber) writeLocked(sc *subConn, cmd, channel string) bool {
	if cmd == "SUNSUBSCRIBE" {
		s.ownUnsub[channel]++
	}
	_ = sc.conn.SetWriteDeadline(time.Now().Add(s.pool.opts.DialTimeout))
	if _, err := sc.conn.Write(AppendCommand(nil, cmd, channel)); err != nil {
		_ = sc.conn.Close()
		return false
	}
	return true
}

var (
	smessage     = []byte("smessage")
	ssubscribe   = []byte("ssubscribe")
	sunsubscribe = []byte("sunsubscribe")
)

// readLoop delivers messages until the connection fails, then marks its channels for repair.
func (s *Subscriber) readLoop(sc *subConn) {
	defer s.wg.Done()
	buf := make([]byte, 16<<10)
	r, w := 0, 0
	var elems [][]byte
	for {
		for r < w {
			l, err := ReplyLen(buf[r:w])
			if err != nil {
				w = -1
				break
			}
			if l == 0 {
				break
			}
			if buf[r] == '-' {
				// An SSUBSCRIBE refused: MOVED when the map was stale. Which one is not said.
				s.refused(buf[r : r+l])
			}
			elems, _ = ArrayElems(buf[r:r+l], elems[:0])
			if len(elems) >= 3 {
				kind := BulkValue(elems[0])
				ch := BulkValue(elems[1])
				switch {
				case bytes.Equal(kind, smessage):
					s.onMessage(ch)
				case bytes.Equal(kind, ssubscribe):
					s.confirmed(sc, string(ch))
				case bytes.Equal(kind, sunsubscribe):
					// The server dropped us (the slot moved) or we asked: repair decides.
					s.unbound(sc, string(ch))
				}
			}
			r += l
		}
		if w < 0 {
			break
		}
		if r > 0 {
			w = copy(buf, buf[r:w])
			r = 0
		}
		if w == len(buf) {
			nb := make([]byte, 2*len(buf))
			copy(nb, buf)
			buf = nb
		}
		k, err := sc.conn.Read(buf[w:])
		if err != nil {
			break
		}
		w += k
	}
	_ = sc.conn.Close()
	s.mu.Lock()
	if s.conns[sc.node] == sc {
		delete(s.conns, sc.node)
	}
	for _, sub := range s.channels {
		if sub.on == sc {
			s.unbindLocked(sub)
		}
	}
	// Confirmations that will never come: forget them.
	clear(s.ownUnsub)
	s.mu.Unlock()
}

func (s *Subscriber) confirmed(sc *subConn, channel string) {
	wake := false
	s.mu.Lock()
	if sub := s.channels[channel]; sub != nil && sub.on == sc {
		select {
		case <-sub.ready:
		default:
			close(sub.ready)
			wake, sub.again = sub.again, true
		}
	}
	s.mu.Unlock()
	if wake {
		s.onMessage([]byte(channel))
	}
}

func (s *Subscriber) unbound(sc *subConn, channel string) {
	s.mu.Lock()
	if n := s.ownUnsub[channel]; n > 0 {
		// The answer to our own SUNSUBSCRIBE.
		if n == 1 {
			delete(s.ownUnsub, channel)
		} else {
			s.ownUnsub[channel] = n - 1
		}
		s.mu.Unlock()
		return
	}
	if sub := s.channels[channel]; sub != nil && sub.on == sc {
		s.unbindLocked(sub)
	}
	s.mu.Unlock()
}

// refused handles an error reply on sc, which does not say which command it answers. A
// redirect (an SSUBSCRIBE sent on a stale map) asks for the map to be re-read: the repair loop
// then moves the subscriptions whose slot has another owner, and the one refused with them.
// Anything else (NOPERM: the proxy's user may not use the channels) is logged; waiters fall
// back on their bounded re-checks.
func (s *Subscriber) refused(reply []byte) {
	if isRedirect(reply) {
		s.pool.requestRefresh()
		return
	}
	s.pool.log.Warn("subscriber: release channel refused", zap.ByteString("reply", bytes.TrimSpace(reply)))
}

// repairLoop re-subscribes channels that lost their connection or whose slot moved.
func (s *Subscriber) repairLoop() {
	defer s.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		// Bind what can be bound; dial each missing node once, without the lock; then bind
		// what those connections serve.
		for pass := 0; pass < 2; pass++ {
			var dial []*Node
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				return
			}
			for ch, sub := range s.channels {
				if sub.on != nil && s.pool.slots[sub.slot].Load() != sub.on.node {
					s.writeLocked(sub.on, "SUNSUBSCRIBE", ch)
					s.unbindLocked(sub)
				}
				if sub.on != nil && time.Since(sub.boundAt) > unconfirmedAfter {
					select {
					case <-sub.ready:
					default:
						// Never confirmed (refused, say, by a node that no longer owns the
						// slot while the map still says it does): send it again.
						sub.on = nil
					}
				}
				if sub.on != nil {
					continue
				}
				if n := s.pool.slots[sub.slot].Load(); n != nil && s.conns[n] == nil {
					if !slices.Contains(dial, n) {
						dial = append(dial, n)
					}
					continue
				}
				s.bindLocked(ch, sub)
			}
			s.mu.Unlock()
			if len(dial) == 0 || pass == 1 {
				break
			}
			for _, n := range dial {
				s.connect(n)
			}
		}
	}
}

// unconfirmedAfter is how long a subscription may go unconfirmed before it is sent again.
const unconfirmedAfter = 2 * time.Second

// Close drops every subscription and connection.
func (s *Subscriber) Close() {
	close(s.stop)
	s.mu.Lock()
	s.closed = true
	for _, sc := range s.conns {
		_ = sc.conn.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
