// Command bench is the reproducible throughput benchmark of valkey-lock-proxy: SET and GET with
// valkey-benchmark, direct to a Valkey Cluster and through the proxy, interleaved in one run.
//
// For every round and every (test, pipeline) cell it runs valkey-benchmark twice back to back,
// once against the cluster (--cluster) and once against a proxy it started itself, alternating
// which goes first from round to round. It reports medians over the rounds, the proxy/direct
// ratios, and the CPU each process spent per request (from /proc/PID/stat), because on a small
// shared machine the ratio mostly measures CPU per request: the load generator, the proxy and
// every Valkey node compete for the same cores.
//
//	go build -o bin/valkey-lock-proxy . && go run ./integration/cmd/bench -rounds 3 -out /tmp/bench.md
//	go run ./integration/cmd/bench -rounds 1 -profile /tmp/bench-cpu.prof
//
// With -profile it also starts the proxy with --pprof, captures a 10 s CPU profile during an
// extra pipeline-1 SET+GET load through the proxy, writes it to the file and prints the top of
// `go tool pprof -top`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/integration/internal/benchkit"
)

type config struct {
	cluster    string
	proxyBin   string
	upstream   string
	benchBin   string
	rounds     int
	requests   int
	clients    int
	pipelines  []int
	tests      []string
	keyspace   int
	data       int
	seed       int64
	timeout    time.Duration
	retries    int
	prefill    bool
	warmup     int
	out        string
	profile    string
	profileDur time.Duration

	proxyConfig string
}

func main() { benchkit.Main("bench", run) }

func parseFlags(argv []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	defCluster, defUpstream := "127.0.0.1:7101", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
	if a := strings.Split(os.Getenv("VLP_CLUSTER_ADDRS"), ","); len(a) >= 3 {
		// As exported by integration/cluster.sh env (make bench).
		defCluster, defUpstream = a[0], strings.Join(a[:3], ",")
	}
	fs.StringVar(&c.cluster, "cluster", defCluster, "seed node host:port for direct runs (valkey-benchmark --cluster)")
	fs.StringVar(&c.proxyBin, "proxy-bin", "bin/valkey-lock-proxy", "proxy binary to start")
	fs.StringVar(&c.upstream, "upstream", defUpstream, "--upstream for the proxy")
	fs.StringVar(&c.proxyConfig, "proxy-config", "", "--config file for the proxy (event-loops: 0 measures the goroutine front end)")
	fs.StringVar(&c.benchBin, "valkey-benchmark", "valkey-benchmark", "valkey-benchmark binary")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds; each runs every cell direct and through the proxy")
	fs.IntVar(&c.requests, "requests", 100000, "requests per valkey-benchmark run (-n)")
	fs.IntVar(&c.clients, "clients", 50, "parallel clients (-c)")
	pipelines := fs.String("pipelines", "1,16", "comma-separated pipeline depths (-P)")
	tests := fs.String("tests", "set,get", "comma-separated valkey-benchmark tests (-t), one per run")
	fs.IntVar(&c.keyspace, "keyspace", 100000, "random key space (-r)")
	fs.IntVar(&c.data, "data", 16, "value size in bytes (-d)")
	fs.Int64Var(&c.seed, "seed", 1, "valkey-benchmark --seed base (round r uses seed+r, the same for direct and proxy); 0: time-based")
	fs.DurationVar(&c.timeout, "timeout", 120*time.Second, "bound on each valkey-benchmark run")
	fs.IntVar(&c.retries, "retries", 3, "times a failed measured run is retried (e.g. BUSY from someone else's script)")
	fs.BoolVar(&c.prefill, "prefill", true, "SET the whole key space directly before the rounds so GETs hit")
	fs.IntVar(&c.warmup, "warmup", 20000, "requests of an unmeasured SET+GET warm-up, direct and through the proxy (0: none)")
	fs.StringVar(&c.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&c.profile, "profile", "", "capture a CPU profile of the proxy under P1 SET+GET load into this file")
	fs.DurationVar(&c.profileDur, "profile-seconds", 10*time.Second, "length of the -profile capture")
	if err := fs.Parse(argv); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, p := range benchkit.SplitList(*pipelines) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			return c, fmt.Errorf("-pipelines: bad value %q", p)
		}
		c.pipelines = append(c.pipelines, n)
	}
	for _, t := range benchkit.SplitList(*tests) {
		c.tests = append(c.tests, strings.ToLower(t))
	}
	switch {
	case len(c.pipelines) == 0 || len(c.tests) == 0:
		return c, errors.New("-pipelines and -tests must not be empty")
	case c.rounds < 1 || c.requests < 1 || c.clients < 1 || c.keyspace < 1 || c.data < 1:
		return c, errors.New("-rounds, -requests, -clients, -keyspace and -data must be positive")
	case c.timeout <= 0 || c.profileDur <= 0:
		return c, errors.New("-timeout and -profile-seconds must be positive")
	}
	return c, nil
}

// ---------------------------------------------------------------------------------------------
// Process accounting from /proc.

// groupSample sums the /proc counters of several processes.
type groupSample struct {
	cpu          time.Duration // utime+stime, every thread, live and exited
	syscr, syscw uint64        // read- and write-family syscalls (read, readv, write, writev; not recvmsg, sendmsg or epoll)
	cpuOK, ioOK  bool
}

func readGroup(pids []int) groupSample {
	g := groupSample{cpuOK: len(pids) > 0, ioOK: len(pids) > 0}
	for _, pid := range pids {
		cpu, cpuOK := benchkit.ProcCPU(pid)
		r, w, ioOK := benchkit.ProcIO(pid)
		g.cpuOK = g.cpuOK && cpuOK
		g.ioOK = g.ioOK && ioOK
		g.cpu += cpu
		g.syscr += r
		g.syscw += w
	}
	return g
}

// perReq turns the difference of two samples into per-request figures (NaN when unknown).
func perReq(before, after groupSample, requests int) (cpuUS, reads, writes float64) {
	n := int64(requests)
	ioOK := before.ioOK && after.ioOK
	return benchkit.MicrosPer(before.cpu, after.cpu, before.cpuOK && after.cpuOK, n),
		benchkit.CountPer(before.syscr, after.syscr, ioOK, n),
		benchkit.CountPer(before.syscw, after.syscw, ioOK, n)
}

// ---------------------------------------------------------------------------------------------
// A minimal RESP client for PING, INFO and CLUSTER NODES.

type respConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRESP(addr string, timeout time.Duration) (*respConn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	return &respConn{c: c, r: bufio.NewReader(c)}, nil
}

func (rc *respConn) Close() { _ = rc.c.Close() }

func (rc *respConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(rc.c, b.String()); err != nil {
		return nil, err
	}
	return rc.read(0)
}

func (rc *respConn) read(depth int) (any, error) {
	if depth > 8 {
		return nil, errors.New("reply nested too deep")
	}
	line, err := rc.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("server error: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, 0, n)
		for i := 0; i < n; i++ {
			v, err := rc.read(depth + 1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

func command(addr string, args ...string) (string, error) {
	rc, err := dialRESP(addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	v, err := rc.do(args...)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: unexpected reply type %T", args[0], v)
	}
	return s, nil
}

func infoField(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), key+":"); ok {
			return v
		}
	}
	return ""
}

// ---------------------------------------------------------------------------------------------
// The cluster's processes.

type node struct {
	addr    string
	primary bool
	pid     int
}

type clusterInfo struct {
	version   string
	primaries []node
	replicas  []node
	pidNote   string // why Valkey CPU is not measured, when it is not
}

func (ci clusterInfo) pids(primary bool) []int {
	var out []int
	list := ci.replicas
	if primary {
		list = ci.primaries
	}
	for _, n := range list {
		if n.pid > 0 {
			out = append(out, n.pid)
		}
	}
	if len(out) != len(list) {
		return nil
	}
	return out
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// discoverCluster reads CLUSTER NODES from the seed and each node's process id, and checks that
// the id names a local valkey-server process (not one in another PID namespace or host).
func discoverCluster(seed string) (clusterInfo, error) {
	var ci clusterInfo
	info, err := command(seed, "INFO", "server")
	if err != nil {
		return ci, fmt.Errorf("INFO server on %s: %w", seed, err)
	}
	ci.version = infoField(info, "valkey_version")
	if ci.version == "" {
		ci.version = "redis " + infoField(info, "redis_version")
	}
	nodes, err := command(seed, "CLUSTER", "NODES")
	if err != nil {
		return ci, fmt.Errorf("CLUSTER NODES on %s: %w", seed, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		addr, _, _ = strings.Cut(addr, ",")
		flags := f[2]
		if strings.Contains(flags, "fail") || strings.Contains(flags, "noaddr") || strings.Contains(flags, "handshake") {
			continue
		}
		n := node{addr: addr, primary: strings.Contains(flags, "master")}
		if !n.primary && !strings.Contains(flags, "slave") {
			continue
		}
		if isLoopback(addr) {
			if info, err := command(addr, "INFO", "server"); err == nil {
				pid, _ := strconv.Atoi(infoField(info, "process_id"))
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				if c := string(comm); pid > 0 && (strings.Contains(c, "valkey") || strings.Contains(c, "redis")) {
					n.pid = pid
				}
			}
		}
		if n.pid == 0 && ci.pidNote == "" {
			ci.pidNote = fmt.Sprintf("no local process found for %s: Valkey CPU not measured", addr)
		}
		if n.primary {
			ci.primaries = append(ci.primaries, n)
		} else {
			ci.replicas = append(ci.replicas, n)
		}
	}
	sort.Slice(ci.primaries, func(i, j int) bool { return ci.primaries[i].addr < ci.primaries[j].addr })
	sort.Slice(ci.replicas, func(i, j int) bool { return ci.replicas[i].addr < ci.replicas[j].addr })
	if len(ci.primaries) == 0 {
		return ci, fmt.Errorf("CLUSTER NODES on %s lists no primary", seed)
	}
	return ci, nil
}

// discoverAny tries each seed in turn: the nodes named on the command line may have changed
// roles (someone else's failover test) or be briefly unreachable.
func discoverAny(seeds []string) (clusterInfo, error) {
	var firstErr error
	for _, seed := range seeds {
		ci, err := discoverCluster(seed)
		if err == nil {
			return ci, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return clusterInfo{}, firstErr
}

// topology names the primaries and their processes: a change during a run voids it.
func (ci clusterInfo) topology() string {
	var parts []string
	for _, n := range ci.primaries {
		parts = append(parts, fmt.Sprintf("%s/%d", n.addr, n.pid))
	}
	return strings.Join(parts, ",")
}

// checkHealthy reports an error unless every primary says cluster_state:ok.
func (ci clusterInfo) checkHealthy() error {
	for _, n := range ci.primaries {
		info, err := command(n.addr, "CLUSTER", "INFO")
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", n.addr, err)
		}
		if st := infoField(info, "cluster_state"); st != "ok" {
			return fmt.Errorf("%s reports cluster_state:%s", n.addr, st)
		}
	}
	return nil
}

// cmdStats sums INFO commandstats for one command over the primaries: calls, and failed plus
// rejected calls. ok is false when a node did not answer.
func (ci clusterInfo) cmdStats(cmd string) (calls, errs uint64, ok bool) {
	for _, n := range ci.primaries {
		info, err := command(n.addr, "INFO", "commandstats")
		if err != nil {
			return 0, 0, false
		}
		line := infoField(info, "cmdstat_"+strings.ToLower(cmd))
		for _, kv := range strings.Split(line, ",") {
			k, v, _ := strings.Cut(kv, "=")
			x, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "calls":
				calls += x
			case "failed_calls", "rejected_calls":
				errs += x
			}
		}
	}
	return calls, errs, true
}

// ---------------------------------------------------------------------------------------------
// valkey-benchmark runs.

type target struct {
	name    string // "direct" or "proxy"
	addr    string
	cluster bool
}

func benchArgs(c config, t target, test string, pipeline, requests int, seed int64) []string {
	host, port, _ := net.SplitHostPort(t.addr)
	args := []string{"-h", host, "-p", port}
	if t.cluster {
		args = append(args, "--cluster")
	}
	args = append(args, "-t", test, "-n", strconv.Itoa(requests), "-c", strconv.Itoa(c.clients),
		"-P", strconv.Itoa(pipeline), "-r", strconv.Itoa(c.keyspace), "-d", strconv.Itoa(c.data))
	if seed != 0 {
		args = append(args, "--seed", strconv.FormatInt(seed, 10))
	}
	return append(args, "--csv")
}

type benchOut struct {
	rps   map[string]float64 // by upper-case test name
	p50   map[string]float64
	p99   map[string]float64
	wall  time.Duration
	genUS float64 // valkey-benchmark's own CPU, µs
}

func runBench(ctx context.Context, c config, args []string) (benchOut, error) {
	out := benchOut{rps: map[string]float64{}, p50: map[string]float64{}, p99: map[string]float64{}}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.benchBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	out.wall = time.Since(start)
	if cmd.ProcessState != nil {
		out.genUS = float64(cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()) / float64(time.Microsecond)
	}
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s", c.timeout)
		}
		return out, fmt.Errorf("%s %s: %w: %s", c.benchBin, strings.Join(args, " "), err, benchkit.Tail(stderr.String()))
	}
	// In cluster mode valkey-benchmark prints the node list to stdout before the CSV.
	var rows []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(line, `"`) {
			rows = append(rows, line)
		}
	}
	recs, err := csv.NewReader(strings.NewReader(strings.Join(rows, "\n"))).ReadAll()
	if err != nil || len(recs) < 2 {
		return out, fmt.Errorf("unparsable valkey-benchmark output (%v): %s", err, benchkit.Tail(stdout.String()))
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	ri, ok := col["rps"]
	if !ok {
		return out, fmt.Errorf("no rps column in valkey-benchmark output: %q", recs[0])
	}
	for _, r := range recs[1:] {
		if len(r) <= ri {
			continue
		}
		v, err := strconv.ParseFloat(r[ri], 64)
		if err != nil {
			return out, fmt.Errorf("bad rps %q", r[ri])
		}
		out.rps[strings.ToUpper(r[0])] = v
		for name, m := range map[string]map[string]float64{"p50_latency_ms": out.p50, "p99_latency_ms": out.p99} {
			if pi, ok := col[name]; ok && len(r) > pi {
				if p, err := strconv.ParseFloat(r[pi], 64); err == nil {
					m[strings.ToUpper(r[0])] = p
				}
			}
		}
	}
	return out, nil
}

// sample is one measured run of one cell against one target.
type sample struct {
	rps, p50ms, p99ms    float64
	wall                 time.Duration
	genUS                float64 // load generator µs/request
	proxyUS              float64 // proxy µs/request (proxy runs)
	proxyR, proxyW       float64 // proxy read/write syscalls per request
	primUS, replUS       float64 // Valkey primaries / replicas µs/request
	primR, primW         float64
	proxyCoreUtilisation float64
	busyCores            float64 // whole machine, CPUs busy on average during the run
	otherCores           float64 // of which not the proxy, Valkey or valkey-benchmark
	executed             float64 // calls of the command counted by the primaries / requests
}

func nan() float64 { return math.NaN() }

func measure(ctx context.Context, c config, seeds []string, px *benchkit.Proxy, t target, test string, pipeline int, seed int64) (sample, error) {
	s := sample{proxyUS: nan(), proxyR: nan(), proxyW: nan(), proxyCoreUtilisation: nan(),
		busyCores: nan(), otherCores: nan(), executed: nan()}
	ci, err := discoverAny(seeds)
	if err != nil {
		return s, err
	}
	if err := ci.checkHealthy(); err != nil {
		return s, err
	}
	primPIDs, replPIDs := ci.pids(true), ci.pids(false)
	var proxyPIDs []int
	if t.name == "proxy" {
		proxyPIDs = []int{px.PID()}
	}
	callsBefore, errsBefore, statsOK := ci.cmdStats(test)
	mb, mbOK := benchkit.MachineBusy()
	pb, prb, rb := readGroup(proxyPIDs), readGroup(primPIDs), readGroup(replPIDs)
	out, err := runBench(ctx, c, benchArgs(c, t, test, pipeline, c.requests, seed))
	pa, pra, ra := readGroup(proxyPIDs), readGroup(primPIDs), readGroup(replPIDs)
	ma, maOK := benchkit.MachineBusy()
	callsAfter, errsAfter, statsOK2 := ci.cmdStats(test)
	if err != nil {
		return s, err
	}
	// Someone else's failover during the run voids it: valkey-benchmark --cluster follows
	// MOVED and CLUSTERDOWN and counts those replies as requests.
	ci2, err := discoverAny(seeds)
	if err != nil {
		return s, fmt.Errorf("after the run: %w", err)
	}
	if ci2.topology() != ci.topology() {
		return s, fmt.Errorf("cluster primaries changed during the run: %s -> %s", ci.topology(), ci2.topology())
	}
	if err := ci2.checkHealthy(); err != nil {
		return s, fmt.Errorf("after the run: %w", err)
	}
	name := strings.ToUpper(test)
	rps, ok := out.rps[name]
	if !ok {
		return s, fmt.Errorf("valkey-benchmark reported no %s line", name)
	}
	n := float64(c.requests)
	if statsOK && statsOK2 && callsAfter >= callsBefore {
		s.executed = float64(callsAfter-callsBefore) / n
		if s.executed < 0.999 {
			return s, fmt.Errorf("the primaries executed only %d of %d %s", callsAfter-callsBefore, c.requests, name)
		}
		if e := errsAfter - errsBefore; float64(e) > n/1000 {
			return s, fmt.Errorf("%d %s calls failed or were rejected during the run", e, name)
		}
	}
	s.rps, s.p50ms, s.p99ms, s.wall = rps, out.p50[name], out.p99[name], out.wall
	s.genUS = out.genUS / n
	if t.name == "proxy" {
		s.proxyUS, s.proxyR, s.proxyW = perReq(pb, pa, c.requests)
		if pb.cpuOK && pa.cpuOK && out.wall > 0 {
			s.proxyCoreUtilisation = float64(pa.cpu-pb.cpu) / float64(out.wall)
		}
	}
	s.primUS, s.primR, s.primW = perReq(prb, pra, c.requests)
	s.replUS, _, _ = perReq(rb, ra, c.requests)
	if mbOK && maOK && out.wall > 0 {
		busy := float64(ma - mb)
		s.busyCores = busy / float64(out.wall)
		known := out.genUS * float64(time.Microsecond)
		for _, us := range []float64{s.proxyUS, s.primUS, s.replUS} {
			if !math.IsNaN(us) {
				known += us * n * float64(time.Microsecond)
			}
		}
		s.otherCores = math.Max(0, busy-known) / float64(out.wall)
	}
	return s, nil
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report.

type cellKey struct {
	test     string
	pipeline int
}

type roundResult struct {
	round         int
	directFirst   bool
	direct, proxy sample
}

func pick(rs []roundResult, f func(roundResult) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func benchVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func run(ctx context.Context, argv []string) error {
	c, err := parseFlags(argv)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath(c.benchBin); err != nil {
		return fmt.Errorf("valkey-benchmark: %w", err)
	}
	if _, err := os.Stat(c.proxyBin); err != nil {
		return fmt.Errorf("-proxy-bin: %w (build it with: go build -o bin/valkey-lock-proxy .)", err)
	}
	seeds := append([]string{c.cluster}, benchkit.SplitList(c.upstream)...)
	ci, err := discoverAny(seeds)
	if err != nil {
		return err
	}
	started := time.Now()
	loadStart := benchkit.LoadAvg()

	px, err := benchkit.StartProxy(ctx, benchkit.ProxyOptions{
		Bin: c.proxyBin, Upstream: c.upstream, Config: c.proxyConfig, Pprof: c.profile != "", Logf: logf})
	if err != nil {
		return err
	}
	defer px.Stop()
	logf("proxy pid %d listening on %s; cluster %d primaries + %d replicas (Valkey %s)",
		px.PID(), px.Addr, len(ci.primaries), len(ci.replicas), ci.version)
	if ci.pidNote != "" {
		logf("%s", ci.pidNote)
	}

	direct := target{name: "direct", addr: c.cluster, cluster: true}
	viaProxy := target{name: "proxy", addr: px.Addr}

	if c.prefill {
		n := 3 * c.keyspace // covers about 95% of the key space
		logf("prefill: %d direct SETs at pipeline 16", n)
		if _, err := runBench(ctx, c, benchArgs(c, direct, "set", 16, n, c.seed)); err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
	}
	if c.warmup > 0 {
		logf("warm-up: %d SET+GET direct and through the proxy", c.warmup)
		for _, t := range []target{direct, viaProxy} {
			if _, err := runBench(ctx, c, benchArgs(c, t, "set,get", 1, c.warmup, 0)); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
	}

	results := map[cellKey][]roundResult{}
	retried := 0
	var cells []cellKey
	for _, p := range c.pipelines {
		for _, t := range c.tests {
			cells = append(cells, cellKey{t, p})
		}
	}
	for r := 0; r < c.rounds; r++ {
		directFirst := r%2 == 0
		seed := c.seed
		if seed != 0 {
			seed += int64(r)
		}
		for _, k := range cells {
			order := []target{direct, viaProxy}
			if !directFirst {
				order = []target{viaProxy, direct}
			}
			rr := roundResult{round: r + 1, directFirst: directFirst}
			for _, t := range order {
				var s sample
				for attempt := 0; ; attempt++ {
					s, err = measure(ctx, c, seeds, px, t, k.test, k.pipeline, seed)
					if err == nil {
						break
					}
					if attempt >= c.retries || ctx.Err() != nil {
						return fmt.Errorf("round %d %s P%d %s: %w", r+1, k.test, k.pipeline, t.name, err)
					}
					// The cluster may be shared (someone's script, a failover): try again shortly.
					retried++
					logf("round %d %s P%d %s failed, retrying in 5s: %v", r+1, k.test, k.pipeline, t.name, err)
					select {
					case <-time.After(5 * time.Second):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				if t.name == "direct" {
					rr.direct = s
				} else {
					rr.proxy = s
				}
				extra := ""
				if t.name == "proxy" {
					extra = fmt.Sprintf(", proxy %s µs/req (%s cores)",
						benchkit.Num(s.proxyUS, 1), benchkit.Num(s.proxyCoreUtilisation, 2))
				}
				extra += fmt.Sprintf("; machine %s cores busy, %s of them others",
					benchkit.Num(s.busyCores, 2), benchkit.Num(s.otherCores, 2))
				logf("round %d/%d %-4s P%-3d %-6s %9.0f rps%s", r+1, c.rounds, k.test, k.pipeline, t.name, s.rps, extra)
			}
			results[k] = append(results[k], rr)
		}
	}

	var profileTop string
	if c.profile != "" {
		profileTop, err = captureProfile(ctx, c, px, viaProxy)
		if err != nil {
			return err
		}
	}
	px.Stop()

	report := buildReport(c, ci, px, direct, viaProxy, cells, results, started, loadStart, profileTop, retried)
	return benchkit.WriteReport(report, c.out, logf)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// captureProfile keeps a pipeline-1 SET+GET load on the proxy while it fetches a CPU profile
// from the proxy's pprof endpoint; it writes the profile and returns the top of pprof -top.
func captureProfile(ctx context.Context, c config, px *benchkit.Proxy, viaProxy target) (string, error) {
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loadDone := make(chan error, 1)
	go func() {
		for {
			for _, test := range []string{"set", "get"} {
				_, err := runBench(loadCtx, c, benchArgs(c, viaProxy, test, 1, c.requests, 0))
				if loadCtx.Err() != nil {
					loadDone <- nil
					return
				}
				if err != nil {
					loadDone <- err
					return
				}
			}
		}
	}()
	logf("profile: P1 SET+GET load through the proxy; capturing %s of CPU profile", c.profileDur)
	select {
	case <-time.After(time.Second): // let the load reach a steady state first
	case err := <-loadDone:
		return "", fmt.Errorf("profile load: %w", err)
	}
	before, _ := benchkit.ProcCPU(px.PID())
	data, err := px.CPUProfile(ctx, c.profileDur)
	after, _ := benchkit.ProcCPU(px.PID())
	stopLoad()
	if lerr := <-loadDone; lerr != nil {
		return "", fmt.Errorf("profile load: %w", lerr)
	}
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(c.profile, data, 0o644); err != nil {
		return "", err
	}
	logf("profile written to %s (proxy used %.2f cores meanwhile)", c.profile,
		float64(after-before)/float64(c.profileDur))

	// The first `go tool pprof` on a machine builds the tool: minutes on a busy small box.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(pctx, "go", "tool", "pprof", "-top", c.profile).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof -top: %w: %s", err, benchkit.Tail(string(out)))
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[:25]
	}
	top := strings.Join(lines, "\n")
	fmt.Fprintf(os.Stderr, "\ngo tool pprof -top %s (first 25 lines):\n%s\n\n", c.profile, top)
	return top, nil
}

func buildReport(c config, ci clusterInfo, px *benchkit.Proxy, direct, viaProxy target, cells []cellKey,
	results map[cellKey][]roundResult, started time.Time, loadStart, profileTop string, retried int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("# valkey-lock-proxy benchmark: direct to the cluster vs through the proxy\n\n")
	w("- Command: `go run ./integration/cmd/bench %s`\n", benchkit.ShellQuote(os.Args[1:]))
	w("- Date: %s (took %s)\n", started.UTC().Format(time.RFC3339), time.Since(started).Round(time.Second))
	mach := benchkit.Machine()
	w("- Machine: %d CPUs (nproc), %s, Linux %s; load average at start %q, at end %q\n",
		mach.CPUs, mach.Model, mach.Kernel, loadStart, mach.LoadAvg)
	w("- Valkey %s: %d primaries + %d replicas, seed %s; %s\n", ci.version, len(ci.primaries), len(ci.replicas),
		c.cluster, benchVersion(c.benchBin))
	w("- Proxy: `%s %s` (%s)", c.proxyBin, benchkit.ShellQuote(px.Args), benchkit.ProxyBuild(c.proxyBin))
	for _, e := range []string{"GOMAXPROCS", "GOGC", "GODEBUG"} {
		if v := os.Getenv(e); v != "" {
			w(", %s=%s", e, v)
		}
	}
	w("\n")
	w("- Workload: %d rounds; per round and cell, direct and proxy back to back, direct first in odd rounds "+
		"and proxy first in even ones; each run `-n %d -c %d -r %d -d %d`, one test per run, same --seed for both "+
		"targets within a round (base %d); key space prefilled: %v; warm-up %d requests\n",
		c.rounds, c.requests, c.clients, c.keyspace, c.data, c.seed, c.prefill, c.warmup)
	k0 := cells[0]
	w("- Example runs: direct `%s %s`, proxy `%s %s`\n",
		c.benchBin, benchkit.ShellQuote(benchArgs(c, direct, k0.test, k0.pipeline, c.requests, c.seed)),
		c.benchBin, benchkit.ShellQuote(benchArgs(c, viaProxy, k0.test, k0.pipeline, c.requests, c.seed)))
	w("- Shared machine: the load generator (one single-threaded valkey-benchmark), the proxy and all %d Valkey "+
		"nodes run on the same %d CPUs, together with whatever else is running; when they saturate them, "+
		"throughput is about cores / total CPU per request, so the ratios measure CPU per request as much as latency.\n",
		len(ci.primaries)+len(ci.replicas), runtime.NumCPU())
	if c.rounds < 3 {
		w("- **Only %d round(s): fewer than the 3 the benchmark requirement asks for; indicative only.**\n", c.rounds)
	}
	if ci.pidNote != "" {
		w("- %s\n", ci.pidNote)
	}
	var others []float64
	for _, k := range cells {
		for _, rr := range results[k] {
			others = append(others, rr.direct.otherCores, rr.proxy.otherCores)
		}
	}
	w("- Interference: CPUs busy with work other than this benchmark's processes during the runs, median %s "+
		"(per run in the last table)\n", benchkit.Num(benchkit.Median(others), 2))
	if retried > 0 {
		w("- %d failed run(s) were retried (see the tool's stderr for the errors)\n", retried)
	}

	w("\n## Throughput (requests/s, medians of %d rounds; ratio = proxy / direct)\n\n", c.rounds)
	w("| test | P | direct rps | proxy rps | ratio of medians | median of round ratios | round ratios | p50 ms direct / proxy | p99 ms direct / proxy |\n")
	w("|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range cells {
		rs := results[k]
		d := benchkit.Median(pick(rs, func(r roundResult) float64 { return r.direct.rps }))
		p := benchkit.Median(pick(rs, func(r roundResult) float64 { return r.proxy.rps }))
		ratios := pick(rs, func(r roundResult) float64 { return r.proxy.rps / r.direct.rps })
		var rstr []string
		for _, x := range ratios {
			rstr = append(rstr, benchkit.Num(x, 2))
		}
		w("| %s | %d | %s | %s | **%s** | %s | %s | %s / %s | %s / %s |\n", strings.ToUpper(k.test), k.pipeline,
			benchkit.Num(d, 0), benchkit.Num(p, 0), benchkit.Num(p/d, 2), benchkit.Num(benchkit.Median(ratios), 2),
			strings.Join(rstr, " "),
			benchkit.Num(benchkit.Median(pick(rs, func(r roundResult) float64 { return r.direct.p50ms })), 3),
			benchkit.Num(benchkit.Median(pick(rs, func(r roundResult) float64 { return r.proxy.p50ms })), 3),
			benchkit.Num(benchkit.Median(pick(rs, func(r roundResult) float64 { return r.direct.p99ms })), 3),
			benchkit.Num(benchkit.Median(pick(rs, func(r roundResult) float64 { return r.proxy.p99ms })), 3))
	}

	w("\n## CPU per request (µs, medians of %d rounds)\n\n", c.rounds)
	w("Process CPU time (utime+stime from /proc/PID/stat, %g ticks/s, so ±%.0f ms per reading) divided by the "+
		"requests of the run. *Total* adds proxy, Valkey primaries and replicas, and valkey-benchmark; "+
		"*CPU-model ratio* = total direct / total via proxy, which is what the ratio should be if the run is CPU-bound.\n\n",
		benchkit.ClockTicks(), 1000/benchkit.ClockTicks())
	w("| test | P | proxy | primaries direct | primaries via proxy | replicas direct | replicas via proxy | " +
		"valkey-benchmark direct | valkey-benchmark via proxy | total direct | total via proxy | CPU-model ratio |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range cells {
		rs := results[k]
		m := func(f func(roundResult) float64) float64 { return benchkit.Median(pick(rs, f)) }
		proxyUS := m(func(r roundResult) float64 { return r.proxy.proxyUS })
		pd := m(func(r roundResult) float64 { return r.direct.primUS })
		pp := m(func(r roundResult) float64 { return r.proxy.primUS })
		rd := m(func(r roundResult) float64 { return r.direct.replUS })
		rp := m(func(r roundResult) float64 { return r.proxy.replUS })
		gd := m(func(r roundResult) float64 { return r.direct.genUS })
		gp := m(func(r roundResult) float64 { return r.proxy.genUS })
		td := m(func(r roundResult) float64 { return r.direct.primUS + r.direct.replUS + r.direct.genUS })
		tp := m(func(r roundResult) float64 {
			return r.proxy.proxyUS + r.proxy.primUS + r.proxy.replUS + r.proxy.genUS
		})
		w("| %s | %d | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", strings.ToUpper(k.test), k.pipeline,
			benchkit.Num(proxyUS, 1), benchkit.Num(pd, 1), benchkit.Num(pp, 1), benchkit.Num(rd, 1), benchkit.Num(rp, 1),
			benchkit.Num(gd, 1), benchkit.Num(gp, 1), benchkit.Num(td, 1), benchkit.Num(tp, 1), benchkit.Num(td/tp, 2))
	}

	w("\n## Syscalls per request (medians)\n\n")
	w("Read- and write-family syscalls (syscr/syscw from /proc/PID/io: read, readv, write, writev; not epoll, " +
		"futex, recvmsg or sendmsg) per request.\n\n")
	w("| test | P | proxy reads | proxy writes | primaries reads direct | primaries reads via proxy | " +
		"primaries writes direct | primaries writes via proxy |\n")
	w("|---|---|---|---|---|---|---|---|\n")
	for _, k := range cells {
		rs := results[k]
		m := func(f func(roundResult) float64) string { return benchkit.Num(benchkit.Median(pick(rs, f)), 3) }
		w("| %s | %d | %s | %s | %s | %s | %s | %s |\n", strings.ToUpper(k.test), k.pipeline,
			m(func(r roundResult) float64 { return r.proxy.proxyR }),
			m(func(r roundResult) float64 { return r.proxy.proxyW }),
			m(func(r roundResult) float64 { return r.direct.primR }),
			m(func(r roundResult) float64 { return r.proxy.primR }),
			m(func(r roundResult) float64 { return r.direct.primW }),
			m(func(r roundResult) float64 { return r.proxy.primW }))
	}

	w("\n## Every run\n\n")
	w("*machine busy* is the CPUs busy on average during the run (/proc/stat), *others* the part of it not "+
		"spent by the proxy, Valkey or valkey-benchmark (other people's work, unattributed softirq); "+
		"*executed* is the %s calls the primaries counted (INFO commandstats) per request sent.\n\n", "command's")
	w("| round | test | P | first | direct rps | proxy rps | ratio | proxy µs/req | proxy cores busy | " +
		"primaries µs/req direct / via proxy | valkey-benchmark µs/req direct / via proxy | " +
		"machine busy direct / via proxy | others direct / via proxy | executed direct / via proxy |\n")
	w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for r := 1; r <= c.rounds; r++ {
		for _, k := range cells {
			for _, rr := range results[k] {
				if rr.round != r {
					continue
				}
				first := "proxy"
				if rr.directFirst {
					first = "direct"
				}
				w("| %d | %s | %d | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s / %s |\n",
					r, strings.ToUpper(k.test),
					k.pipeline, first, benchkit.Num(rr.direct.rps, 0), benchkit.Num(rr.proxy.rps, 0),
					benchkit.Num(rr.proxy.rps/rr.direct.rps, 2),
					benchkit.Num(rr.proxy.proxyUS, 1), benchkit.Num(rr.proxy.proxyCoreUtilisation, 2),
					benchkit.Num(rr.direct.primUS, 1), benchkit.Num(rr.proxy.primUS, 1),
					benchkit.Num(rr.direct.genUS, 1), benchkit.Num(rr.proxy.genUS, 1),
					benchkit.Num(rr.direct.busyCores, 2), benchkit.Num(rr.proxy.busyCores, 2),
					benchkit.Num(rr.direct.otherCores, 2), benchkit.Num(rr.proxy.otherCores, 2),
					benchkit.Num(rr.direct.executed, 3), benchkit.Num(rr.proxy.executed, 3))
			}
		}
	}
	if profileTop != "" {
		w("\n## CPU profile of the proxy (P1 SET+GET through the proxy, %s)\n\n", c.profileDur)
		w("Written to `%s`. `go tool pprof -top %s`, first 25 lines:\n\n```\n%s\n```\n", c.profile, c.profile, profileTop)
	}
	return b.String()
}
