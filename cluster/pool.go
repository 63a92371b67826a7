package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Options configure the upstream side.
type Options struct {
	// Seeds are host:port addresses of any cluster nodes (or one standalone server).
	Seeds []string
	// Username and Password authenticate to every node when set.
	Username string
	Password string
	// TLS, when set, is used for every upstream connection.
	TLS *tls.Config
	// DialTimeout bounds connecting to a node.
	DialTimeout time.Duration
	// Timeout closes a node connection on which requests waited this long with no reply byte.
	Timeout time.Duration
	// RefreshInterval is how often the slot map is re-read even without a MOVED.
	RefreshInterval time.Duration
	// MaxRedirects bounds MOVED/ASK/TRYAGAIN handling per command.
	MaxRedirects int
	// WaitTimeout is the timeout of the WAIT that follows acknowledged writes.
	WaitTimeout time.Duration
	// MaxPinned caps the dedicated connections clients may hold per node (0: no cap).
	MaxPinned int
	// ReadFrom is where calls marked Read go: "primary" (default), "replica" or
	// "prefer-replica" (both fall back to the primary when a slot has no replica).
	ReadFrom string
	// Logger receives topology changes and connection failures.
	Logger *zap.Logger
}

// Pool is the proxy's view of the upstream: a slot map refreshed from CLUSTER SLOTS through a
// rueidis client, and one pipelined Node per server for client traffic. Safe for concurrent use.
type Pool struct {
	opts Options
	log  *zap.Logger
	rc   rueidis.Client

	standalone   bool
	replicaReads bool // ReadFrom sends reads to replicas
	slots        [SlotCount]atomic.Pointer[Node]
	readSlots    [SlotCount]atomic.Pointer[[]*Node] // replicas per slot, when ReadFrom wants them
	readNext     atomic.Uint32
	primaries    atomic.Pointer[[]*Node]
	replicaNodes atomic.Pointer[[]*Node]

	syncMu   sync.Mutex
	lastSync time.Time

	// members: addresses of the primaries CLUSTER NODES lists, slotless ones included (an ASK
	// may name one), re-read on a miss (isMember).
	members     atomic.Pointer[map[string]bool]
	membersMu   sync.Mutex // one read of CLUSTER NODES at a time
	membersRead time.Time

	mu    sync.Mutex
	nodes map[string]*Node
	acks  map[*Node][]*Node
	pins  map[*Node]*pinnedPool

	clock     atomic.Int64
	epoch     atomic.Uint64 // see storeSlots
	slotsMu   sync.Mutex
	stopped   atomic.Bool
	stats     struct{ connLost, dialFailed, redirects atomic.Int64 }
	refreshCh chan struct{}
	// noReplicaAt is when a slot without a replica last asked for a refresh (ReplicasChecked),
	// noReplicaGap how long until the next may: doubled at each, up to the refresh interval,
	// and back to a second when a refresh finds a replica more.
	noReplicaAt  atomic.Int64
	noReplicaGap atomic.Int64
	stop         chan struct{}
	wg           sync.WaitGroup
	readers      sync.WaitGroup
	closeOnce    sync.Once
}

// ErrNoSlot is returned for a slot no primary serves.
var ErrNoSlot = errors.New("CLUSTERDOWN Hash slot not served")

// New connects to the seeds, learns the topology and starts the refresh and watchdog loops.
func New(ctx context.Context, opts Options) (*Pool, error) {
	if len(opts.Seeds) == 0 {
		return nil, errors.New("no upstream seed addresses")
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxRedirects <= 0 {
		opts.MaxRedirects = 5
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	rc, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  opts.Seeds,
		Username:     opts.Username,
		Password:     opts.Password,
		TLSConfig:    opts.TLS,
		AlwaysRESP2:  true,
		DisableCache: true,
		ShuffleInit:  true,
		ClientName:   "valkey-lock-proxy",
		Dialer:       net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second},
		ClusterOption: rueidis.ClusterOption{
			ShardsRefreshInterval: opts.RefreshInterval,
			MaxMovedRedirections:  opts.MaxRedirects,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to upstream %v: %w", opts.Seeds, err)
	}
	p := &Pool{
		opts:         opts,
		log:          opts.Logger,
		rc:           rc,
		standalone:   rc.Mode() != rueidis.ClientModeCluster,
		replicaReads: opts.ReadFrom == "replica" || opts.ReadFrom == "prefer-replica",
		nodes:        map[string]*Node{},
		acks:         map[*Node][]*Node{},
		pins:         map[*Node]*pinnedPool{},
		refreshCh:    make(chan struct{}, 1),
		stop:         make(chan struct{}),
	}
	p.clock.Store(time.Now().UnixNano())
	if err := p.refresh(ctx); err != nil {
		rc.Close()
		return nil, err
	}
	p.wg.Add(2)
	go p.refreshLoop()
	go p.watchdog()
	return p, nil
}

// Standalone reports whether the upstream is a single non-cluster server.
func (p *Pool) Standalone() bool { return p.standalone }

// Primaries returns the current primary nodes.
func (p *Pool) Primaries() []*Node {
	if ps := p.primaries.Load(); ps != nil {
		return *ps
	}
	return nil
}

// NodeForSlot returns the primary serving slot, or nil.
func (p *Pool) NodeForSlot(slot uint16) *Node { return p.slots[slot].Load() }

func (p *Pool) now() int64 { return p.clock.Load() }

// node returns the Node for addr, creating it.
func (p *Pool) node(addr string) *Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[addr]
	if n == nil {
		n = &Node{Addr: addr, pool: p}
		p.nodes[addr] = n
	}
	return n
}

// ackTwins is how many acknowledged-write connections each node gets: while one waits for its
// WAIT, acquisitions go out on the others.
const ackTwins = 4

// ackNode returns a twin of n that carries writes followed by WAIT: connections of their own,
// so that a WAIT blocking on a slow replica never holds up other traffic to n.
func (p *Pool) ackNode(n *Node) *Node {
	i := int(n.ackNext.Add(1)) % ackTwins
	p.mu.Lock()
	defer p.mu.Unlock()
	ts := p.acks[n]
	if ts == nil {
		ts = make([]*Node, ackTwins)
		for k := range ts {
			ts[k] = &Node{Addr: n.Addr, pool: p, waitTimeout: max(p.opts.WaitTimeout.Milliseconds(), 1)}
		}
		p.acks[n] = ts
	}
	return ts[i]
}

// readNode picks where a read for slot goes: one of its replicas in turn, or the primary.
func (p *Pool) readNode(slot uint16) *Node {
	if rs := p.readSlots[slot].Load(); rs != nil && len(*rs) > 0 {
		return (*rs)[int(p.readNext.Add(1))%len(*rs)]
	}
	return p.slots[slot].Load()
}

// Replicas returns how many replicas the primary serving slot had at the last refresh.
func (p *Pool) Replicas(slot uint16) int {
	if n := p.slots[slot].Load(); n != nil {
		return int(n.replicas.Load())
	}
	return 0
}

// Control sends a keyless control command (CLUSTER SLOTS, COMMAND, INFO) to one node after
// another, primaries first, until one answers, each given at most controlTry. The cluster
// client would send it to whichever node comes first in its map, replicas included, so that
// one stuck node could stall the start or every refresh until the upstream timeout.
func (p *Pool) Control(ctx context.Context, cmd func(rueidis.Client) rueidis.Completed) rueidis.RedisResult {
	nodes := p.rc.Nodes()
	order := make([]string, 0, len(nodes))
	for _, n := range p.Primaries() {
		if _, ok := nodes[n.Addr]; ok && !slices.Contains(order, n.Addr) {
			order = append(order, n.Addr)
		}
	}
	rest := make([]string, 0, len(nodes))
	for addr := range nodes {
		if !slices.Contains(order, addr) {
			rest = append(rest, addr)
		}
	}
	slices.Sort(rest)
	order = append(order, rest...)
	if len(order) == 0 {
		return p.rc.Do(ctx, cmd(p.rc))
	}
	try := controlTry
	if p.opts.Timeout > 0 {
		try = min(try, p.opts.Timeout)
	}
	var res rueidis.RedisResult
	for _, addr := range order {
		c := nodes[addr]
		tctx, cancel := context.WithTimeout(ctx, try)
		res = c.Do(tctx, cmd(c))
		cancel()
		err := res.Error()
		if _, isReply := rueidis.IsRedisErr(err); err == nil || isReply || ctx.Err() != nil {
			return res
		}
	}
	return res
}

// controlTry bounds one node's answer to a control command before the next node is asked.
const controlTry = 3 * time.Second

// ReplicasChecked is Replicas for a caller that relies on the count (the lock commands'
// acknowledgement): a slot of a cluster found without a replica asks for the topology to be
// re-read, a second after the last such request at first. A replica that joins or comes back,
// which CLUSTER SLOTS lists again, is then counted within about a second instead of at the
// next periodic refresh. While refreshes find no replica more, the gap doubles up to the
// refresh interval: a cluster without replicas by design is not re-read every second.
func (p *Pool) ReplicasChecked(slot uint16) int {
	n := p.Replicas(slot)
	if n == 0 && !p.standalone {
		now := time.Now().UnixNano()
		last, gap := p.noReplicaAt.Load(), max(p.noReplicaGap.Load(), int64(time.Second))
		if now-last >= gap && p.noReplicaAt.CompareAndSwap(last, now) {
			p.noReplicaGap.Store(min(2*gap, max(int64(p.opts.RefreshInterval), int64(time.Second))))
			p.requestRefresh()
		}
	}
	return n
}

func (p *Pool) dial(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: p.opts.DialTimeout, KeepAlive: 30 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if p.opts.TLS != nil {
		cfg := p.opts.TLS.Clone()
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			cfg.ServerName = host
		}
		tc := tls.Client(conn, cfg)
		_ = tc.SetDeadline(time.Now().Add(p.opts.DialTimeout))
		if err := tc.Handshake(); err != nil {
			_ = conn.Close()
			return nil, err
		}
		_ = tc.SetDeadline(time.Time{})
		conn = tc
	}
	if p.opts.Password != "" {
		if err := p.auth(conn); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// dialNode connects to n; a replica's connection is put in READONLY mode so it serves reads.
func (p *Pool) dialNode(n *Node) (net.Conn, error) {
	conn, err := p.dial(n.Addr)
	if err != nil || !n.readonly.Load() {
		return conn, err
	}
	if err := p.handshake(conn, AppendCommand(nil, "READONLY")); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

// auth sends AUTH on a fresh connection and checks the reply.
func (p *Pool) auth(conn net.Conn) error {
	args := []string{"AUTH"}
	if p.opts.Username != "" {
		args = append(args, p.opts.Username)
	}
	args = append(args, p.opts.Password)
	return p.handshake(conn, AppendCommand(nil, args...))
}

// handshake sends one request on a fresh connection and fails on an error reply.
func (p *Pool) handshake(conn net.Conn, req []byte) error {
	_ = conn.SetDeadline(time.Now().Add(p.opts.DialTimeout))
	defer func() { _ = conn.SetDeadline(time.Time{}) }()
	if _, err := conn.Write(req); err != nil {
		return err
	}
	buf := make([]byte, 512)
	var sc replyScanner
	w := 0
	for {
		k, err := conn.Read(buf[w:])
		w += k
		if l, serr := sc.scan(buf[:w]); serr != nil {
			return serr
		} else if l > 0 {
			if buf[0] == '-' {
				return fmt.Errorf("upstream handshake failed: %s", strings.TrimSpace(string(buf[1:l])))
			}
			return nil
		}
		if err != nil {
			return err
		}
		if w == len(buf) {
			return errors.New("upstream handshake reply too long")
		}
	}
}

// AppendCommand appends args encoded as a RESP multibulk request.
func AppendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// requestRefresh asks the refresh loop to re-read the topology soon; it never blocks.
func (p *Pool) requestRefresh() {
	select {
	case p.refreshCh <- struct{}{}:
	default:
	}
}

func (p *Pool) refreshLoop() {
	defer p.wg.Done()
	var tick <-chan time.Time
	if p.opts.RefreshInterval > 0 {
		t := time.NewTicker(p.opts.RefreshInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-p.stop:
			return
		case <-tick:
		case <-p.refreshCh:
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.opts.Timeout)
		if err := p.refresh(ctx); err != nil {
			p.log.Warn("topology refresh failed", zap.Error(err))
		}
		cancel()
		// Coalesce bursts of requests (every MOVED of a reshard asks for one).
		select {
		case <-p.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watchdog advances the coarse clock and fails connections that stopped answering.
func (p *Pool) watchdog() {
	defer p.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.clock.Store(now.UnixNano())
			p.mu.Lock()
			nodes := p.pipelinesLocked()
			p.mu.Unlock()
			for _, n := range nodes {
				n.checkStalled(now.UnixNano(), int64(p.opts.Timeout))
			}
		}
	}
}

// RefreshNow re-reads the slot map before returning (sharing a refresh that just ran).
func (p *Pool) RefreshNow() { p.refreshSync() }

// refreshSync re-reads the slot map now, unless another refresh finished in the last 100 ms;
// concurrent callers share one refresh.
func (p *Pool) refreshSync() {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if time.Since(p.lastSync) < 100*time.Millisecond {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.Timeout)
	defer cancel()
	if err := p.refresh(ctx); err != nil {
		p.log.Warn("topology refresh failed", zap.Error(err))
	}
	p.lastSync = time.Now()
}

// refresh re-reads the slot map.
func (p *Pool) refresh(ctx context.Context) error {
	if p.standalone {
		n := p.node(p.opts.Seeds[0])
		if p.slots[0].Load() != n {
			p.storeSlots(func(store func(int, *Node)) {
				for i := range p.slots {
					store(i, n)
				}
			})
		}
		p.primaries.Store(&[]*Node{n})
		return nil
	}
	msg, err := p.Control(ctx, func(c rueidis.Client) rueidis.Completed { return c.B().ClusterSlots().Build() }).ToArray()
	if err != nil {
		return fmt.Errorf("CLUSTER SLOTS: %w", err)
	}
	type span struct {
		lo, hi   int64
		addr     string
		replicas []string
	}
	var spans []span
	for _, entry := range msg {
		e, err := entry.ToArray()
		if err != nil || len(e) < 3 {
			continue
		}
		lo, err1 := e[0].AsInt64()
		hi, err2 := e[1].AsInt64()
		ep, err3 := e[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(ep) < 2 || lo < 0 || hi >= SlotCount || lo > hi {
			continue
		}
		host, _ := ep[0].ToString()
		port, err := ep[1].AsInt64()
		if err != nil {
			continue
		}
		if host == "" || host == "?" {
			host, _, _ = net.SplitHostPort(p.opts.Seeds[0])
		}
		var reps []string
		for _, r := range e[3:] {
			if re, err := r.ToArray(); err == nil && len(re) >= 2 {
				rh, _ := re[0].ToString()
				rp, err := re[1].AsInt64()
				if err != nil {
					continue
				}
				if rh == "" || rh == "?" {
					rh = host
				}
				reps = append(reps, net.JoinHostPort(rh, strconv.FormatInt(rp, 10)))
			}
		}
		spans = append(spans, span{lo, hi, net.JoinHostPort(host, strconv.FormatInt(port, 10)), reps})
	}
	if len(spans) == 0 {
		return errors.New("CLUSTER SLOTS returned no slots")
	}
	seen := map[string]bool{}
	var prim, reps []*Node
	type move struct {
		slot int64
		n    *Node
	}
	var moves []move
	for _, s := range spans {
		n := p.node(s.addr)
		if old := n.replicas.Swap(int32(len(s.replicas))); int(old) < len(s.replicas) {
			p.noReplicaGap.Store(int64(time.Second)) // a replica more: check soon again
		}
		if p.opts.ReadFrom == "replica" || p.opts.ReadFrom == "prefer-replica" {
			var rn []*Node
			for _, r := range s.replicas {
				node := p.node(r)
				node.readonly.Store(true)
				rn = append(rn, node)
			}
			for i := s.lo; i <= s.hi; i++ {
				p.readSlots[i].Store(&rn)
			}
		}
		if !seen[s.addr] {
			seen[s.addr] = true
			prim = append(prim, n)
			for _, r := range s.replicas {
				if !seen[r] {
					seen[r] = true
					reps = append(reps, p.node(r))
				}
			}
		}
		for i := s.lo; i <= s.hi; i++ {
			if p.slots[i].Load() != n {
				moves = append(moves, move{i, n})
			}
		}
	}
	if len(moves) > 0 {
		p.storeSlots(func(store func(int, *Node)) {
			for _, m := range moves {
				store(int(m.slot), m.n)
			}
		})
	}
	if old := p.Primaries(); !samePrimaries(old, prim) {
		p.log.Info("cluster topology", zap.Int("primaries", len(prim)), zap.Strings("nodes", nodeAddrs(prim)))
	}
	p.primaries.Store(&prim)
	p.replicaNodes.Store(&reps)
	return nil
}

// storeSlots changes slot owners under the epoch, as a sequence lock: odd while slots change,
// bumped again once they have, so that a reader that saw the same even epoch before and after
// looking up a slot knows the map did not move under it.
func (p *Pool) storeSlots(each func(store func(int, *Node))) {
	p.slotsMu.Lock()
	defer p.slotsMu.Unlock()
	p.epoch.Add(1)
	each(func(i int, n *Node) { p.slots[i].Store(n) })
	p.epoch.Add(1)
}

// Stats are counters for INFO: upstream connections lost, failed dials, redirects followed.
func (p *Pool) Stats() (connLost, dialFailed, redirects int64) {
	return p.stats.connLost.Load(), p.stats.dialFailed.Load(), p.stats.redirects.Load()
}

// AllNodes returns the primaries and their replicas.
func (p *Pool) AllNodes() []*Node {
	out := append([]*Node(nil), p.Primaries()...)
	if rs := p.replicaNodes.Load(); rs != nil {
		out = append(out, *rs...)
	}
	return out
}

func samePrimaries(a, b []*Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func nodeAddrs(ns []*Node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Addr
	}
	return out
}

// pipelinesLocked lists every pipelined connection: one per node and the ack twins.
func (p *Pool) pipelinesLocked() []*Node {
	nodes := make([]*Node, 0, len(p.nodes)+ackTwins*len(p.acks))
	for _, n := range p.nodes {
		nodes = append(nodes, n)
	}
	for _, ts := range p.acks {
		nodes = append(nodes, ts...)
	}
	return nodes
}

// Close stops the loops and closes every connection; requests still waiting fail.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		p.stopped.Store(true)
		close(p.stop)
		p.wg.Wait()
		p.mu.Lock()
		nodes := p.pipelinesLocked()
		var idle []*Conn
		for _, pp := range p.pins {
			pp.mu.Lock()
			idle = append(idle, pp.idle...)
			pp.idle = nil
			pp.mu.Unlock()
		}
		p.mu.Unlock()
		for _, c := range idle {
			c.Close()
		}
		for _, n := range nodes {
			n.close()
		}
		p.readers.Wait()
		p.rc.Close()
	})
}
