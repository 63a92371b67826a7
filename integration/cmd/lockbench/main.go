// Command lockbench is the reproducible lock benchmark of valkey-lock-proxy: LOCK+UNLOCK pairs
// per second through the proxy against the same two Lua scripts sent directly to the Valkey
// Cluster by an in-process rueidis client, and the handoff latency of a contended lock.
//
//	go build -o bin/valkey-lock-proxy . && go run ./integration/cmd/lockbench -rounds 3 -out /tmp/lockbench.md
//	go run ./integration/cmd/lockbench -rounds 1 -profile /tmp/lockbench-cpu.prof
//
// It starts the proxy twice, on free loopback ports, once with locks.replicas 0 and once with
// locks.replicas auto (one replica must acknowledge every acquisition; the proxy coalesces the
// WAITs), and stops both by PID (SIGTERM) at the end.
//
// Every round runs these throughput cells for -duration each, in an order reversed every other
// round:
//
//   - direct: one rueidis cluster client (default options, DisableCache) shared by -clients
//     goroutines, each looping: random resource, the lock script (EVALSHA, EVAL on NOSCRIPT)
//     with TTL 10 s, then the unlock script. Only successful acquisitions that were released
//     count as pairs.
//   - direct+WAIT (-direct-wait): as direct, but the lock script and WAIT 1 200 go pipelined on
//     a dedicated connection (rueidis Dedicated), what a library does without batching WAITs.
//   - proxy r0 / proxy auto: -clients goroutines, each with its own connection to the proxy
//     (rueidis standalone, ForceSingleClient, DisableCache, RESP2; or go-redis with
//     -proxy-client goredis, Protocol 2, PoolSize 1), looping LOCK res PX 10000, UNLOCK res token.
//   - proxy r0 shared (-shared-cell): the same through the replicas-0 proxy, but with one rueidis
//     standalone client shared by every goroutine (auto-pipelined), as a Go app would use
//     rueidis against a standalone server.
//
// Then the contended runs: -contended-clients clients on one resource, -contended-rounds
// acquisitions in total, an equal share per client; each client loops LOCK hot PX 10000 WAIT
// 10000, UNLOCK hot token (hold ~0), and after a release tries again only once another client
// has taken the lock (-contended-barge: at once). Handoff latency is the time between the UNLOCK
// reply of one holder and the LOCK reply of the next (all clients are in this process;
// monotonic clock); wait is the time from a client's first try to holding the lock. It runs
// through both proxies, and directly with a polling loop (the lock script every -poll, like a
// simple polling library) for comparison.
//
// The report gives medians over rounds, ratios to direct, the CPU per pair of the proxy, of this
// process (the load generator and, for direct, the client library) and of the whole machine,
// and the exact command and machine. With -profile it also captures a CPU profile of the proxy
// (replicas 0) during an extra throughput cell and prints the top of `go tool pprof -top`.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/integration/internal/benchkit"
)

type config struct {
	proxyBin      string
	upstream      string
	seeds         []string
	rounds        int
	clients       int
	duration      time.Duration
	warmup        time.Duration
	contRounds    int
	contClients   int
	contTimeout   time.Duration
	contBarge     bool
	poll          time.Duration
	resources     int
	ttlMS         int
	keyPrefix     string
	proxyClient   string
	directWait    bool
	sharedCell    bool
	connCell      bool
	nxCell        bool
	opTimeout     time.Duration
	out           string
	profile       string
	profileDur    time.Duration
	replicaWaitMS int
}

func main() { benchkit.Main("lockbench", run) }

func parseFlags(argv []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("lockbench", flag.ContinueOnError)
	fs.StringVar(&c.proxyBin, "proxy-bin", "bin/valkey-lock-proxy", "proxy binary to start (go build -o bin/valkey-lock-proxy .)")
	fs.StringVar(&c.upstream, "upstream", "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203", "cluster seed nodes, for the proxy and the direct client")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each runs every throughput cell and every contended run once")
	fs.IntVar(&c.clients, "clients", 50, "concurrent clients of a throughput cell")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "length of one throughput cell")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured run of every throughput cell before round 1 (0: none)")
	fs.IntVar(&c.contRounds, "contended-rounds", 200, "acquisitions of the one hot resource per contended run")
	fs.IntVar(&c.contClients, "contended-clients", 20, "clients competing for the hot resource")
	fs.DurationVar(&c.contTimeout, "contended-timeout", 60*time.Second, "bound on one contended run")
	fs.BoolVar(&c.contBarge, "contended-barge", false, "let a client that just released try again at once "+
		"(default: it waits until another client took the lock, so every handoff goes to another client)")
	fs.DurationVar(&c.poll, "poll", 10*time.Millisecond, "retry interval of the direct polling contended run")
	fs.IntVar(&c.resources, "resources", 1000000, "random resources of the throughput cells")
	fs.IntVar(&c.ttlMS, "ttl-ms", 10000, "lock TTL in milliseconds")
	fs.StringVar(&c.keyPrefix, "key-prefix", "lock:", "locks.key-prefix, for the direct client's keys (the proxies use the default)")
	fs.StringVar(&c.proxyClient, "proxy-client", "rueidis", "client library of the proxy cells: rueidis (standalone, one connection per client) or goredis")
	fs.BoolVar(&c.directWait, "direct-wait", true, "also run the direct+WAIT cell (lock script + WAIT 1 on a dedicated connection)")
	fs.BoolVar(&c.sharedCell, "shared-cell", true, "also run the proxy r0 cell with one rueidis client shared by all goroutines "+
		"(auto-pipelined, as a Go app would use rueidis against a standalone server)")
	fs.BoolVar(&c.connCell, "conn-cell", true, "also run the direct cell with a rueidis cluster client per goroutine "+
		"(one connection per node each, no auto-pipelining across goroutines): the proxy cells' client shape without a proxy")
	fs.BoolVar(&c.nxCell, "nx-cell", true, "also run the direct cell acquiring with SET NX PX instead of the lock script, "+
		"as the proxy does for a LOCK without FENCE, TOKEN or WAIT (the release is the unlock script in both)")
	fs.IntVar(&c.replicaWaitMS, "replica-timeout-ms", 200, "WAIT timeout of the direct+WAIT cell (the proxy's locks.replica-timeout default)")
	fs.DurationVar(&c.opTimeout, "op-timeout", 15*time.Second, "bound on one command (above the contended WAIT of 10 s)")
	fs.StringVar(&c.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&c.profile, "profile", "", "capture a CPU profile of the proxy (replicas 0) under LOCK+UNLOCK load into this file")
	fs.DurationVar(&c.profileDur, "profile-seconds", 5*time.Second, "length of the -profile capture")
	if err := fs.Parse(argv); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.seeds = benchkit.SplitList(c.upstream)
	switch {
	case len(c.seeds) == 0:
		return c, errors.New("-upstream must name at least one node")
	case c.rounds < 1 || c.clients < 1 || c.contRounds < 2 || c.contClients < 1 || c.resources < 1 || c.ttlMS < 1:
		return c, errors.New("-rounds, -clients, -contended-clients, -resources and -ttl-ms must be positive, -contended-rounds at least 2")
	case c.duration <= 0 || c.contTimeout <= 0 || c.poll <= 0 || c.opTimeout <= 0 || c.profileDur <= 0 || c.warmup < 0:
		return c, errors.New("durations must be positive")
	case c.duration > 10*time.Minute || c.profileDur > 5*time.Minute:
		return c, errors.New("-duration is at most 10m, -profile-seconds at most 5m")
	case c.proxyClient != "rueidis" && c.proxyClient != "goredis":
		return c, fmt.Errorf("-proxy-client: %q is not rueidis or goredis", c.proxyClient)
	}
	return c, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "lockbench: "+format+"\n", args...)
}

// ---------------------------------------------------------------------------------------------
// Process and machine accounting from /proc.

// cpuSample is one reading of the counters a cell reports per pair.
type cpuSample struct {
	proxy, self, machine       time.Duration
	proxyOK, selfOK, machineOK bool
	// The proxy's read- and write-family system calls (/proc/PID/io syscr, syscw).
	syscr, syscw uint64
	ioOK         bool
}

func sampleCPU(proxyPID int) cpuSample {
	var s cpuSample
	if proxyPID > 0 {
		s.proxy, s.proxyOK = benchkit.ProcCPU(proxyPID)
		s.syscr, s.syscw, s.ioOK = benchkit.ProcIO(proxyPID)
	}
	s.self, s.selfOK = benchkit.SelfCPU()
	s.machine, s.machineOK = benchkit.MachineBusy()
	return s
}

// ---------------------------------------------------------------------------------------------
// The proxies under test.

// startProxy starts a proxy named name whose config file (in dir) sets locks.replicas.
func startProxy(ctx context.Context, c config, dir, name, replicas string) (*benchkit.Proxy, error) {
	cfgPath := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfgPath, []byte("locks:\n  replicas: "+replicas+"\n"), 0o600); err != nil {
		return nil, err
	}
	return benchkit.StartProxy(ctx, benchkit.ProxyOptions{Bin: c.proxyBin, Upstream: c.upstream, Config: cfgPath,
		Pprof: c.profile != "", Name: name, Logf: logf})
}

// ---------------------------------------------------------------------------------------------
// Lock clients: one interface over the direct scripts and the proxy's commands.

type lockClient interface {
	// lock tries once (waitMS 0) or waits up to waitMS: the token, or ok false when not acquired.
	lock(ctx context.Context, res string, waitMS int) (token string, ok bool, err error)
	// unlock releases: true when the token held it.
	unlock(ctx context.Context, res, token string) (bool, error)
	close()
}

var errNoReplicas = errors.New("NOREPLICAS: fewer replicas acknowledged the acquisition than asked")

// tokenSource makes tokens unique per run and per client, as the proxy's are.
type tokenSource struct {
	prefix []byte
	n      uint64
	buf    []byte
}

func newTokenSource(run string, client int) *tokenSource {
	return &tokenSource{prefix: []byte("lb" + run + "-" + strconv.Itoa(client) + ":")}
}

func (t *tokenSource) next() string {
	t.n++
	t.buf = append(t.buf[:0], t.prefix...)
	t.buf = strconv.AppendUint(t.buf, t.n, 10)
	return string(t.buf)
}

// directClient runs the proxy's own scripts through a shared rueidis cluster client.
type directClient struct {
	c         rueidis.Client
	lockLua   *rueidis.Lua
	unlockLua *rueidis.Lua
	prefix    string
	ttl       string
	tokens    *tokenSource
	// waitReplicas > 0: the lock script and WAIT go pipelined on a dedicated connection.
	waitReplicas int
	waitMS       int
	keyBuf       []byte
	// own: the client is this directClient's alone (the per-client cell), closed with it.
	own bool
	// nx: acquire with SET key token NX PX ttl instead of the lock script, as the proxy does
	// for a LOCK without FENCE, TOKEN or WAIT.
	nx    bool
	ttlMS int64
}

func (d *directClient) keys(res string) (lockKey, fenceKey string) {
	d.keyBuf = commands.LockKey(d.keyBuf[:0], d.prefix, []byte(res))
	lockKey = string(d.keyBuf)
	d.keyBuf = commands.FenceKey(d.keyBuf[:0], d.prefix, cluster.SlotOfString(res))
	return lockKey, string(d.keyBuf)
}

// parseLockScript reads the lock script's {1, fence} or {0, pttl}.
func parseLockScript(r rueidis.RedisResult) (bool, error) {
	arr, err := r.ToArray()
	if err != nil {
		return false, err
	}
	if len(arr) != 2 {
		return false, fmt.Errorf("lock script: %d-element reply", len(arr))
	}
	flag, err := arr[0].AsInt64()
	if err != nil {
		return false, err
	}
	return flag == 1, nil
}

func (d *directClient) lock(ctx context.Context, res string, waitMS int) (string, bool, error) {
	if waitMS > 0 {
		return "", false, errors.New("direct client: waiting is done by polling in the caller")
	}
	lk, fk := d.keys(res)
	token := d.tokens.next()
	if d.nx {
		err := d.c.Do(ctx, d.c.B().Set().Key(lk).Value(token).Nx().PxMilliseconds(d.ttlMS).Build()).Error()
		if rueidis.IsRedisNil(err) {
			return token, false, nil
		}
		return token, err == nil, err
	}
	if d.waitReplicas == 0 {
		ok, err := parseLockScript(d.lockLua.Exec(ctx, d.c, []string{lk, fk}, []string{token, d.ttl, "0"}))
		return token, ok, err
	}
	var ok bool
	var acked int64
	err := d.c.Dedicated(func(dc rueidis.DedicatedClient) error {
		wait := dc.B().Wait().Numreplicas(int64(d.waitReplicas)).Timeout(int64(d.waitMS)).Build()
		rs := dc.DoMulti(ctx,
			dc.B().Evalsha().Sha1(commands.ScriptLock.SHA).Numkeys(2).Key(lk, fk).Arg(token, d.ttl, "0").Build(), wait)
		if re, isRE := rueidis.IsRedisErr(rs[0].Error()); isRE && re.IsNoScript() {
			rs = dc.DoMulti(ctx,
				dc.B().Eval().Script(commands.ScriptLock.Body).Numkeys(2).Key(lk, fk).Arg(token, d.ttl, "0").Build(),
				dc.B().Wait().Numreplicas(int64(d.waitReplicas)).Timeout(int64(d.waitMS)).Build())
		}
		var err error
		if ok, err = parseLockScript(rs[0]); err != nil {
			return err
		}
		acked, err = rs[1].AsInt64()
		return err
	})
	if err != nil {
		return "", false, err
	}
	if ok && acked < int64(d.waitReplicas) {
		// Not durable enough: give it back, as the proxy does.
		_, _ = d.unlock(ctx, res, token)
		return "", false, errNoReplicas
	}
	return token, ok, nil
}

func (d *directClient) unlock(ctx context.Context, res, token string) (bool, error) {
	lk, _ := d.keys(res)
	n, err := d.unlockLua.Exec(ctx, d.c, []string{lk}, []string{token}).AsInt64()
	return n == 1, err
}

func (d *directClient) close() {
	if d.own {
		d.c.Close()
	}
}

// rueidisProxy is one client of the proxy: a rueidis standalone client on one connection.
type rueidisProxy struct {
	c   rueidis.Client
	ttl string
}

func newRueidisProxy(addr string, ttl string) (*rueidisProxy, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{addr},
		ForceSingleClient: true,
		DisableCache:      true,
		// The proxy answers HELLO 3 with NOPROTO, as a RESP2-only server does.
		AlwaysRESP2: true,
		Dialer:      net.Dialer{Timeout: 5 * time.Second},
	})
	if err != nil {
		return nil, err
	}
	return &rueidisProxy{c: c, ttl: ttl}, nil
}

func (p *rueidisProxy) lock(ctx context.Context, res string, waitMS int) (string, bool, error) {
	cmd := p.c.B().Arbitrary("LOCK").Args(res, "PX", p.ttl)
	if waitMS > 0 {
		cmd = cmd.Args("WAIT", strconv.Itoa(waitMS))
	}
	tok, err := p.c.Do(ctx, cmd.Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return tok, true, nil
}

func (p *rueidisProxy) unlock(ctx context.Context, res, token string) (bool, error) {
	n, err := p.c.Do(ctx, p.c.B().Arbitrary("UNLOCK").Args(res, token).Build()).AsInt64()
	return n == 1, err
}

func (p *rueidisProxy) close() { p.c.Close() }

// sharedProxy is one goroutine's view of a rueidis client shared by all; the owner closes it.
type sharedProxy struct {
	*rueidisProxy
	owner bool
}

func (p *sharedProxy) close() {
	if p.owner {
		p.rueidisProxy.close()
	}
}

// goredisProxy is one client of the proxy: a go-redis client with a pool of one connection.
type goredisProxy struct {
	c   *redis.Client
	ttl string
}

func newGoredisProxy(addr string, ttl string, opTimeout time.Duration) *goredisProxy {
	return &goredisProxy{ttl: ttl, c: redis.NewClient(&redis.Options{
		Addr:            addr,
		Protocol:        2,
		DisableIdentity: true,
		PoolSize:        1,
		MaxRetries:      -1, // a retried LOCK could take a second lock
		DialTimeout:     5 * time.Second,
		ReadTimeout:     opTimeout, // above the contended WAIT
		WriteTimeout:    5 * time.Second,
	})}
}

func (p *goredisProxy) lock(ctx context.Context, res string, waitMS int) (string, bool, error) {
	var tok string
	var err error
	if waitMS > 0 {
		tok, err = p.c.Do(ctx, "LOCK", res, "PX", p.ttl, "WAIT", waitMS).Text()
	} else {
		tok, err = p.c.Do(ctx, "LOCK", res, "PX", p.ttl).Text()
	}
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return tok, true, nil
}

func (p *goredisProxy) unlock(ctx context.Context, res, token string) (bool, error) {
	n, err := p.c.Do(ctx, "UNLOCK", res, token).Int64()
	return n == 1, err
}

func (p *goredisProxy) close() { _ = p.c.Close() }

// ---------------------------------------------------------------------------------------------
// Cells.

type cellKind int

const (
	cellDirect cellKind = iota
	cellDirectWait
	cellProxy0
	cellProxyAuto
	cellProxy0Shared // one rueidis client shared by every goroutine: auto-pipelined
	// cellDirectConn: the direct scripts, but every goroutine has a rueidis cluster client of
	// its own (one connection per node): the proxy cells' client shape without the proxy.
	cellDirectConn
	// cellDirectNX: the shared direct client, acquiring with SET NX PX as the proxy does.
	cellDirectNX
)

type cell struct {
	name string
	kind cellKind
	px   *benchkit.Proxy // nil for direct cells
}

// env is what every cell needs.
type env struct {
	c      config
	run    string // random id: resources and tokens of this run
	direct rueidis.Client
}

// newClient makes client i of a cell.
func (e *env) newClient(cl cell, i int) (lockClient, error) {
	ttl := strconv.Itoa(e.c.ttlMS)
	switch cl.kind {
	case cellDirect, cellDirectWait, cellDirectConn, cellDirectNX:
		d := &directClient{c: e.direct, nx: cl.kind == cellDirectNX, ttlMS: int64(e.c.ttlMS), prefix: e.c.keyPrefix, ttl: ttl, tokens: newTokenSource(e.run, i),
			lockLua: rueidis.NewLuaScript(commands.ScriptLock.Body), unlockLua: rueidis.NewLuaScript(commands.ScriptUnlock.Body)}
		if cl.kind == cellDirectWait {
			d.waitReplicas, d.waitMS = 1, e.c.replicaWaitMS
		}
		if cl.kind == cellDirectConn {
			c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: e.c.seeds, DisableCache: true})
			if err != nil {
				return nil, err
			}
			d.c, d.own = c, true
		}
		return d, nil
	default:
		if e.c.proxyClient == "goredis" {
			return newGoredisProxy(cl.px.Addr, ttl, e.c.opTimeout), nil
		}
		return newRueidisProxy(cl.px.Addr, ttl)
	}
}

func (e *env) newClients(ctx context.Context, cl cell, n int) ([]lockClient, error) {
	clients := make([]lockClient, 0, n)
	if cl.kind == cellProxy0Shared {
		// One client: the pipeline is shared, each goroutine its own view.
		rp, err := newRueidisProxy(cl.px.Addr, strconv.Itoa(e.c.ttlMS))
		if err != nil {
			return nil, fmt.Errorf("%s client: %w", cl.name, err)
		}
		for i := 0; i < n; i++ {
			clients = append(clients, &sharedProxy{rueidisProxy: rp, owner: i == 0})
		}
		n = 0
	}
	for i := 0; i < n; i++ {
		lc, err := e.newClient(cl, i)
		if err != nil {
			closeAll(clients)
			return nil, fmt.Errorf("%s client %d: %w", cl.name, i, err)
		}
		clients = append(clients, lc)
	}
	// Connect (and load scripts) before the clock starts: one UNLOCK of a free resource each.
	for i, lc := range clients {
		cctx, cancel := context.WithTimeout(ctx, e.c.opTimeout)
		_, err := lc.unlock(cctx, "lockbench:"+e.run+":connect", "none")
		cancel()
		if err != nil {
			closeAll(clients)
			return nil, fmt.Errorf("%s client %d: first command: %w", cl.name, i, err)
		}
	}
	return clients, nil
}

func closeAll(cs []lockClient) {
	for _, c := range cs {
		c.close()
	}
}

// tputResult is one throughput cell of one round.
type tputResult struct {
	pairs, notAcquired, errs int64
	firstErr                 string
	elapsed                  time.Duration
	rate                     float64 // pairs per second
	p50, p99                 float64 // pair latency, ms
	proxyUS, selfUS, machUS  float64 // CPU per pair, µs
	proxyReads, proxyWrites  float64 // the proxy's system calls per pair (client and upstream sides)
}

func (e *env) throughput(ctx context.Context, cl cell, d time.Duration) (tputResult, error) {
	var res tputResult
	clients, err := e.newClients(ctx, cl, e.c.clients)
	if err != nil {
		return res, err
	}
	defer closeAll(clients)
	pid := 0
	if cl.px != nil {
		pid = cl.px.PID()
	}
	// Every command is bounded by the cell's end plus -op-timeout.
	cctx, cancel := context.WithTimeout(ctx, d+e.c.opTimeout)
	defer cancel()
	var (
		pairs, notAcq, errs atomic.Int64
		errOnce             sync.Once
		wg                  sync.WaitGroup
		lats                = make([][]time.Duration, len(clients))
		startGate           = make(chan struct{})
	)
	before := sampleCPU(pid)
	start := time.Now()
	end := start.Add(d)
	for i, lc := range clients {
		wg.Add(1)
		go func(i int, lc lockClient) {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(start.UnixNano()), uint64(i)))
			prefix := "lockbench:" + e.run + ":"
			lat := make([]time.Duration, 0, 4096)
			fail := func(err error) {
				errs.Add(1)
				errOnce.Do(func() { res.firstErr = err.Error() })
				// Do not spin on a fast failure.
				time.Sleep(time.Millisecond)
			}
			<-startGate
			for time.Now().Before(end) && cctx.Err() == nil {
				r := prefix + strconv.Itoa(rng.IntN(e.c.resources))
				t0 := time.Now()
				tok, ok, err := lc.lock(cctx, r, 0)
				if err != nil {
					fail(err)
					continue
				}
				if !ok {
					notAcq.Add(1)
					continue
				}
				released, err := lc.unlock(cctx, r, tok)
				if err != nil {
					fail(err)
					continue
				}
				if !released {
					fail(errors.New("UNLOCK of a lock just taken answered 0"))
					continue
				}
				lat = append(lat, time.Since(t0))
				pairs.Add(1)
			}
			lats[i] = lat
		}(i, lc)
	}
	close(startGate)
	wg.Wait()
	res.elapsed = time.Since(start)
	after := sampleCPU(pid)
	res.pairs, res.notAcquired, res.errs = pairs.Load(), notAcq.Load(), errs.Load()
	res.rate = float64(res.pairs) / res.elapsed.Seconds()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	res.p50, res.p99 = pctMS(all, 50), pctMS(all, 99)
	res.proxyUS = benchkit.MicrosPer(before.proxy, after.proxy, before.proxyOK && after.proxyOK, res.pairs)
	res.selfUS = benchkit.MicrosPer(before.self, after.self, before.selfOK && after.selfOK, res.pairs)
	res.machUS = benchkit.MicrosPer(before.machine, after.machine, before.machineOK && after.machineOK, res.pairs)
	ioOK := before.ioOK && after.ioOK
	res.proxyReads = benchkit.CountPer(before.syscr, after.syscr, ioOK, res.pairs)
	res.proxyWrites = benchkit.CountPer(before.syscw, after.syscw, ioOK, res.pairs)
	if cl.px != nil && !cl.px.Alive() {
		return res, fmt.Errorf("proxy %s exited: %v", cl.px.Name, cl.px.Err())
	}
	return res, ctx.Err()
}

// pctMS is the nearest-rank percentile of ds in milliseconds (sorts ds).
func pctMS(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return math.NaN()
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	k := int(math.Ceil(p/100*float64(len(ds)))) - 1
	k = max(0, min(k, len(ds)-1))
	return float64(ds[k]) / float64(time.Millisecond)
}

// contResult is one contended run.
type contResult struct {
	acquired         int
	total            time.Duration
	handoffs         []time.Duration
	p50, p99, maxMS  float64
	inverted         int // next LOCK reply seen before the previous UNLOCK reply (counted as 0)
	errs             int64
	firstErr         string
	self             int             // consecutive acquisitions by the same client (only with -contended-barge)
	failed           int64           // tries that found the lock held (polls), or WAITs that ran out
	waits            []time.Duration // per acquisition: from the client's first try to the lock
	waitP50, waitP99 float64
}

// contended runs until target acquisitions of one resource, -contended-clients at once.
func (e *env) contended(ctx context.Context, cl cell, target int, round int) (contResult, error) {
	var res contResult
	clients, err := e.newClients(ctx, cl, e.c.contClients)
	if err != nil {
		return res, err
	}
	defer closeAll(clients)
	cctx, cancel := context.WithTimeout(ctx, e.c.contTimeout)
	defer cancel()
	hot := "lockbench:" + e.run + ":hot:" + strconv.Itoa(round) + ":" + cl.name
	waitMS := 10000
	polling := cl.kind == cellDirect || cl.kind == cellDirectWait
	if polling {
		waitMS = 0
	}
	var (
		mu        sync.Mutex
		moved     = sync.NewCond(&mu) // broadcast at every acquisition, when a client is done, and at the run's end
		next      int
		active    = len(clients) // clients with acquisitions still to make
		acq       = make([]time.Time, target)
		rel       = make([]time.Time, target)
		holder    = make([]int, target)
		waits     = make([]time.Duration, target)
		errs      atomic.Int64
		failed    atomic.Int64
		errOnce   sync.Once
		wg        sync.WaitGroup
		startGate = make(chan struct{})
	)
	stopWake := context.AfterFunc(cctx, func() {
		mu.Lock()
		moved.Broadcast()
		mu.Unlock()
	})
	defer stopWake()
	start := time.Now()
	for id, lc := range clients {
		// Every client makes its share of the acquisitions: a client that is never served shows
		// up in the wait times and the total, instead of being left out of them.
		quota := target / len(clients)
		if id < target%len(clients) {
			quota++
		}
		wg.Add(1)
		go func(id, quota int, lc lockClient) {
			defer wg.Done()
			defer func() {
				mu.Lock()
				active--
				moved.Broadcast()
				mu.Unlock()
			}()
			<-startGate
			var want time.Time // the first try of the acquisition being sought
			for mine := 0; mine < quota && cctx.Err() == nil; {
				if want.IsZero() {
					want = time.Now()
				}
				tok, ok, err := lc.lock(cctx, hot, waitMS)
				t := time.Now()
				if err != nil {
					errs.Add(1)
					errOnce.Do(func() { res.firstErr = err.Error() })
					sleepCtx(cctx, time.Millisecond)
					continue
				}
				if !ok {
					failed.Add(1)
					if polling {
						sleepCtx(cctx, e.c.poll)
					}
					continue
				}
				mine++
				mu.Lock()
				k := next
				next++
				if k < target {
					acq[k], holder[k], waits[k] = t, id, t.Sub(want)
				}
				moved.Broadcast()
				mu.Unlock()
				want = time.Time{}
				released, err := lc.unlock(cctx, hot, tok)
				if k < target {
					rel[k] = time.Now()
				}
				if err == nil && !released {
					err = errors.New("UNLOCK of a held lock answered 0")
				}
				if err != nil {
					errs.Add(1)
					errOnce.Do(func() { res.firstErr = err.Error() })
				}
				if !e.c.contBarge && mine < quota {
					// Hand over: try again only once another client has taken the lock (or
					// every other client is done).
					mu.Lock()
					for next <= k+1 && active > 1 && cctx.Err() == nil {
						moved.Wait()
					}
					mu.Unlock()
				}
			}
		}(id, quota, lc)
	}
	close(startGate)
	wg.Wait()
	res.errs, res.failed = errs.Load(), failed.Load()
	res.acquired = min(next, target)
	if res.acquired > 0 {
		res.total = rel[res.acquired-1].Sub(start)
	}
	for k := 1; k < res.acquired; k++ {
		if holder[k] == holder[k-1] {
			res.self++
		}
		h := acq[k].Sub(rel[k-1])
		if h < 0 {
			res.inverted++
			h = 0
		}
		res.handoffs = append(res.handoffs, h)
	}
	hs := append([]time.Duration(nil), res.handoffs...)
	res.p50, res.p99 = pctMS(hs, 50), pctMS(hs, 99)
	res.maxMS = pctMS(hs, 100)
	res.waits = append([]time.Duration(nil), waits[:res.acquired]...)
	ws := append([]time.Duration(nil), res.waits...)
	res.waitP50, res.waitP99 = pctMS(ws, 50), pctMS(ws, 99)
	if cl.px != nil && !cl.px.Alive() {
		return res, fmt.Errorf("proxy %s exited: %v", cl.px.Name, cl.px.Err())
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if res.acquired < target {
		return res, fmt.Errorf("%s: only %d of %d acquisitions within %s (%d errors, first: %s)",
			cl.name, res.acquired, target, e.c.contTimeout, res.errs, res.firstErr)
	}
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// ---------------------------------------------------------------------------------------------
// The run.

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// topology summarises CLUSTER NODES as "3 primaries + 3 replicas (shard of 127.0.0.1:7204: 1 replica, ...)".
func topology(ctx context.Context, c rueidis.Client) (string, int, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := c.Do(cctx, c.B().ClusterNodes().Build()).ToString()
	if err != nil {
		return "", 0, err
	}
	// RESP3 sends it as a verbatim string, which keeps its "txt:" format prefix here.
	s = strings.TrimPrefix(s, "txt:")
	type node struct{ id, addr string }
	var primaries []node
	replicas := map[string]int{}
	nrep := 0
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || hasFlag(f[2], "fail") || hasFlag(f[2], "handshake") || hasFlag(f[2], "noaddr") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		switch {
		case strings.Contains(f[2], "master") && len(f) > 8:
			primaries = append(primaries, node{f[0], addr})
		case strings.Contains(f[2], "slave"):
			replicas[f[3]]++
			nrep++
		}
	}
	sort.Slice(primaries, func(i, j int) bool { return primaries[i].addr < primaries[j].addr })
	minRep := math.MaxInt
	var parts []string
	for _, p := range primaries {
		parts = append(parts, fmt.Sprintf("%s: %d", p.addr, replicas[p.id]))
		minRep = min(minRep, replicas[p.id])
	}
	if len(primaries) == 0 {
		minRep = 0
	}
	return fmt.Sprintf("%d primaries + %d replicas (replicas per primary: %s)", len(primaries), nrep, strings.Join(parts, ", ")), minRep, nil
}

func hasFlag(flags, flag string) bool {
	for _, f := range strings.Split(flags, ",") {
		if f == flag {
			return true
		}
	}
	return false
}

type roundResult struct {
	order  []string
	tput   map[string]tputResult
	cont   map[string]contResult
	corder []string
}

func run(ctx context.Context, argv []string) error {
	c, err := parseFlags(argv)
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.proxyBin); err != nil {
		return fmt.Errorf("-proxy-bin: %w (build it with: go build -o bin/valkey-lock-proxy .)", err)
	}
	started := time.Now()
	loadStart := benchkit.LoadAvg()

	direct, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: c.seeds, DisableCache: true})
	if err != nil {
		return fmt.Errorf("direct rueidis cluster client: %w", err)
	}
	defer direct.Close()
	topo, minRep, err := topology(ctx, direct)
	if err != nil {
		return fmt.Errorf("CLUSTER NODES: %w", err)
	}
	logf("cluster: %s", topo)
	if c.directWait && minRep < 1 {
		logf("a shard has no replica: the direct+WAIT cell will answer NOREPLICAS there")
	}

	dir, err := os.MkdirTemp("", "lockbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	px0, err := startProxy(ctx, c, dir, "r0", "0")
	if err != nil {
		return err
	}
	defer px0.Stop()
	pxAuto, err := startProxy(ctx, c, dir, "auto", "auto")
	if err != nil {
		return err
	}
	defer pxAuto.Stop()
	logf("proxy replicas 0: pid %d on %s; replicas auto: pid %d on %s", px0.PID(), px0.Addr, pxAuto.PID(), pxAuto.Addr)

	e := &env{c: c, run: randomID(), direct: direct}
	cells := []cell{{name: "direct", kind: cellDirect}}
	if c.directWait {
		cells = append(cells, cell{name: "direct+WAIT", kind: cellDirectWait})
	}
	if c.connCell {
		cells = append(cells, cell{name: "direct per-client", kind: cellDirectConn})
	}
	if c.nxCell {
		cells = append(cells, cell{name: "direct NX", kind: cellDirectNX})
	}
	cells = append(cells, cell{name: "proxy r0", kind: cellProxy0, px: px0}, cell{name: "proxy auto", kind: cellProxyAuto, px: pxAuto})
	if c.sharedCell {
		cells = append(cells, cell{name: "proxy r0 shared", kind: cellProxy0Shared, px: px0})
	}
	contCells := []cell{
		{name: "proxy r0", kind: cellProxy0, px: px0},
		{name: "proxy auto", kind: cellProxyAuto, px: pxAuto},
		{name: "direct poll", kind: cellDirect},
	}

	if c.warmup > 0 {
		logf("warm-up: %s of every cell", c.warmup)
		for _, cl := range cells {
			r, err := e.throughput(ctx, cl, c.warmup)
			if err != nil {
				return fmt.Errorf("warm-up %s: %w", cl.name, err)
			}
			logf("warm-up %-11s %8.0f pairs/s (%d errors%s)", cl.name, r.rate, r.errs, errNote(r.firstErr))
		}
	}

	var rounds []roundResult
	for r := 0; r < c.rounds; r++ {
		rr := roundResult{tput: map[string]tputResult{}, cont: map[string]contResult{}}
		order := append([]cell(nil), cells...)
		corder := append([]cell(nil), contCells...)
		if r%2 == 1 {
			reverse(order)
			reverse(corder)
		}
		for _, cl := range order {
			res, err := e.throughput(ctx, cl, c.duration)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", r+1, cl.name, err)
			}
			rr.order = append(rr.order, cl.name)
			rr.tput[cl.name] = res
			logf("round %d/%d %-11s %8.0f pairs/s  p50 %s p99 %s ms  proxy %s µs/pair (%s reads %s writes)  this process %s µs/pair  not acquired %d  errors %d%s",
				r+1, c.rounds, cl.name, res.rate, benchkit.Num(res.p50, 2), benchkit.Num(res.p99, 2),
				benchkit.Num(res.proxyUS, 1), benchkit.Num(res.proxyReads, 2), benchkit.Num(res.proxyWrites, 2),
				benchkit.Num(res.selfUS, 1),
				res.notAcquired, res.errs, errNote(res.firstErr))
		}
		for _, cl := range corder {
			res, err := e.contended(ctx, cl, c.contRounds, r)
			if err != nil {
				return fmt.Errorf("round %d contended %s: %w", r+1, cl.name, err)
			}
			rr.corder = append(rr.corder, cl.name)
			rr.cont[cl.name] = res
			logf("round %d/%d contended %-11s total %s ms  handoff p50 %s p99 %s max %s ms  wait p50 %s p99 %s ms  failed tries %d  inverted %d  same client %d  errors %d%s",
				r+1, c.rounds, cl.name, benchkit.Num(ms(res.total), 1),
				benchkit.Num(res.p50, 3), benchkit.Num(res.p99, 3), benchkit.Num(res.maxMS, 3),
				benchkit.Num(res.waitP50, 2), benchkit.Num(res.waitP99, 2),
				res.failed, res.inverted, res.self, res.errs, errNote(res.firstErr))
		}
		rounds = append(rounds, rr)
	}

	var profileTop string
	if c.profile != "" {
		profileTop, err = captureProfile(ctx, e, cells)
		if err != nil {
			return err
		}
	}
	px0.Stop()
	pxAuto.Stop()

	report := buildReport(c, argv, topo, px0, cells, contCells, rounds, started, loadStart, profileTop)
	return benchkit.WriteReport(report, c.out, logf)
}

func errNote(s string) string {
	if s == "" {
		return ""
	}
	return "; first error: " + s
}

func reverse[T any](s []T) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// captureProfile keeps the replicas-0 proxy cell's load running while it fetches a CPU profile.
func captureProfile(ctx context.Context, e *env, cells []cell) (string, error) {
	var cl cell
	for _, x := range cells {
		if x.kind == cellProxy0 {
			cl = x
		}
	}
	c := e.c
	logf("profile: %s of proxy %s under %d-client LOCK+UNLOCK load", c.profileDur, cl.name, c.clients)
	type got struct {
		res tputResult
		err error
	}
	ch := make(chan got, 1)
	go func() {
		r, err := e.throughput(ctx, cl, c.profileDur+2*time.Second)
		ch <- got{r, err}
	}()
	// Let the clients connect and the load settle before sampling.
	sleepCtx(ctx, 500*time.Millisecond)
	body, err := cl.px.CPUProfile(ctx, c.profileDur)
	g := <-ch
	if err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	if g.err != nil {
		return "", fmt.Errorf("profile load: %w", g.err)
	}
	if err := os.WriteFile(c.profile, body, 0o644); err != nil {
		return "", err
	}
	logf("profile written to %s (load: %.0f pairs/s, proxy %s µs/pair)", c.profile, g.res.rate,
		benchkit.Num(g.res.proxyUS, 1))
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(pctx, "go", "tool", "pprof", "-top", "-nodecount=40", c.proxyBin, c.profile).Output()
	if err != nil {
		return fmt.Sprintf("(go tool pprof failed: %v)", err), nil
	}
	return fmt.Sprintf("load during the profile: %.0f pairs/s, proxy %s µs/pair\n\n%s", g.res.rate,
		benchkit.Num(g.res.proxyUS, 1), out), nil
}

// ---------------------------------------------------------------------------------------------
// Report.

func buildReport(c config, argv []string, topo string, px *benchkit.Proxy, cells, contCells []cell, rounds []roundResult,
	started time.Time, loadStart, profileTop string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	tp := func(name string, f func(tputResult) float64) float64 {
		xs := make([]float64, len(rounds))
		for i, r := range rounds {
			xs[i] = f(r.tput[name])
		}
		return benchkit.Median(xs)
	}
	ct := func(name string, f func(contResult) float64) float64 {
		xs := make([]float64, len(rounds))
		for i, r := range rounds {
			xs[i] = f(r.cont[name])
		}
		return benchkit.Median(xs)
	}
	clientDesc := "rueidis v1.0.79 standalone (ForceSingleClient, DisableCache, AlwaysRESP2), one client and connection per goroutine"
	if c.proxyClient == "goredis" {
		clientDesc = "go-redis v9 (Protocol 2, PoolSize 1, MaxRetries -1), one client and connection per goroutine"
	}

	w("# valkey-lock-proxy lock benchmark\n\n")
	w("Command: `go run ./integration/cmd/lockbench %s`\n\n", benchkit.ShellQuote(argv))
	mach := benchkit.Machine()
	w("- machine: %d CPUs (nproc), %s, kernel %s, load average before %s, after %s\n",
		mach.CPUs, mach.Model, mach.Kernel, loadStart, mach.LoadAvg)
	w("- date: %s to %s (UTC)\n", started.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
	w("- proxy: %s (%s), started twice with `%s` plus a config file setting `locks.replicas` to 0 and to auto\n",
		c.proxyBin, benchkit.ProxyBuild(c.proxyBin), benchkit.ShellQuote(px.Args[2:])) // without --config FILE
	w("- cluster: %s, seeds %s; shared with other users, so numbers are noisy\n", topo, c.upstream)
	w("- lockbench: %s; direct client rueidis v1.0.79 cluster client (default options, DisableCache) shared by all goroutines; "+
		"\"direct per-client\": the same, but one cluster client (a connection per node) per goroutine, as the proxy cells' clients have; "+
		"\"direct NX\": the shared client acquiring with SET NX PX, as the proxy does for a plain LOCK\n", runtime.Version())
	w("- proxy clients: %s\n", clientDesc)
	w("- throughput cells: %d clients, %s each, %d rounds (order reversed every other round), resources drawn from %d, TTL %d ms; medians over rounds\n",
		c.clients, c.duration, c.rounds, c.resources, c.ttlMS)
	w("- contended: %d acquisitions of one resource by %d clients per run; proxy clients `LOCK hot PX %d WAIT 10000` then `UNLOCK hot <token>`; "+
		"direct poll tries the lock script every %s; every client makes an equal share of the acquisitions; %s\n\n",
		c.contRounds, c.contClients, c.ttlMS, c.poll, bargeDesc(c.contBarge))

	w("## LOCK+UNLOCK pairs per second (%d clients, random resources)\n\n", c.clients)
	w("| cell | pairs/s | vs direct | pair p50 ms | pair p99 ms | proxy CPU µs/pair | proxy reads+writes/pair | lockbench CPU µs/pair | machine CPU µs/pair | not acquired | errors |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	directRate := tp("direct", func(r tputResult) float64 { return r.rate })
	for _, cl := range cells {
		rate := tp(cl.name, func(r tputResult) float64 { return r.rate })
		var notAcq, errs int64
		for _, r := range rounds {
			notAcq += r.tput[cl.name].notAcquired
			errs += r.tput[cl.name].errs
		}
		proxyCPU, proxySys := "-", "-"
		if cl.px != nil {
			proxyCPU = benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.proxyUS }), 1)
			proxySys = benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.proxyReads }), 2) + " + " +
				benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.proxyWrites }), 2)
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", cl.name,
			benchkit.Num(rate, 0), benchkit.Num(rate/directRate, 2),
			benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.p50 }), 2),
			benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.p99 }), 2),
			proxyCPU, proxySys,
			benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.selfUS }), 1),
			benchkit.Num(tp(cl.name, func(r tputResult) float64 { return r.machUS }), 1),
			notAcq, errs)
	}
	w("\nPer round (pairs/s, in the order run):\n\n")
	w("| round | order | %s |\n", strings.Join(cellNames(cells), " | "))
	w("|---|---|%s\n", strings.Repeat("---:|", len(cells)))
	for i, r := range rounds {
		var vals []string
		for _, cl := range cells {
			vals = append(vals, benchkit.Num(r.tput[cl.name].rate, 0))
		}
		w("| %d | %s | %s |\n", i+1, strings.Join(r.order, " → "), strings.Join(vals, " | "))
	}

	w("\n## Contended: %d acquisitions of one resource, %d clients\n\n", c.contRounds, c.contClients)
	w("| mode | total ms | acquisitions/s | handoff p50 ms | handoff p99 ms | handoff p99 of all rounds ms | handoff max of all rounds ms | wait p50 ms | wait p99 ms | failed tries per acquisition | errors |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, cl := range contCells {
		var all []time.Duration
		var errs, failed int64
		for _, r := range rounds {
			all = append(all, r.cont[cl.name].handoffs...)
			errs += r.cont[cl.name].errs
			failed += r.cont[cl.name].failed
		}
		total := ct(cl.name, func(r contResult) float64 { return ms(r.total) })
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", cl.name, benchkit.Num(total, 1),
			benchkit.Num(float64(c.contRounds)/(total/1000), 0),
			benchkit.Num(ct(cl.name, func(r contResult) float64 { return r.p50 }), 3),
			benchkit.Num(ct(cl.name, func(r contResult) float64 { return r.p99 }), 3),
			benchkit.Num(pctMS(all, 99), 3),
			benchkit.Num(pctMS(all, 100), 3),
			benchkit.Num(ct(cl.name, func(r contResult) float64 { return r.waitP50 }), 2),
			benchkit.Num(ct(cl.name, func(r contResult) float64 { return r.waitP99 }), 2),
			benchkit.Num(float64(failed)/float64(len(rounds)*c.contRounds), 2), errs)
	}
	w("\nWait: from a client's first try (LOCK ... WAIT, or the first poll) to holding the lock, per acquisition: what a caller experiences; "+
		"with %d clients queued and hold ~0 it is about %d handoffs. ", c.contClients, c.contClients-1)
	w("Failed tries: lock script calls that found the lock held (direct poll: wasted round trips to Valkey), or LOCK WAITs that ran out (proxy). ")
	w("Handoff: from the UNLOCK reply to the previous holder to the LOCK reply to the next: medians over rounds of each run's p50 and p99, and the p99 and max of every round's handoffs together. ")
	w("Replies seen in the other order (both arrive together) count as 0: ")
	var inv []string
	for _, cl := range contCells {
		n := 0
		for _, r := range rounds {
			n += r.cont[cl.name].inverted
		}
		inv = append(inv, fmt.Sprintf("%s %d", cl.name, n))
	}
	w("%s of %d handoffs.", strings.Join(inv, ", "), len(rounds)*(c.contRounds-1))
	if c.contBarge {
		var self []string
		for _, cl := range contCells {
			n := 0
			for _, r := range rounds {
				n += r.cont[cl.name].self
			}
			self = append(self, fmt.Sprintf("%s %d", cl.name, n))
		}
		w(" Handoffs to the same client (the releaser barged in): %s.", strings.Join(self, ", "))
	}
	w("\n")

	w("\nPer round (total ms / handoff p99 ms / handoff max ms / wait p99 ms):\n\n")
	w("| round | order | %s |\n", strings.Join(cellNames(contCells), " | "))
	w("|---|---|%s\n", strings.Repeat("---:|", len(contCells)))
	for i, r := range rounds {
		var vals []string
		for _, cl := range contCells {
			x := r.cont[cl.name]
			vals = append(vals, benchkit.Num(ms(x.total), 1)+" / "+benchkit.Num(x.p99, 3)+" / "+
				benchkit.Num(x.maxMS, 3)+" / "+benchkit.Num(x.waitP99, 1))
		}
		w("| %d | %s | %s |\n", i+1, strings.Join(r.corder, " → "), strings.Join(vals, " | "))
	}
	w("\nCPU per pair: utime+stime from /proc/PID/stat before and after each cell (the proxy of the cell; this process, which holds " +
		"the load generator and, in direct cells, the rueidis client) and busy time of all CPUs from /proc/stat (every Valkey node and " +
		"other users' work included), divided by the pairs of the cell. " +
		"Proxy reads+writes: read- and write-family system calls of the proxy (/proc/PID/io syscr, syscw; client and upstream sides; epoll not counted) per pair.\n")
	if profileTop != "" {
		w("\n## CPU profile of the proxy (replicas 0) under load\n\n```\n%s\n```\n", strings.TrimRight(profileTop, "\n"))
	}
	return b.String()
}

func bargeDesc(barge bool) string {
	if barge {
		return "a client that released tries again at once (-contended-barge), so it may take the lock again itself"
	}
	return "a client that released tries again only after another client took the lock, so every handoff goes to another client"
}

func cellNames(cs []cell) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.name
	}
	return out
}
