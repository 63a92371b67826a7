package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// End-to-end tests of the lock commands (SPEC §1-3) through the proxy against the real cluster.

const (
	lkNoReplicas = "NOREPLICAS Not enough replicas acknowledged the lock"
	// lkConfig is the default configuration of these tests: a generous replica timeout, so that
	// a slow replica on a busy test machine does not turn into a spurious NOREPLICAS. The
	// replica-acknowledgement test itself runs with the real defaults.
	lkConfig = "locks:\n  replica-timeout: 1s\n  recheck-interval: 1s\n"
)

var lkTokenRe = regexp.MustCompile(`^([!-~]+):([0-9]+)$`)

func lkRand(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// lkName returns a resource name unique to this run of the test (no braces: the plain layout).
func lkName(t testing.TB, what string) string {
	return "lk:" + strings.ReplaceAll(t.Name(), "/", ":") + ":" + what + ":" + lkRand(6)
}

// lkProxy starts a proxy with yaml as its configuration file (lkConfig when empty).
func lkProxy(t testing.TB, yaml string) *proxyProc {
	t.Helper()
	if yaml == "" {
		yaml = lkConfig
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return startProxy(t, nil, "--config", path)
}

// lkClient is a go-redis client whose read timeout outlasts every WAIT used here and which never
// retries a command on its own.
func lkClient(t testing.TB, addr string, pool int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr: addr, Protocol: 2, PoolSize: pool, MaxRetries: -1,
		DialTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 10 * time.Second,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func lkCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// lkUntil polls cond every step until it holds or timeout passes, then fails the test.
func lkUntil(t testing.TB, timeout, step time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(step)
	}
}

// lkPct is the nearest-rank percentile q of d (sorted in place).
func lkPct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(float64(len(d))*q+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func lkMs(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond)) }

// lkInfo is a parsed LOCKINFO reply.
type lkInfo struct {
	held    bool
	token   string
	ttl     int64
	waiters int64
}

func lkLockInfo(ctx context.Context, c *redis.Client, r string) (lkInfo, error) {
	v, err := c.Do(ctx, "LOCKINFO", r).Slice()
	if errors.Is(err, redis.Nil) {
		return lkInfo{}, nil
	}
	if err != nil {
		return lkInfo{}, err
	}
	if len(v) != 6 || v[0] != "token" || v[2] != "ttl-ms" || v[4] != "waiters" {
		return lkInfo{}, fmt.Errorf("LOCKINFO %q: unexpected shape %#v", r, v)
	}
	tok, ok1 := v[1].(string)
	ttl, ok2 := v[3].(int64)
	w, ok3 := v[5].(int64)
	if !ok1 || !ok2 || !ok3 {
		return lkInfo{}, fmt.Errorf("LOCKINFO %q: unexpected types %#v", r, v)
	}
	return lkInfo{held: true, token: tok, ttl: ttl, waiters: w}, nil
}

// lkWaiters polls LOCKINFO until this proxy has n clients queued on r.
func lkWaiters(t testing.TB, ctx context.Context, c *redis.Client, r string, n int64) {
	t.Helper()
	var last lkInfo
	var lastErr error
	deadline := time.Now().Add(10 * time.Second)
	for {
		last, lastErr = lkLockInfo(ctx, c, r)
		if lastErr == nil && last.waiters == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("LOCKINFO %q: waiting for %d waiters, last %+v, %v", r, n, last, lastErr)
		}
		time.Sleep(300 * time.Microsecond)
	}
}

func lkLock(t testing.TB, ctx context.Context, c *redis.Client, args ...any) string {
	t.Helper()
	tok, err := c.Do(ctx, append([]any{"LOCK"}, args...)...).Text()
	if err != nil {
		t.Fatalf("LOCK %v: %v", args, err)
	}
	if !lkTokenRe.MatchString(tok) || len(tok) > 64 {
		t.Fatalf("LOCK %v: token %q is not <lockid>:<n> of at most 64 printable bytes", args, tok)
	}
	return tok
}

func lkUnlock(t testing.TB, ctx context.Context, c *redis.Client, r, tok string) {
	t.Helper()
	n, err := c.Do(ctx, "UNLOCK", r, tok).Int()
	if err != nil || n != 1 {
		t.Fatalf("UNLOCK %q %q = %d, %v; want 1", r, tok, n, err)
	}
}

// lkExpectedKey is SPEC §1's table, written independently of the proxy: the lock key of r, and
// whether r falls in the third row (its key then uses the proxy's slot tag table).
func lkExpectedKey(r string) (key string, pinned bool) {
	if r != "" && !strings.ContainsAny(r, "{}") {
		return "lock:{" + r + "}", false
	}
	if i := strings.IndexByte(r, '{'); i >= 0 {
		if j := strings.IndexByte(r[i+1:], '}'); j > 0 {
			return "lock:{" + r[i+1:i+1+j] + "}:" + r, false
		}
	}
	return "", true
}

// lkNode is one line of CLUSTER NODES.
type lkNode struct {
	id, addr, master string
	primary, failed  bool
	slots            [][2]int
}

func lkNodes(t testing.TB, ctx context.Context) []lkNode {
	t.Helper()
	var out string
	var err error
	for _, a := range clusterAddrs {
		c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2, MaxRetries: -1, DialTimeout: 2 * time.Second})
		out, err = c.ClusterNodes(ctx).Result()
		_ = c.Close()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("CLUSTER NODES: %v", err)
	}
	var nodes []lkNode
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := lkNode{id: f[0], addr: strings.Split(f[1], "@")[0], master: f[3],
			primary: strings.Contains(f[2], "master"), failed: strings.Contains(f[2], "fail")}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue
			}
			lo, hi := 0, 0
			if _, err := fmt.Sscanf(r, "%d-%d", &lo, &hi); err != nil {
				_, _ = fmt.Sscanf(r, "%d", &lo)
				hi = lo
			}
			n.slots = append(n.slots, [2]int{lo, hi})
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// lkShard returns the primary serving slot and its healthy replicas.
func lkShard(t testing.TB, ctx context.Context, slot uint16) (primary lkNode, replicas []lkNode) {
	t.Helper()
	nodes := lkNodes(t, ctx)
	found := false
	for _, n := range nodes {
		if !n.primary || n.failed {
			continue
		}
		for _, r := range n.slots {
			if int(slot) >= r[0] && int(slot) <= r[1] {
				primary, found = n, true
			}
		}
	}
	if !found {
		t.Fatalf("slot %d: no primary in %+v", slot, nodes)
	}
	for _, n := range nodes {
		if !n.primary && !n.failed && n.master == primary.id {
			replicas = append(replicas, n)
		}
	}
	return primary, replicas
}

// lkHealthyShard returns the primary serving slot and a replica of it in sync. After a
// failover test the cluster's view of the shard may lag by a gossip round: it waits until the
// node asked lists a replica for the slot's primary.
func lkHealthyShard(t testing.TB, ctx context.Context, slot uint16) (primary, replica lkNode) {
	t.Helper()
	primary, replicas := lkShard(t, ctx, slot)
	for deadline := time.Now().Add(30 * time.Second); len(replicas) == 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		primary, replicas = lkShard(t, ctx, slot)
	}
	if len(replicas) == 0 {
		t.Fatalf("slot %d: primary %s has no replica", slot, primary.addr)
	}
	lkLinkUp(t, ctx, replicas[0].addr, time.Minute)
	return primary, replicas[0]
}

func lkPrimaries(t testing.TB, ctx context.Context) []lkNode {
	t.Helper()
	var out []lkNode
	for _, n := range lkNodes(t, ctx) {
		if n.primary && !n.failed && len(n.slots) > 0 {
			out = append(out, n)
		}
	}
	return out
}

// lkDirect is a go-redis client to one cluster node.
// lkPause stops the Valkey process pid (SIGSTOP) and returns the function that resumes it,
// once however often it is called; the test's cleanup calls it too.
func lkPause(t testing.TB, pid int, addr string) (resume func()) {
	t.Helper()
	var once sync.Once
	resume = func() { once.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s (pid %d): %v", addr, pid, err)
	}
	return resume
}

func lkDirect(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, MaxRetries: -1, DialTimeout: 2 * time.Second,
		ReadTimeout: 10 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// lkInfoField reads one field of an INFO section.
func lkInfoField(ctx context.Context, c *redis.Client, section, field string) string {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	return ""
}

// lkCalls sums the calls= of the named commands in INFO commandstats.
func lkCalls(t testing.TB, ctx context.Context, c *redis.Client, names ...string) int64 {
	t.Helper()
	s, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	var sum int64
	for _, line := range strings.Split(s, "\r\n") {
		for _, n := range names {
			rest, ok := strings.CutPrefix(line, "cmdstat_"+n+":calls=")
			if !ok {
				continue
			}
			v, _, _ := strings.Cut(rest, ",")
			k, _ := strconv.ParseInt(v, 10, 64)
			sum += k
		}
	}
	return sum
}

// lkLinkUp waits until the replica at addr is connected to its primary and in sync.
func lkLinkUp(t testing.TB, ctx context.Context, addr string, timeout time.Duration) {
	t.Helper()
	c := lkDirect(t, addr)
	lkUntil(t, timeout, 100*time.Millisecond, "master_link_status:up on "+addr, func() bool {
		return lkInfoField(ctx, c, "replication", "master_link_status") == "up" &&
			lkInfoField(ctx, c, "replication", "master_sync_in_progress") == "0"
	})
}

// lkProcAddrs returns the local addresses (ip:port) of the TCP sockets process pid holds, from
// /proc; nil when /proc cannot tell.
func lkProcAddrs(pid int) map[string]bool {
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	addrs := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || !inodes[fs[9]] {
				continue
			}
			ipHex, portHex, _ := strings.Cut(fs[1], ":")
			port, _ := strconv.ParseUint(portHex, 16, 16)
			if len(ipHex) == 8 { // IPv4, little-endian
				v, _ := strconv.ParseUint(ipHex, 16, 32)
				addrs[fmt.Sprintf("%d.%d.%d.%d:%d", byte(v), byte(v>>8), byte(v>>16), byte(v>>24), port)] = true
			} else {
				addrs[fmt.Sprintf("[v6]:%d", port)] = true
			}
		}
	}
	return addrs
}

// lkConnCmds returns tot-cmds (CLIENT LIST, Valkey 8) per client id of node's connections whose
// peer address is in addrs.
func lkConnCmds(t testing.TB, ctx context.Context, node *redis.Client, addrs map[string]bool) map[string]int64 {
	t.Helper()
	out, err := node.ClientList(ctx).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	cmds := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if v, ok := f["tot-cmds"]; ok && addrs[f["addr"]] {
			cmds[f["id"]], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return cmds
}

// lkFails collects failures in goroutines and reports the first few.
type lkFails struct {
	mu   sync.Mutex
	n    int
	msgs []string
}

func (f *lkFails) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if len(f.msgs) < 10 {
		f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
	}
}

func (f *lkFails) check(t testing.TB, what string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n > 0 {
		t.Fatalf("%s: %d failures; first ones:\n  %s", what, f.n, strings.Join(f.msgs, "\n  "))
	}
}

// lkShort shortens a resource name for messages.
func lkShort(s string) string {
	if len(s) > 60 {
		return fmt.Sprintf("%q...(%d bytes)", s[:60], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// 1. Key layout and co-location.
func TestLockKeyLayout(t *testing.T) {
	p := lkProxy(t, "")
	c := lkClient(t, p.Addr, 2)
	cc := clusterClient(t)
	ctx := lkCtx(t, 4*time.Minute)
	run := lkRand(4)

	seen := map[string]bool{}
	var names []string
	add := func(s string) {
		if !seen[s] && !strings.HasPrefix(s, "lock:") {
			seen[s] = true
			names = append(names, s)
		}
	}
	for _, h := range []string{"", "a}b", "{}x", "x{", "{t}y", "{", "}", "{}", "}{", "{{}}", "{a}{b}",
		"a{b}c}", "\x00", "\xff\xfe{\x00}", " ", "\r\n", ":", "{}{x}", "*", "lock"} {
		add(h)
	}
	for _, h := range []string{"a}b%s", "{}x%s", "x{%s", "{t%s}y", "%s{", "}%s", "{%s}", "{%s}{b}",
		"a{}b{%s}", "}{%s}", "{{%s}}", "%s\x00{\xff}", "{\r\n%s}"} {
		add(fmt.Sprintf(h, run))
	}
	add(strings.Repeat("m", 1<<20) + run) // a 1 MB name (plain layout)
	add("{" + strings.Repeat("n", 1<<20) + run)
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	alphabet := []byte("{}{}ab:\x00\xff\r\n \\*?[")
	for len(names) < 10050 {
		b := make([]byte, 0, 40)
		for n := rng.IntN(24); n > 0; n-- {
			if rng.IntN(3) == 0 {
				b = append(b, byte(rng.IntN(256)))
			} else {
				b = append(b, alphabet[rng.IntN(len(alphabet))])
			}
		}
		at := rng.IntN(len(b) + 1)
		b = append(b[:at], append([]byte(run), b[at:]...)...)
		add(string(b))
	}
	var plain, tagged, pinned int
	for _, r := range names {
		switch k, pin := lkExpectedKey(r); {
		case pin:
			pinned++
		case k == "lock:{"+r+"}":
			plain++
		default:
			tagged++
		}
	}
	t.Logf("%d resource names: %d plain, %d with a hash tag, %d pinned by the slot tag table", len(names), plain, tagged, pinned)

	const chunk = 500
	tokens := make([]string, len(names))
	var fails lkFails
	for lo := 0; lo < len(names); lo += chunk {
		hi := min(lo+chunk, len(names))
		pipe := c.Pipeline()
		cmds := make([]*redis.Cmd, 0, hi-lo)
		for _, r := range names[lo:hi] {
			cmds = append(cmds, pipe.Do(ctx, "LOCK", r, "PX", 10000))
		}
		_, _ = pipe.Exec(ctx)
		for i, cmd := range cmds {
			tok, err := cmd.Text()
			if err != nil {
				fails.add("LOCK %s PX 10000: %v", lkShort(names[lo+i]), err)
			}
			tokens[lo+i] = tok
		}
	}
	fails.check(t, "LOCK")

	// The lock keys are where SPEC §1 puts them, and hash to the resource's slot (asked of the
	// server, not computed here).
	node := lkDirect(t, clusterAddrs[0])
	keys := make([]string, len(names))
	for i, r := range names {
		k, pin := lkExpectedKey(r)
		if pin {
			tag := cluster.SlotTag(cluster.SlotOf([]byte(r)))
			if len(tag) == 0 || len(tag) > 16 || strings.ContainsAny(string(tag), "{}") {
				t.Fatalf("slot tag %q of %s is not a short brace-free string", tag, lkShort(r))
			}
			k = "lock:{" + string(tag) + "}:" + r
		}
		keys[i] = k
	}
	for lo := 0; lo < len(names); lo += chunk {
		hi := min(lo+chunk, len(names))
		pipe := cc.Pipeline()
		gets := make([]*redis.StringCmd, 0, hi-lo)
		for _, k := range keys[lo:hi] {
			gets = append(gets, pipe.Get(ctx, k))
		}
		_, _ = pipe.Exec(ctx)
		np := node.Pipeline()
		ks := make([][2]*redis.IntCmd, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ks = append(ks, [2]*redis.IntCmd{np.ClusterKeySlot(ctx, keys[i]), np.ClusterKeySlot(ctx, names[i])})
		}
		_, _ = np.Exec(ctx)
		for i := range gets {
			v, err := gets[i].Result()
			if err != nil || v != tokens[lo+i] {
				fails.add("direct GET %s (lock of %s) = %q, %v; want the token %q", lkShort(keys[lo+i]), lkShort(names[lo+i]), v, err, tokens[lo+i])
			}
			a, errA := ks[i][0].Result()
			b, errB := ks[i][1].Result()
			if errA != nil || errB != nil || a != b {
				fails.add("CLUSTER KEYSLOT %s = %d (%v), of the resource %s = %d (%v)", lkShort(keys[lo+i]), a, errA, lkShort(names[lo+i]), b, errB)
			}
		}
	}
	fails.check(t, "lock key layout")

	// The lock and the data it guards are written by one script: CROSSSLOT would show here.
	for lo := 0; lo < len(names); lo += chunk {
		hi := min(lo+chunk, len(names))
		pipe := c.Pipeline()
		type quad struct {
			set           *redis.Cmd
			get           *redis.StringCmd
			unlock        *redis.Cmd
			del           *redis.IntCmd
			value, holder string
		}
		qs := make([]quad, 0, hi-lo)
		for i := lo; i < hi; i++ {
			v := "v" + strconv.Itoa(i)
			qs = append(qs, quad{
				set:    pipe.Do(ctx, "SAFESET", names[i], v, "TOKEN", tokens[i]),
				get:    pipe.Get(ctx, names[i]),
				unlock: pipe.Do(ctx, "UNLOCK", names[i], tokens[i]),
				del:    pipe.Del(ctx, names[i]),
				value:  v, holder: tokens[i],
			})
		}
		_, _ = pipe.Exec(ctx)
		for j, q := range qs {
			r := lkShort(names[lo+j])
			if s, err := q.set.Text(); err != nil || s != "OK" {
				fails.add("SAFESET %s v TOKEN %s = %q, %v; want OK", r, q.holder, s, err)
			}
			if s, err := q.get.Result(); err != nil || s != q.value {
				fails.add("GET %s = %q, %v; want %q", r, s, err, q.value)
			}
			if n, err := q.unlock.Int(); err != nil || n != 1 {
				fails.add("UNLOCK %s = %d, %v; want 1", r, n, err)
			}
			if n, err := q.del.Result(); err != nil || n != 1 {
				fails.add("DEL %s = %d, %v; want 1", r, n, err)
			}
		}
	}
	fails.check(t, "SAFESET/UNLOCK")
}

// 2. Interoperability with the seed library's plain SET NX holders.
func TestLockSeedInterop(t *testing.T) {
	p := lkProxy(t, "locks:\n  replica-timeout: 1s\n  recheck-interval: 200ms\n")
	c := lkClient(t, p.Addr, 1)
	cc := clusterClient(t)
	ctx := lkCtx(t, time.Minute)
	r := lkName(t, "r")
	key := "lock:{" + r + "}"
	t.Cleanup(func() { cc.Del(context.Background(), key, r) })

	if ok, err := cc.SetNX(ctx, key, "other", 5*time.Second).Result(); err != nil || !ok {
		t.Fatalf("direct SET %s other NX EX 5 = %v, %v", key, ok, err)
	}
	if v, err := c.Do(ctx, "LOCK", r).Text(); !errors.Is(err, redis.Nil) {
		t.Fatalf("LOCK under a seed holder = %q, %v; want nil", v, err)
	}
	if v, err := c.Do(ctx, "LOCK", r, "WAIT", 50).Text(); !errors.Is(err, redis.Nil) {
		t.Fatalf("LOCK WAIT 50 under a seed holder = %q, %v; want nil", v, err)
	}
	for _, args := range [][]any{{"SAFESET", r, "v"}, {"SAFESET", r, "v", 60}, {"SAFESET", r, "v", "TOKEN", "not-other"}} {
		if v, err := c.Do(ctx, args...).Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("%v under a seed holder = %q, %v; want nil", args, v, err)
		}
	}
	if n, err := c.Do(ctx, "UNLOCK", r, "other-token").Int(); err != nil || n != 0 {
		t.Fatalf("UNLOCK %s other-token = %d, %v; want 0", r, n, err)
	}
	if n, err := c.Do(ctx, "UNLOCK", r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ:1").Int(); err != nil || n != 0 {
		t.Fatalf("UNLOCK with a token of another shape = %d, %v; want 0", n, err)
	}
	if v, err := cc.Get(ctx, key).Result(); err != nil || v != "other" {
		t.Fatalf("the seed's value after UNLOCKs = %q, %v; want other", v, err)
	}
	if d, err := cc.PTTL(ctx, key).Result(); err != nil || d <= 0 || d > 5*time.Second {
		t.Fatalf("the seed's TTL = %v, %v", d, err)
	}
	if in, err := lkLockInfo(ctx, c, r); err != nil || in.token != "other" || in.ttl <= 0 || in.ttl > 5000 {
		t.Fatalf("LOCKINFO under a seed holder = %+v, %v", in, err)
	}
	if ex, err := cc.Exists(ctx, r).Result(); err != nil || ex != 0 {
		t.Fatalf("SAFESET wrote %s under a seed holder: EXISTS = %d, %v", r, ex, err)
	}

	// A waiter notices a seed holder's release (no publish) by the bounded re-check.
	type res struct {
		tok string
		err error
		at  time.Time
	}
	w := lkClient(t, p.Addr, 1)
	ch := make(chan res, 1)
	go func() {
		tok, err := w.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 4000).Text()
		ch <- res{tok, err, time.Now()}
	}()
	lkWaiters(t, ctx, c, r, 1)
	time.Sleep(50 * time.Millisecond)
	if err := cc.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	got := <-ch
	if got.err != nil {
		t.Fatalf("LOCK WAIT 4000 after the seed's DEL: %v", got.err)
	}
	t.Logf("seed release (DEL, no publish) noticed after %s (recheck-interval 200ms)", lkMs(got.at.Sub(released)))
	if d := got.at.Sub(released); d > 700*time.Millisecond {
		t.Errorf("seed release noticed after %v; want within the 200ms re-check (+500ms slack)", d)
	}
	lkUnlock(t, ctx, w, r, got.tok)

	// A LOCK holder blocks the seed's SET NX; UNLOCK frees it for the seed.
	tok := lkLock(t, ctx, c, r, "PX", 10000)
	if ok, err := cc.SetNX(ctx, key, "x", 0).Result(); err != nil || ok {
		t.Fatalf("direct SET %s x NX under a LOCK holder = %v, %v; want not set", key, ok, err)
	}
	if v, err := cc.Get(ctx, key).Result(); err != nil || v != tok {
		t.Fatalf("direct GET %s = %q, %v; want the token %q", key, v, err, tok)
	}
	if v, err := c.Do(ctx, "SAFESET", r, "v").Text(); !errors.Is(err, redis.Nil) {
		t.Fatalf("SAFESET without token under a LOCK holder = %q, %v; want nil", v, err)
	}
	if v, err := c.Do(ctx, "SAFESET", r, "v", "TOKEN", tok).Text(); err != nil || v != "OK" {
		t.Fatalf("SAFESET TOKEN holder = %q, %v; want OK", v, err)
	}
	lkUnlock(t, ctx, c, r, tok)
	if ok, err := cc.SetNX(ctx, key, "seed", 5*time.Second).Result(); err != nil || !ok {
		t.Fatalf("direct SET NX after UNLOCK = %v, %v; want set", ok, err)
	}
	if n, err := c.Do(ctx, "UNLOCK", r, tok).Int(); err != nil || n != 0 {
		t.Fatalf("UNLOCK with the old token under a new seed holder = %d, %v; want 0", n, err)
	}
	if v, err := cc.Get(ctx, key).Result(); err != nil || v != "seed" {
		t.Fatalf("seed value after a stale UNLOCK = %q, %v", v, err)
	}
}

// 3. Mutual exclusion under contention.
func TestLockMutualExclusion(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, 3*time.Minute)
	r := lkName(t, "r")
	counter := lkName(t, "counter")
	const clients, rounds = 20, 50
	check := lkClient(t, p.Addr, 1)
	t.Cleanup(func() { check.Del(context.Background(), counter) })

	var inside, maxInside atomic.Int32
	var fails lkFails
	var waitMu sync.Mutex
	var waits []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		cl := lkClient(t, p.Addr, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < rounds; k++ {
				t0 := time.Now()
				tok, err := cl.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 10000).Text()
				if err != nil {
					fails.add("client %d round %d: LOCK: %v", i, k, err)
					return
				}
				waitMu.Lock()
				waits = append(waits, time.Since(t0))
				waitMu.Unlock()
				n := inside.Add(1)
				for {
					m := maxInside.Load()
					if n <= m || maxInside.CompareAndSwap(m, n) {
						break
					}
				}
				v, err := cl.Get(ctx, counter).Int()
				if errors.Is(err, redis.Nil) {
					v, err = 0, nil
				}
				if err == nil {
					err = cl.Set(ctx, counter, v+1, 0).Err()
				}
				inside.Add(-1)
				if err != nil {
					fails.add("client %d round %d: GET/SET: %v", i, k, err)
				}
				if n, err := cl.Do(ctx, "UNLOCK", r, tok).Int(); err != nil || n != 1 {
					fails.add("client %d round %d: UNLOCK = %d, %v", i, k, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	fails.check(t, "mutual exclusion")
	if m := maxInside.Load(); m != 1 {
		t.Fatalf("at most %d clients were inside the critical section at once; want 1", m)
	}
	v, err := check.Get(ctx, counter).Int()
	if err != nil || v != clients*rounds {
		t.Fatalf("counter = %d, %v; want %d", v, err, clients*rounds)
	}
	t.Logf("%d acquisitions in %v; LOCK WAIT time p50 %s p99 %s max %s", len(waits), time.Since(start).Round(time.Millisecond),
		lkMs(lkPct(waits, 0.5)), lkMs(lkPct(waits, 0.99)), lkMs(lkPct(waits, 1)))
}

type lkResult struct {
	tok string
	err error
	at  time.Time
}

// lkHandoffs passes one lock back and forth between two clients n times: each time the other
// client queues with LOCK WAIT (seen in LOCKINFO of its proxy), then the holder unlocks. It
// returns the delays from the UNLOCK reply (and from sending UNLOCK) to the waiter's LOCK reply.
func lkHandoffs(t *testing.T, ctx context.Context, r string, n int, a, b, infoA, infoB *redis.Client) (fromReply, fromSend []time.Duration) {
	t.Helper()
	tok := lkLock(t, ctx, a, r, "PX", 10000)
	holder, waiter, waiterInfo, holderInfo := a, b, infoB, infoA
	var negative int
	for i := 0; i < n; i++ {
		ch := make(chan lkResult, 1)
		go func(w *redis.Client) {
			tok, err := w.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 5000).Text()
			ch <- lkResult{tok, err, time.Now()}
		}(waiter)
		lkWaiters(t, ctx, waiterInfo, r, 1)
		sent := time.Now()
		if k, err := holder.Do(ctx, "UNLOCK", r, tok).Int(); err != nil || k != 1 {
			t.Fatalf("handoff %d: UNLOCK = %d, %v", i, k, err)
		}
		replied := time.Now()
		var got lkResult
		select {
		case got = <-ch:
		case <-time.After(15 * time.Second):
			t.Fatalf("handoff %d: the waiter got no reply", i)
		}
		if got.err != nil {
			t.Fatalf("handoff %d: waiter's LOCK: %v", i, got.err)
		}
		d := got.at.Sub(replied)
		if d < 0 {
			negative++
			d = 0
		}
		fromReply = append(fromReply, d)
		fromSend = append(fromSend, got.at.Sub(sent))
		tok = got.tok
		holder, waiter, waiterInfo, holderInfo = waiter, holder, holderInfo, waiterInfo
	}
	lkUnlock(t, ctx, holder, r, tok)
	if negative > 0 {
		t.Logf("%d of %d waiters had their LOCK reply before the holder had its UNLOCK reply (counted as 0)", negative, n)
	}
	return fromReply, fromSend
}

// 4. Waiting without polling.
func TestLockWaiting(t *testing.T) {
	t.Run("HandoffSameProxy", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, 2*time.Minute)
		a, b, info := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		fromReply, fromSend := lkHandoffs(t, ctx, lkName(t, "r"), 200, a, b, info, info)
		p50, p99, mx := lkPct(fromReply, 0.5), lkPct(fromReply, 0.99), lkPct(fromReply, 1)
		t.Logf("same-proxy handoff over %d (UNLOCK reply -> waiter's LOCK reply): p50 %s p99 %s max %s; from sending UNLOCK: p50 %s p99 %s",
			len(fromReply), lkMs(p50), lkMs(p99), lkMs(mx), lkMs(lkPct(fromSend, 0.5)), lkMs(lkPct(fromSend, 0.99)))
		if p99 >= 50*time.Millisecond {
			t.Errorf("same-proxy handoff p99 %v; want < 50ms (goal 1ms)", p99)
		}
	})

	t.Run("HandoffCrossProxy", func(t *testing.T) {
		p1, p2 := lkProxy(t, ""), lkProxy(t, "")
		ctx := lkCtx(t, 2*time.Minute)
		a, b := lkClient(t, p1.Addr, 1), lkClient(t, p2.Addr, 1)
		infoA, infoB := lkClient(t, p1.Addr, 1), lkClient(t, p2.Addr, 1)
		fromReply, fromSend := lkHandoffs(t, ctx, lkName(t, "r"), 50, a, b, infoA, infoB)
		p50, p99, mx := lkPct(fromReply, 0.5), lkPct(fromReply, 0.99), lkPct(fromReply, 1)
		t.Logf("cross-proxy handoff over %d (UNLOCK reply -> waiter's LOCK reply): p50 %s p99 %s max %s; from sending UNLOCK: p50 %s p99 %s",
			len(fromReply), lkMs(p50), lkMs(p99), lkMs(mx), lkMs(lkPct(fromSend, 0.5)), lkMs(lkPct(fromSend, 0.99)))
		if p99 >= 200*time.Millisecond {
			t.Errorf("cross-proxy handoff p99 %v; want < 200ms (goal 10ms)", p99)
		}
	})

	t.Run("ExpiryHandoff", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, time.Minute)
		a, b := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		var late []time.Duration
		for i := 0; i < 5; i++ {
			r := lkName(t, "r")
			sent := time.Now()
			lkLock(t, ctx, a, r, "PX", 300)
			replied := time.Now()
			tok, err := b.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 5000).Text()
			got := time.Now()
			if err != nil {
				t.Fatalf("LOCK WAIT 5000 behind an expiring lock: %v", err)
			}
			if got.Sub(sent) < 300*time.Millisecond {
				t.Fatalf("the waiter got the lock %v after the holder's LOCK PX 300 was sent: before it expired", got.Sub(sent))
			}
			// The key was set between sent and replied: lateness lies in [got-replied-300ms, got-sent-300ms].
			upper := got.Sub(sent) - 300*time.Millisecond
			lower := max(got.Sub(replied)-300*time.Millisecond, 0)
			late = append(late, upper)
			t.Logf("expiry handoff %d: waiter got the lock %s to %s after the TTL ran out", i, lkMs(lower), lkMs(upper))
			lkUnlock(t, ctx, b, r, tok)
		}
		if mx := lkPct(late, 1); mx >= 300*time.Millisecond {
			t.Errorf("expiry handoff max %v after the TTL; want < 300ms (goal 50ms)", mx)
		}
	})

	t.Run("WaitTimeout", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, time.Minute)
		a, b := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		tok := lkLock(t, ctx, a, r, "PX", 20000)
		for _, wait := range []int{200, 200, 200, 50, 500} {
			t0 := time.Now()
			v, err := b.Do(ctx, "LOCK", r, "WAIT", wait).Text()
			d := time.Since(t0)
			if !errors.Is(err, redis.Nil) {
				t.Fatalf("LOCK WAIT %d on a held lock = %q, %v; want nil", wait, v, err)
			}
			w := time.Duration(wait) * time.Millisecond
			t.Logf("LOCK WAIT %d timed out after %s (%s past WAIT)", wait, lkMs(d), lkMs(d-w))
			if d < w || d >= w+300*time.Millisecond {
				t.Errorf("LOCK WAIT %d answered nil after %v; want within [WAIT, WAIT+300ms) (goal +50ms)", wait, d)
			}
		}
		lkUnlock(t, ctx, a, r, tok)
	})

	t.Run("FIFO", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, time.Minute)
		holder, info := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		tok := lkLock(t, ctx, holder, r, "PX", 20000)
		var mu sync.Mutex
		var order []int
		var fails lkFails
		var wg sync.WaitGroup
		for i := 0; i < 5; i++ {
			w := lkClient(t, p.Addr, 1)
			started := time.Now()
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := w.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 15000).Text()
				if err != nil {
					fails.add("waiter %d: LOCK: %v", i, err)
					return
				}
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
				if n, err := w.Do(ctx, "UNLOCK", r, tok).Int(); err != nil || n != 1 {
					fails.add("waiter %d: UNLOCK = %d, %v", i, n, err)
				}
			}()
			lkWaiters(t, ctx, info, r, int64(i+1))
			time.Sleep(time.Until(started.Add(50 * time.Millisecond)))
		}
		lkUnlock(t, ctx, holder, r, tok)
		wg.Wait()
		fails.check(t, "FIFO waiters")
		if !slices.Equal(order, []int{0, 1, 2, 3, 4}) {
			t.Fatalf("waiters got the lock in the order %v; want 0 1 2 3 4", order)
		}
	})

	t.Run("BoundedUpstreamCommands", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, 2*time.Minute)
		holder, info := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		waiters := lkClient(t, p.Addr, 100)
		r := lkName(t, "r")
		slot := cluster.SlotOf([]byte(r))
		owner, _ := lkShard(t, ctx, slot)
		ownerC := lkDirect(t, owner.addr)
		var others []*redis.Client
		for _, n := range lkPrimaries(t, ctx) {
			if n.addr != owner.addr {
				others = append(others, lkDirect(t, n.addr))
			}
		}
		tok := lkLock(t, ctx, holder, r, "PX", 30000)
		const n = 100
		var fails lkFails
		var got atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := waiters.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 20000).Text()
				if err != nil {
					fails.add("waiter %d: LOCK: %v", i, err)
					return
				}
				got.Add(1)
				if k, err := waiters.Do(ctx, "UNLOCK", r, tok).Int(); err != nil || k != 1 {
					fails.add("waiter %d: UNLOCK = %d, %v", i, k, err)
				}
			}()
		}
		lkWaiters(t, ctx, info, r, n)
		time.Sleep(20 * time.Millisecond)
		scripts := []string{"evalsha", "eval"}
		// Other clients of the shared cluster add to INFO commandstats; the commands this proxy
		// sends are counted per connection (CLIENT LIST tot-cmds) on its own sockets.
		pid := p.cmd.Process.Pid
		addrs := lkProcAddrs(pid)
		connBefore := map[string]int64{}
		if len(addrs) > 0 {
			connBefore = lkConnCmds(t, ctx, ownerC, addrs)
		}
		before := lkCalls(t, ctx, ownerC, scripts...)
		var beforeOthers int64
		for _, o := range others {
			beforeOthers += lkCalls(t, ctx, o, scripts...)
		}
		time.Sleep(2 * time.Second)
		after := lkCalls(t, ctx, ownerC, scripts...)
		var afterOthers int64
		for _, o := range others {
			afterOthers += lkCalls(t, ctx, o, scripts...)
		}
		delta := after - before
		t.Logf("%d clients waiting 2s on one held lock (recheck-interval 1s): EVALSHA+EVAL calls on the owner %s +%d; on the other primaries +%d (other clients of the cluster included)",
			n, owner.addr, delta, afterOthers-beforeOthers)
		if len(addrs) > 0 && len(connBefore) > 0 {
			for a := range lkProcAddrs(pid) {
				addrs[a] = true
			}
			var own int64
			for id, k := range lkConnCmds(t, ctx, ownerC, addrs) {
				own += k - connBefore[id]
			}
			t.Logf("commands this proxy sent the owner during the window (CLIENT LIST tot-cmds of its %d connections there): +%d", len(connBefore), own)
			if own >= n {
				t.Errorf("the proxy sent the owner %d commands while %d clients waited 2s; want < %d (only the head re-checks)", own, n, n)
			}
		} else if delta >= n {
			t.Errorf("the owner primary saw %d script calls while %d clients waited 2s; want < %d (only the head re-checks)", delta, n, n)
		}
		if in, err := lkLockInfo(ctx, info, r); err != nil || in.token != tok || in.waiters != n {
			t.Errorf("LOCKINFO after the window = %+v, %v; want the holder's token and %d waiters", in, err, n)
		}
		lkUnlock(t, ctx, holder, r, tok)
		wg.Wait()
		fails.check(t, "waiters after the release")
		if got.Load() != n {
			t.Fatalf("%d of %d waiters got the lock", got.Load(), n)
		}
	})

	t.Run("WaiterBlocksNoOne", func(t *testing.T) {
		p := lkProxy(t, "")
		ctx := lkCtx(t, time.Minute)
		holder, waiter, other := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		k := lkName(t, "k")
		if err := other.Set(ctx, k, "v", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		tok := lkLock(t, ctx, holder, r, "PX", 20000)
		ch := make(chan lkResult, 1)
		go func() {
			tok, err := waiter.Do(ctx, "LOCK", r, "WAIT", 2000).Text()
			ch <- lkResult{tok, err, time.Now()}
		}()
		lkWaiters(t, ctx, other, r, 1)
		var lat []time.Duration
		for i := 0; i < 50; i++ {
			t0 := time.Now()
			if err := other.Ping(ctx).Err(); err != nil {
				t.Fatalf("PING while another client waits: %v", err)
			}
			lat = append(lat, time.Since(t0))
			t0 = time.Now()
			if v, err := other.Get(ctx, k).Result(); err != nil || v != "v" {
				t.Fatalf("GET while another client waits = %q, %v", v, err)
			}
			lat = append(lat, time.Since(t0))
			if i == 25 {
				// Another LOCK of a free resource is not held up either.
				r2 := lkName(t, "r2")
				t0 = time.Now()
				tok2 := lkLock(t, ctx, other, r2, "PX", 5000)
				lat = append(lat, time.Since(t0))
				lkUnlock(t, ctx, other, r2, tok2)
			}
		}
		select {
		case got := <-ch:
			t.Fatalf("the waiter answered early: %q, %v", got.tok, got.err)
		default:
		}
		t.Logf("PING/GET/LOCK of another client while one waits: p50 %s max %s", lkMs(lkPct(lat, 0.5)), lkMs(lkPct(lat, 1)))
		if mx := lkPct(lat, 1); mx >= 100*time.Millisecond {
			t.Errorf("a command of another client took %v while one client waited; want < 100ms", mx)
		}
		got := <-ch
		if !errors.Is(got.err, redis.Nil) {
			t.Fatalf("waiter = %q, %v; want nil after WAIT 2000", got.tok, got.err)
		}
		lkUnlock(t, ctx, holder, r, tok)
		other.Del(ctx, k)
	})

	// A release that lands while a waiter is between its failed attempt and joining the queue
	// (or subscribing to the release channel) must still wake it at once, not at the re-check.
	for _, cross := range []bool{false, true} {
		name := "ReleaseRacingEnqueueSameProxy"
		if cross {
			name = "ReleaseRacingEnqueueCrossProxy"
		}
		t.Run(name, func(t *testing.T) {
			p1 := lkProxy(t, "")
			p2 := p1
			if cross {
				p2 = lkProxy(t, "")
			}
			ctx := lkCtx(t, 3*time.Minute)
			a, b := lkClient(t, p1.Addr, 1), lkClient(t, p2.Addr, 1)
			r := lkName(t, "r")
			// Calibrate: one failed attempt's round trip.
			tok := lkLock(t, ctx, a, r, "PX", 10000)
			t0 := time.Now()
			for i := 0; i < 20; i++ {
				if _, err := b.Do(ctx, "LOCK", r).Text(); !errors.Is(err, redis.Nil) {
					t.Fatalf("LOCK of a held lock: %v", err)
				}
			}
			rtt := time.Since(t0) / 20
			lkUnlock(t, ctx, a, r, tok)
			n := 300
			if cross {
				n = 150
			}
			var lat []time.Duration
			slow := 0
			for i := 0; i < n; i++ {
				tok := lkLock(t, ctx, a, r, "PX", 10000)
				ch := make(chan lkResult, 1)
				go func() {
					tok, err := b.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 5000).Text()
					ch <- lkResult{tok, err, time.Now()}
				}()
				time.Sleep(time.Duration(mrand.Int64N(int64(2*rtt) + 1)))
				lkUnlock(t, ctx, a, r, tok)
				released := time.Now()
				got := <-ch
				if got.err != nil {
					t.Fatalf("round %d: waiter's LOCK: %v", i, got.err)
				}
				d := max(got.at.Sub(released), 0)
				if d > 250*time.Millisecond {
					slow++
				}
				lat = append(lat, d)
				lkUnlock(t, ctx, b, r, got.tok)
			}
			t.Logf("%d releases racing a waiter's enqueue (jitter up to %s): p50 %s p99 %s max %s; %d waiters took > 250ms",
				n, lkMs(2*rtt), lkMs(lkPct(lat, 0.5)), lkMs(lkPct(lat, 0.99)), lkMs(lkPct(lat, 1)), slow)
			if slow > 0 {
				t.Errorf("%d of %d waiters missed a release that raced their enqueue and slept until the re-check (max %v)", slow, n, lkPct(lat, 1))
			}
		})
	}
}

// 5. KEEPALIVE, and clients that leave.
func TestLockKeepalive(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, 2*time.Minute)
	cc := clusterClient(t)
	obs := lkClient(t, p.Addr, 1)

	t.Run("RenewedWhileOpenReleasedOnClose", func(t *testing.T) {
		for _, ttl := range []int{300, 10000} {
			r := lkName(t, "r")
			k := lkClient(t, p.Addr, 1)
			tok := lkLock(t, ctx, k, r, "PX", ttl, "KEEPALIVE")
			hold := 3 * time.Second
			if ttl > 1000 {
				hold = 500 * time.Millisecond
			}
			end := time.Now().Add(hold)
			for time.Now().Before(end) {
				in, err := lkLockInfo(ctx, obs, r)
				if err != nil || in.token != tok || in.ttl <= 0 || in.ttl > int64(ttl) {
					t.Fatalf("LOCKINFO of a KEEPALIVE lock (PX %d) = %+v, %v; want token %q", ttl, in, err, tok)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err := k.Close(); err != nil {
				t.Fatal(err)
			}
			closed := time.Now()
			key := "lock:{" + r + "}"
			for {
				_, err := cc.Get(ctx, key).Result()
				if errors.Is(err, redis.Nil) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if time.Since(closed) > 5*time.Second {
					t.Fatalf("KEEPALIVE lock (PX %d) still held 5s after its connection closed", ttl)
				}
				time.Sleep(5 * time.Millisecond)
			}
			d := time.Since(closed)
			t.Logf("KEEPALIVE lock PX %d held %v with the connection open; released %s after the connection closed", ttl, hold, lkMs(d))
			if d >= 500*time.Millisecond {
				t.Errorf("KEEPALIVE lock PX %d released %v after close; want < 500ms (goal 100ms)", ttl, d)
			}
		}
		if v := lkInfoField(ctx, obs, "proxy", "locks_keepalive_lost"); v != "0" {
			t.Errorf("INFO proxy locks_keepalive_lost = %q; want 0", v)
		}
	})

	t.Run("UnlockStopsKeepalive", func(t *testing.T) {
		r := lkName(t, "r")
		k := lkClient(t, p.Addr, 1)
		lost := lkInfoField(ctx, obs, "proxy", "locks_keepalive_lost")
		tok := lkLock(t, ctx, k, r, "PX", 300, "KEEPALIVE")
		lkUnlock(t, ctx, k, r, tok)
		// Another client takes it; the first connection's renewals stopped with the UNLOCK, so
		// they neither extend it nor count a lost lock.
		lkLock(t, ctx, obs, r, "PX", 300)
		time.Sleep(450 * time.Millisecond)
		if in, err := lkLockInfo(ctx, obs, r); err != nil || in.held {
			t.Fatalf("a PX 300 lock taken after an UNLOCKed KEEPALIVE lock is still held after 450ms: %+v, %v", in, err)
		}
		if v := lkInfoField(ctx, obs, "proxy", "locks_keepalive_lost"); v != lost {
			t.Fatalf("locks_keepalive_lost %s -> %s: renewals went on after UNLOCK", lost, v)
		}
		_ = k.Close()
	})

	t.Run("DisconnectWhileWaiting", func(t *testing.T) {
		r := lkName(t, "r")
		holder := lkClient(t, p.Addr, 1)
		tok := lkLock(t, ctx, holder, r, "PX", 10000)
		w := dialRaw(t, p.Addr)
		w.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000"))
		lkWaiters(t, ctx, obs, r, 1)
		_ = w.c.Close()
		lkWaiters(t, ctx, obs, r, 0)
		lkUnlock(t, ctx, holder, r, tok)
		end := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(end) {
			if in, err := lkLockInfo(ctx, obs, r); err != nil || in.held {
				t.Fatalf("after a waiter disconnected and the holder released: LOCKINFO = %+v, %v; want free", in, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		tok = lkLock(t, ctx, holder, r, "PX", 10000)
		lkUnlock(t, ctx, holder, r, tok)

		// The release racing the disconnect: the lock may be taken for the leaving client for a
		// moment, but never stays held.
		for i := 0; i < 20; i++ {
			tok := lkLock(t, ctx, holder, r, "PX", 10000)
			w := dialRaw(t, p.Addr)
			w.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000"))
			lkWaiters(t, ctx, obs, r, 1)
			time.Sleep(time.Duration(mrand.IntN(1000)) * time.Microsecond)
			_ = w.c.Close()
			time.Sleep(time.Duration(mrand.IntN(500)) * time.Microsecond)
			lkUnlock(t, ctx, holder, r, tok)
			lkUntil(t, 2*time.Second, 5*time.Millisecond, "the lock to be free after its waiter left", func() bool {
				in, err := lkLockInfo(ctx, obs, r)
				return err == nil && !in.held && in.waiters == 0
			})
			time.Sleep(50 * time.Millisecond)
			if in, err := lkLockInfo(ctx, obs, r); err != nil || in.held {
				t.Fatalf("round %d: lock held again after its waiter left: %+v, %v", i, in, err)
			}
		}
	})
}

// 6. FENCE: strictly increasing fences, one counter key per slot.
func TestLockFence(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, 3*time.Minute)
	c := lkClient(t, p.Addr, 1)

	fenceLock := func(t *testing.T, args ...any) (string, int64) {
		t.Helper()
		v, err := c.Do(ctx, append([]any{"LOCK"}, args...)...).Slice()
		if err != nil || len(v) != 2 {
			t.Fatalf("LOCK %v = %#v, %v; want [token, fence]", args, v, err)
		}
		tok, ok1 := v[0].(string)
		f, ok2 := v[1].(int64)
		if !ok1 || !ok2 || (!slices.Contains(args, any("TOKEN")) && !lkTokenRe.MatchString(tok)) {
			t.Fatalf("LOCK %v = %#v; want [bulk token, integer fence]", args, v)
		}
		return tok, f
	}

	t.Run("StrictlyIncreasing", func(t *testing.T) {
		r := lkName(t, "r")
		var first, last int64
		for i := 0; i < 1000; i++ {
			tok, f := fenceLock(t, r, "PX", 10000, "FENCE")
			if f <= last {
				t.Fatalf("acquisition %d: fence %d after %d; want strictly increasing", i, f, last)
			}
			if i == 0 {
				first = f
			}
			last = f
			if n, err := c.Do(ctx, "UNLOCK", r).Int(); err != nil || n != 1 {
				t.Fatalf("UNLOCK (this connection's token %q) = %d, %v", tok, n, err)
			}
		}
		t.Logf("1000 acquisitions: fences %d .. %d", first, last)
		// A retried LOCK with the holder's token is not a new acquisition.
		tok, f := fenceLock(t, r, "PX", 10000, "FENCE", "TOKEN", "retry-"+lkRand(4))
		tok2, f2 := fenceLock(t, r, "PX", 10000, "FENCE", "TOKEN", tok)
		// The retry returns the slot's counter: the same fence unless another resource of the
		// slot was acquired meanwhile.
		if tok2 != tok || f2 < f || f <= last {
			t.Fatalf("retried LOCK FENCE TOKEN = %q %d after %q %d (last %d); want the same token and fence", tok2, f2, tok, f, last)
		}
		lkUnlock(t, ctx, c, r, tok)
	})

	t.Run("OneKeyPerSlot", func(t *testing.T) {
		const n = 10000
		run := lkRand(4)
		names := make([]string, n)
		used := map[uint16]bool{}
		for i := range names {
			names[i] = fmt.Sprintf("lkf:%s:%d", run, i)
			used[cluster.SlotOf([]byte(names[i]))] = true
		}
		tokens := make([]string, n)
		var fails lkFails
		for lo := 0; lo < n; lo += 500 {
			hi := min(lo+500, n)
			pipe := c.Pipeline()
			cmds := make([]*redis.Cmd, 0, hi-lo)
			for _, r := range names[lo:hi] {
				cmds = append(cmds, pipe.Do(ctx, "LOCK", r, "PX", 30000, "FENCE"))
			}
			_, _ = pipe.Exec(ctx)
			for i, cmd := range cmds {
				v, err := cmd.Slice()
				if err != nil || len(v) != 2 {
					fails.add("LOCK %s FENCE = %#v, %v", names[lo+i], v, err)
					continue
				}
				tokens[lo+i], _ = v[0].(string)
				if f, _ := v[1].(int64); f <= 0 {
					fails.add("LOCK %s FENCE: fence %#v", names[lo+i], v[1])
				}
			}
		}
		fails.check(t, "LOCK FENCE")
		for lo := 0; lo < n; lo += 500 {
			hi := min(lo+500, n)
			pipe := c.Pipeline()
			cmds := make([]*redis.Cmd, 0, hi-lo)
			for i := lo; i < hi; i++ {
				cmds = append(cmds, pipe.Do(ctx, "UNLOCK", names[i], tokens[i]))
			}
			_, _ = pipe.Exec(ctx)
			for i, cmd := range cmds {
				if k, err := cmd.Int(); err != nil || k != 1 {
					fails.add("UNLOCK %s = %d, %v", names[lo+i], k, err)
				}
			}
		}
		fails.check(t, "UNLOCK")

		bySlot := map[uint16]string{}
		total := 0
		for _, node := range lkPrimaries(t, ctx) {
			nc := lkDirect(t, node.addr)
			var cursor uint64
			for i := 0; i < 100000; i++ {
				keys, next, err := nc.Scan(ctx, cursor, "lock:fence:*", 1000).Result()
				if err != nil {
					t.Fatalf("SCAN %s: %v", node.addr, err)
				}
				for _, k := range keys {
					total++
					s := cluster.SlotOf([]byte(k))
					if prev, dup := bySlot[s]; dup {
						t.Errorf("fence keys %q and %q share slot %d", prev, k, s)
					}
					bySlot[s] = k
					if !strings.HasPrefix(k, "lock:fence:{") || !strings.HasSuffix(k, "}") || len(k) > len("lock:fence:{}")+16 {
						t.Errorf("fence key %q is not lock:fence:{<short slot tag>}", k)
					}
				}
				cursor = next
				if cursor == 0 {
					break
				}
			}
		}
		inUsed := 0
		for s := range used {
			if _, ok := bySlot[s]; ok {
				inUsed++
			} else {
				t.Errorf("slot %d was used by a LOCK FENCE but holds no fence key", s)
			}
		}
		// Fence keys persist (they must, to stay monotonic), so the cluster also holds those of
		// slots used by earlier runs and other tests: the bound per run is on the slots used here.
		t.Logf("%d resources locked with FENCE over %d distinct slots; %d fence keys in those slots, %d in the whole cluster",
			n, len(used), inUsed, total)
		if total > 16384 {
			t.Errorf("%d fence keys in the cluster; want at most 16384", total)
		}
		if inUsed > len(used) {
			t.Errorf("%d fence keys in the %d slots used; want at most one per slot", inUsed, len(used))
		}
	})
}

// 6b. FENCE across a manual failover of the resource's shard.
func TestLockFenceFailover(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, 4*time.Minute)
	c := lkClient(t, p.Addr, 1)
	r := lkName(t, "r")
	slot := cluster.SlotOf([]byte(r))

	fence := func() (string, int64, error) {
		v, err := c.Do(ctx, "LOCK", r, "PX", 10000, "FENCE").Slice()
		if err != nil {
			return "", 0, err
		}
		if len(v) != 2 {
			return "", 0, fmt.Errorf("reply %#v", v)
		}
		tok, _ := v[0].(string)
		f, _ := v[1].(int64)
		return tok, f, nil
	}
	var maxFence int64
	for i := 0; i < 20; i++ {
		tok, f, err := fence()
		if err != nil || f <= maxFence {
			t.Fatalf("LOCK FENCE before the failover = %d, %v (previous %d)", f, err, maxFence)
		}
		maxFence = f
		lkUnlock(t, ctx, c, r, tok)
	}

	primary, replicas := lkShard(t, ctx, slot)
	if len(replicas) == 0 {
		t.Fatalf("slot %d: primary %s has no replica to fail over to", slot, primary.addr)
	}
	replica := replicas[0]
	lkLinkUp(t, ctx, replica.addr, time.Minute)
	rc := lkDirect(t, replica.addr)
	t.Logf("slot %d: failing over from %s to %s; highest fence so far %d", slot, primary.addr, replica.addr, maxFence)
	if err := rc.Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatalf("CLUSTER FAILOVER on %s: %v", replica.addr, err)
	}
	lkUntil(t, 30*time.Second, 50*time.Millisecond, "role:master on "+replica.addr, func() bool {
		return lkInfoField(ctx, rc, "replication", "role") == "master"
	})
	promoted := time.Now()
	var tok string
	var f int64
	var lastErr error
	errs := map[string]int{}
	for attempt := 0; ; attempt++ {
		var err error
		tok, f, err = fence()
		if err == nil {
			break
		}
		if time.Since(promoted) > 60*time.Second {
			t.Fatalf("LOCK FENCE never succeeded after the failover: last error %v (errors seen: %v)", lastErr, errs)
		}
		lastErr = err
		errs[err.Error()]++
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the proxy served LOCK FENCE %s after the new primary took over (errors on the way: %v): fence %d",
		time.Since(promoted).Round(time.Millisecond), errs, f)
	if f <= maxFence {
		t.Fatalf("fence after failover %d; want > %d, every earlier fence", f, maxFence)
	}
	maxFence = f
	lkUnlock(t, ctx, c, r, tok)
	for i := 0; i < 20; i++ {
		tok, f, err := fence()
		if err != nil || f <= maxFence {
			t.Fatalf("LOCK FENCE after the failover = %d, %v (previous %d)", f, err, maxFence)
		}
		maxFence = f
		lkUnlock(t, ctx, c, r, tok)
	}
	t.Logf("highest fence after the failover %d", maxFence)
	// Leave the shard healthy for the next tests: the old primary replicates from the new one.
	lkLinkUp(t, ctx, primary.addr, 2*time.Minute)
}

// 7. Replica acknowledgement with the default configuration (locks.replicas auto, 200ms).
func TestLockReplicaAck(t *testing.T) {
	ctx := lkCtx(t, 3*time.Minute)
	r := lkName(t, "r")
	slot := cluster.SlotOf([]byte(r))
	primary, replica := lkHealthyShard(t, ctx, slot)
	pc := lkDirect(t, primary.addr)
	rc := lkDirect(t, replica.addr)
	// The proxy starts once the shard is healthy, so that its first view of the topology
	// counts the replica. (A replica paused by an earlier test can be missing from CLUSTER
	// SLOTS for a moment; the proxy would then see it at its next refresh, up to
	// upstream.refresh-interval later, and the loop below waits for that.)
	p := startProxy(t, nil)
	c := lkClient(t, p.Addr, 1)

	// (a) The acquisition is acknowledged with a WAIT on the owner primary.
	var before, after int64
	tries := 0
	lkUntil(t, 15*time.Second, 200*time.Millisecond, "a LOCK followed by WAIT on the owner primary", func() bool {
		tries++
		before = lkCalls(t, ctx, pc, "wait")
		tok := lkLock(t, ctx, c, r, "PX", 10000)
		after = lkCalls(t, ctx, pc, "wait")
		lkUnlock(t, ctx, c, r, tok)
		return after > before
	})
	t.Logf("LOCK on %s: cmdstat_wait calls %d -> %d (attempt %d)", primary.addr, before, after, tries)
	if v := lkInfoField(ctx, c, "proxy", "locks_noreplicas"); v != "0" {
		t.Errorf("INFO proxy locks_noreplicas = %q; want 0 with a healthy replica", v)
	}

	// (a2) An acknowledged LOCK travels on a connection of its own: it must not overtake the
	// UNLOCK pipelined before it.
	raw := dialRaw(t, p.Addr)
	raw.send(encode("LOCK", r, "PX", "10000", "TOKEN", "order-0"))
	if got, err := raw.reply(); got != "$7\r\norder-0\r\n" {
		t.Fatalf("LOCK = %q, %v", got, err)
	}
	for i := 1; i <= 30; i++ {
		prev, next := fmt.Sprintf("order-%d", i-1), fmt.Sprintf("order-%d", i)
		raw.send(encode("UNLOCK", r, prev) + encode("LOCK", r, "PX", "10000", "TOKEN", next))
		u, _ := raw.reply()
		l, err := raw.reply()
		if u != ":1\r\n" || l != fmt.Sprintf("$%d\r\n%s\r\n", len(next), next) {
			t.Fatalf("round %d: pipelined UNLOCK then LOCK = %q, %q (%v); want :1 and the new token", i, u, l, err)
		}
	}
	lkUnlock(t, ctx, c, r, "order-30")

	// (b) With the replica paused, LOCK answers NOREPLICAS and leaves nothing behind.
	pid, err := strconv.Atoi(lkInfoField(ctx, rc, "server", "process_id"))
	if err != nil || pid <= 1 {
		t.Fatalf("replica %s: process_id %d, %v", replica.addr, pid, err)
	}
	cont := lkPause(t, pid, replica.addr)
	defer cont()
	t0 := time.Now()
	v, err := c.Do(ctx, "LOCK", r, "PX", 10000).Text()
	d := time.Since(t0)
	key := "lock:{" + r + "}"
	left, getErr := pc.Get(ctx, key).Result()
	// With the client's own token the lock stays: the proxy cannot tell this acquisition from
	// a retry with the same token on another connection, which deleting it would betray.
	own := "own-" + lkRand(6)
	_, ownErr := c.Do(ctx, "LOCK", r, "PX", 10000, "TOKEN", own).Text()
	ownLeft, _ := pc.Get(ctx, key).Result()
	cont()
	if ownErr == nil || ownErr.Error() != lkNoReplicas || ownLeft != own {
		t.Errorf("LOCK TOKEN with the replica paused = %v, lock left %q; want %q and the lock kept with %q", ownErr, ownLeft, lkNoReplicas, own)
	}
	lkUnlock(t, ctx, c, r, own)
	t.Logf("LOCK with the replica paused answered %q / %v after %s (replica-timeout 200ms)", v, err, lkMs(d))
	if err == nil || err.Error() != lkNoReplicas {
		t.Errorf("LOCK with the replica paused = %q, %v; want %q", v, err, lkNoReplicas)
	}
	if d >= 600*time.Millisecond || d < 190*time.Millisecond {
		t.Errorf("NOREPLICAS after %v; want within [200ms, 600ms) (goal replica-timeout + 100ms)", d)
	}
	if !errors.Is(getErr, redis.Nil) {
		t.Errorf("direct GET %s on the primary after NOREPLICAS = %q, %v; want nil (no lock left behind)", key, left, getErr)
	}
	if v := lkInfoField(ctx, c, "proxy", "locks_noreplicas"); v != "2" {
		t.Errorf("INFO proxy locks_noreplicas = %q; want 2", v)
	}
	lkLinkUp(t, ctx, replica.addr, time.Minute)
	lkUntil(t, 20*time.Second, 50*time.Millisecond, "LOCK to succeed again with the replica back", func() bool {
		tok, err := c.Do(ctx, "LOCK", r, "PX", 10000).Text()
		if err != nil {
			return false
		}
		lkUnlock(t, ctx, c, r, tok)
		return true
	})

	// (b2) The same for a waiter's later attempt on the event loop: a release handed to a
	// LOCK WAIT TOKEN while the replica is paused answers NOREPLICAS and keeps the lock.
	hold := lkLock(t, ctx, c, r, "PX", 10000)
	waiter := lkClient(t, p.Addr, 1)
	own2 := "own2-" + lkRand(6)
	waited := make(chan error, 1)
	go func() {
		_, err := waiter.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 20000, "TOKEN", own2).Text()
		waited <- err
	}()
	lkWaiters(t, ctx, c, r, 1)
	cont3 := lkPause(t, pid, replica.addr)
	lkUnlock(t, ctx, c, r, hold)
	var waitErr error
	select {
	case waitErr = <-waited:
	case <-ctx.Done():
		t.Fatal("the waiter's LOCK WAIT TOKEN got no reply")
	}
	kept, _ := pc.Get(ctx, key).Result()
	cont3()
	if waitErr == nil || waitErr.Error() != lkNoReplicas || kept != own2 {
		t.Errorf("LOCK WAIT TOKEN handed the lock with the replica paused = %v, lock left %q; want %q and the lock kept with %q", waitErr, kept, lkNoReplicas, own2)
	}
	lkUnlock(t, ctx, c, r, own2)
	lkLinkUp(t, ctx, replica.addr, time.Minute)

	// (c) A client that is gone before the acknowledgement is counted still has its
	// unacknowledged lock released.
	cont2 := lkPause(t, pid, replica.addr)
	gone := dialRaw(t, p.Addr)
	gone.send(encode("LOCK", r, "PX", "10000"))
	_ = gone.c.Close()
	lkUntil(t, 3*time.Second, 20*time.Millisecond, "the lock of a client gone before NOREPLICAS to be released", func() bool {
		_, err := pc.Get(ctx, key).Result()
		return errors.Is(err, redis.Nil)
	})
	cont2()
	lkLinkUp(t, ctx, replica.addr, time.Minute)
}

// TestLockReplicaRejoin: with locks.replicas auto, a proxy that saw a shard without a replica
// notices the replica coming back within seconds (a slot found without a replica asks for the
// topology to be re-read), not at its next periodic refresh (an hour here): from then on
// acquisitions in that shard are acknowledged again.
func TestLockReplicaRejoin(t *testing.T) {
	ctx := lkCtx(t, 3*time.Minute)
	r := lkName(t, "rejoin")
	slot := cluster.SlotOf([]byte(r))
	primary, replica := lkHealthyShard(t, ctx, slot)
	pc := lkDirect(t, primary.addr)
	pid, err := strconv.Atoi(lkInfoField(ctx, lkDirect(t, replica.addr), "server", "process_id"))
	if err != nil || pid <= 1 {
		t.Fatalf("replica %s: process_id %d, %v", replica.addr, pid, err)
	}
	// (Cleanups run last first: the link is waited for after the replica is resumed.)
	t.Cleanup(func() { lkLinkUp(t, context.Background(), replica.addr, time.Minute) })
	cont := lkPause(t, pid, replica.addr)
	// Until the cluster marks it failed, CLUSTER SLOTS still lists it.
	lkUntil(t, 60*time.Second, 200*time.Millisecond, "CLUSTER SLOTS without the paused replica", func() bool {
		return !lkSlotsListReplica(ctx, slot, replica.addr, false)
	})
	// Proxies start although one node does not answer: their keyless control commands
	// (CLUSTER SLOTS, COMMAND, INFO) move on to the next node instead of timing out. (The
	// cluster client would pick any node, the paused replica included, in map order.)
	for range 4 {
		startProxy(t, nil).Stop(t)
	}
	p := startProxy(t, nil, "--config", writeConfig(t, "upstream:\n  refresh-interval: 1h\n"))
	c := lkClient(t, p.Addr, 1)
	before := lkCalls(t, ctx, pc, "wait")
	tok := lkLock(t, ctx, c, r, "PX", 10000)
	lkUnlock(t, ctx, c, r, tok)
	if after := lkCalls(t, ctx, pc, "wait"); after != before {
		t.Fatalf("WAIT calls on %s went %d -> %d with the shard's replica failed; want none", primary.addr, before, after)
	}

	cont()
	lkLinkUp(t, ctx, replica.addr, time.Minute)
	lkUntil(t, 30*time.Second, 200*time.Millisecond, "CLUSTER SLOTS listing the replica again", func() bool {
		return lkSlotsListReplica(ctx, slot, replica.addr, true)
	})
	start := time.Now()
	lkUntil(t, 10*time.Second, 100*time.Millisecond, "a LOCK acknowledged by the replica again", func() bool {
		before := lkCalls(t, ctx, pc, "wait")
		tok := lkLock(t, ctx, c, r, "PX", 10000)
		lkUnlock(t, ctx, c, r, tok)
		return lkCalls(t, ctx, pc, "wait") > before
	})
	t.Logf("acquisitions acknowledged again %v after CLUSTER SLOTS listed the replica", time.Since(start).Round(time.Millisecond))
}

// lkSlotsListReplica reports whether CLUSTER SLOTS lists addr among slot's replicas: on every
// other reachable node (every), or on any of them.
func lkSlotsListReplica(ctx context.Context, slot uint16, addr string, every bool) bool {
	seen, asked := 0, 0
	for _, a := range clusterAddrs {
		if a == addr {
			continue
		}
		c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
		slots, err := c.ClusterSlots(ctx).Result()
		_ = c.Close()
		if err != nil {
			continue
		}
		asked++
		for _, s := range slots {
			if int(slot) < s.Start || int(slot) > s.End {
				continue
			}
			for _, n := range s.Nodes[min(1, len(s.Nodes)):] {
				if n.Addr == addr {
					seen++
				}
			}
		}
	}
	if every {
		return asked > 0 && seen == asked
	}
	return seen > 0
}

// 8. SAFESET.
func TestLockSafeSet(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, time.Minute)
	a, b := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
	k := lkName(t, "k")
	t.Cleanup(func() { a.Del(context.Background(), k) })

	safeset := func(c *redis.Client, want string, args ...any) {
		t.Helper()
		v, err := c.Do(ctx, append([]any{"SAFESET", k}, args...)...).Text()
		if want == "" {
			if !errors.Is(err, redis.Nil) {
				t.Fatalf("SAFESET %v = %q, %v; want nil", args, v, err)
			}
			return
		}
		if err != nil || v != want {
			t.Fatalf("SAFESET %v = %q, %v; want %q", args, v, err, want)
		}
	}
	value := func(want string) {
		t.Helper()
		if v, err := a.Get(ctx, k).Result(); err != nil || v != want {
			t.Fatalf("GET = %q, %v; want %q", v, err, want)
		}
	}
	pttl := func(lo, hi time.Duration) {
		t.Helper()
		d, err := a.PTTL(ctx, k).Result()
		if err != nil || d < lo || d > hi {
			t.Fatalf("PTTL = %v, %v; want in [%v, %v]", d, err, lo, hi)
		}
	}
	noTTL := func() {
		t.Helper()
		if d, err := a.Do(ctx, "TTL", k).Int(); err != nil || d != -1 {
			t.Fatalf("TTL = %d, %v; want -1", d, err)
		}
	}

	safeset(a, "OK", "v1", 3600)
	value("v1")
	if d, err := a.TTL(ctx, k).Result(); err != nil || d < 3590*time.Second || d > 3600*time.Second {
		t.Fatalf("TTL after SAFESET k v 3600 = %v, %v", d, err)
	}
	safeset(a, "OK", "v2", "*")
	value("v2")
	pttl(3590*time.Second, 3600*time.Second)
	safeset(a, "OK", "v3")
	value("v3")
	noTTL()
	safeset(a, "OK", "v4", "EX", 100)
	pttl(95*time.Second, 100*time.Second)
	safeset(a, "OK", "v5", "KEEPTTL")
	value("v5")
	pttl(95*time.Second, 100*time.Second)
	safeset(a, "OK", "v6", "px", 5000)
	value("v6")
	pttl(4*time.Second, 5*time.Second)
	safeset(a, "OK", "v6b", "ex", 200)
	pttl(195*time.Second, 200*time.Second)

	tok := lkLock(t, ctx, a, k, "PX", 10000)
	safeset(b, "", "x", 60)
	safeset(b, "", "x")
	safeset(b, "", "x", "EX", 60)
	safeset(b, "", "x", "TOKEN", "wrong-token")
	safeset(b, "", "x", "KEEPTTL", "TOKEN", tok+"x")
	value("v6b")
	pttl(190*time.Second, 200*time.Second)
	safeset(b, "OK", "v7", "EX", 50, "TOKEN", tok) // any connection may use the token
	value("v7")
	pttl(45*time.Second, 50*time.Second)
	safeset(a, "OK", "v8", "TOKEN", tok)
	value("v8")
	noTTL()
	safeset(a, "OK", "v9", "PX", 7000, "TOKEN", tok)
	safeset(a, "OK", "v10", "KEEPTTL", "TOKEN", tok)
	value("v10")
	pttl(5*time.Second, 7*time.Second)
	safeset(a, "OK", "v11", 3600, "TOKEN", tok)
	pttl(3590*time.Second, 3600*time.Second)
	safeset(a, "OK", "v12", "TOKEN", tok, "*")
	value("v12")
	pttl(3590*time.Second, 3600*time.Second)
	lkUnlock(t, ctx, a, k, tok)
	safeset(a, "", "x", "TOKEN", tok)
	value("v12")

	// A fenced write: a holder whose lease ran out and whose lock was taken cannot overwrite.
	tA := lkLock(t, ctx, a, k, "PX", 200)
	time.Sleep(300 * time.Millisecond)
	tB := lkLock(t, ctx, b, k, "PX", 10000)
	safeset(a, "", "from-A", "TOKEN", tA)
	value("v12")
	safeset(b, "OK", "from-B", "TOKEN", tB)
	value("from-B")
	lkUnlock(t, ctx, b, k, tB)
	if n, err := a.Do(ctx, "UNLOCK", k, tA).Int(); err != nil || n != 0 {
		t.Fatalf("UNLOCK with the expired token = %d, %v; want 0", n, err)
	}
}

// 9. Bad arguments: exact Valkey-style replies.
func TestLockBadArguments(t *testing.T) {
	p := lkProxy(t, "")
	r := lkName(t, "r")
	long := strings.Repeat("t", 65)
	arity := func(cmd string) string { return "-ERR wrong number of arguments for '" + cmd + "' command\r\n" }
	const (
		syntax   = "-ERR syntax error\r\n"
		notInt   = "-ERR value is not an integer or out of range\r\n"
		expLock  = "-ERR invalid expire time in 'lock' command\r\n"
		expRenew = "-ERR invalid expire time in 'renew' command\r\n"
		expSafe  = "-ERR invalid expire time in 'safeset' command\r\n"
		waitLock = "-ERR invalid wait time in 'lock' command\r\n"
		badToken = "-ERR invalid token: 1 to 64 printable ASCII characters without spaces\r\n"
		noToken  = "-ERR UNLOCK without a token needs a lock taken on this connection; pass the token\r\n"
	)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"LOCK"}, arity("lock")},
		{[]string{"lock"}, arity("lock")},
		{[]string{"UNLOCK"}, arity("unlock")},
		{[]string{"UNLOCK", r, "tok", "x"}, arity("unlock")},
		{[]string{"UNLOCK", r, "tok", "x", "y", "z"}, arity("unlock")},
		{[]string{"RENEW"}, arity("renew")},
		{[]string{"RENEW", r}, arity("renew")},
		{[]string{"LOCKINFO"}, arity("lockinfo")},
		{[]string{"LOCKINFO", r, "x"}, arity("lockinfo")},
		{[]string{"LOCKID", "x"}, arity("lockid")},
		{[]string{"SAFESET"}, arity("safeset")},
		{[]string{"SAFESET", r}, arity("safeset")},
		{[]string{"LOCK", r, "EX", "x"}, notInt},
		{[]string{"LOCK", r, "PX", "1.5"}, notInt},
		{[]string{"LOCK", r, "WAIT", "abc"}, notInt},
		{[]string{"LOCK", r, "EX", ""}, notInt},
		{[]string{"LOCK", r, "PX", "99999999999999999999"}, notInt},
		{[]string{"LOCK", r, "EX", "1000000000000000000"}, expLock},
		{[]string{"LOCK", r, "EX", "0"}, expLock},
		{[]string{"LOCK", r, "PX", "0"}, expLock},
		{[]string{"LOCK", r, "PX", "-5"}, expLock},
		{[]string{"LOCK", r, "EX", "999999999"}, expLock},
		{[]string{"LOCK", r, "EX", "86401"}, expLock},
		{[]string{"LOCK", r, "WAIT", "-1"}, waitLock},
		{[]string{"LOCK", r, "WAIT", "300001"}, waitLock},
		{[]string{"LOCK", r, "WAIT", "999999999"}, waitLock},
		{[]string{"LOCK", r, "FOO"}, syntax},
		{[]string{"LOCK", r, "EX", "10", "EX", "10"}, syntax},
		{[]string{"LOCK", r, "PX", "10", "PX", "10"}, syntax},
		{[]string{"LOCK", r, "EX", "10", "PX", "100"}, syntax},
		{[]string{"LOCK", r, "WAIT", "1", "WAIT", "1"}, syntax},
		{[]string{"LOCK", r, "KEEPALIVE", "KEEPALIVE"}, syntax},
		{[]string{"LOCK", r, "FENCE", "fence"}, syntax},
		{[]string{"LOCK", r, "TOKEN", "a", "TOKEN", "a"}, syntax},
		{[]string{"LOCK", r, "EX"}, syntax},
		{[]string{"LOCK", r, "WAIT"}, syntax},
		{[]string{"LOCK", r, "TOKEN"}, syntax},
		{[]string{"LOCK", r, "TOKEN", "a b"}, badToken},
		{[]string{"LOCK", r, "TOKEN", long}, badToken},
		{[]string{"LOCK", r, "TOKEN", ""}, badToken},
		{[]string{"LOCK", r, "TOKEN", "a\x00"}, badToken},
		{[]string{"UNLOCK", r}, noToken},
		{[]string{"unlock", r}, noToken},
		{[]string{"RENEW", r, "tok", "EX"}, syntax},
		{[]string{"RENEW", r, "tok", "EX", "0"}, expRenew},
		{[]string{"RENEW", r, "tok", "PX", "-1"}, expRenew},
		{[]string{"RENEW", r, "tok", "EX", "abc"}, notInt},
		{[]string{"RENEW", r, "tok", "FOO", "10"}, syntax},
		{[]string{"RENEW", r, "tok", "EX", "10", "PX", "10"}, syntax},
		{[]string{"SAFESET", r, "v", "0"}, expSafe},
		{[]string{"SAFESET", r, "v", "-5"}, expSafe},
		{[]string{"SAFESET", r, "v", "EX", "0"}, expSafe},
		{[]string{"SAFESET", r, "v", "PX", "-1"}, expSafe},
		{[]string{"SAFESET", r, "v", "EX", "abc"}, notInt},
		{[]string{"SAFESET", r, "v", "abc"}, syntax},
		{[]string{"SAFESET", r, "v", "EX"}, syntax},
		{[]string{"SAFESET", r, "v", "EX", "10", "PX", "10"}, syntax},
		{[]string{"SAFESET", r, "v", "KEEPTTL", "EX", "10"}, syntax},
		{[]string{"SAFESET", r, "v", "10", "10"}, syntax},
		{[]string{"SAFESET", r, "v", "TOKEN"}, syntax},
		{[]string{"SAFESET", r, "v", "TOKEN", "a b"}, badToken},
		{[]string{"SAFESET", r, "v", "TOKEN", long}, badToken},
	}
	for _, tt := range tests {
		rc := dialRaw(t, p.Addr)
		rc.send(encode(tt.args...))
		got, err := rc.reply()
		if err != nil || got != tt.want {
			t.Errorf("%q: got %q, %v; want %q", tt.args, got, err, tt.want)
		}
		_ = rc.c.Close()
	}
	if len(tests) < 30 {
		t.Fatalf("only %d cases", len(tests))
	}

	// Nothing was locked or written by the failed commands.
	c := lkClient(t, p.Addr, 1)
	if in, err := lkLockInfo(context.Background(), c, r); err != nil || in.held {
		t.Fatalf("LOCKINFO after bad commands = %+v, %v; want free", in, err)
	}
	if n, err := c.Exists(context.Background(), r).Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS %s after bad SAFESETs = %d, %v", r, n, err)
	}

	// Command and option names are case-insensitive.
	rc := dialRaw(t, p.Addr)
	bulkTok := regexp.MustCompile(`^\$[0-9]+\r\n[!-~]+:[0-9]+\r\n$`)
	fenceRe := regexp.MustCompile(`^\*2\r\n\$[0-9]+\r\n[!-~]+:[0-9]+\r\n:[0-9]+\r\n$`)
	steps := []struct {
		args []string
		re   *regexp.Regexp
	}{
		{[]string{"lock", r, "px", "1000"}, bulkTok},
		{[]string{"Unlock", r}, regexp.MustCompile(`^:1\r\n$`)},
		{[]string{"LoCk", r, "Px", "1000", "wAiT", "0", "fEnCe", "KeepAlive"}, fenceRe},
		{[]string{"lockinfo", r}, regexp.MustCompile(`^\*6\r\n\$5\r\ntoken\r\n\$[0-9]+\r\n[!-~]+\r\n\$6\r\nttl-ms\r\n:[0-9]+\r\n\$7\r\nwaiters\r\n:0\r\n$`)},
		{[]string{"renew", r, "doesnotmatch", "ex", "5"}, regexp.MustCompile(`^:0\r\n$`)},
		{[]string{"UNLOCK", r}, regexp.MustCompile(`^:1\r\n$`)},
		{[]string{"LOCKINFO", r}, regexp.MustCompile(`^\$-1\r\n$|^\*-1\r\n$`)},
		{[]string{"lockid"}, regexp.MustCompile(`^\$[0-9]+\r\n[!-~]+\r\n$`)},
		{[]string{"safeset", r, "v", "ex", "10", "token", "nobody"}, regexp.MustCompile(`^\$-1\r\n$`)},
		{[]string{"safeset", r, "v", "keepttl"}, regexp.MustCompile(`^\+OK\r\n$`)},
		{[]string{"DEL", r}, regexp.MustCompile(`^:1\r\n$`)},
	}
	for _, st := range steps {
		rc.send(encode(st.args...))
		got, err := rc.reply()
		if err != nil || !st.re.MatchString(got) {
			t.Errorf("%q: got %q, %v; want %s", st.args, got, err, st.re)
		}
	}
}

// 10. locks.protect-keys.
func TestLockProtectKeys(t *testing.T) {
	ctx := lkCtx(t, time.Minute)
	r := lkName(t, "r")
	key := "lock:{" + r + "}"
	fenceKey := "lock:fence:{" + lkRand(3) + "}"
	data := "{" + r + "}data"
	const refused = "-ERR lock keys are managed by LOCK/UNLOCK\r\n"
	cc := clusterClient(t)
	t.Cleanup(func() { cc.Del(context.Background(), key, data) })

	t.Run("On", func(t *testing.T) {
		p := lkProxy(t, "")
		c := lkClient(t, p.Addr, 1)
		tok := lkLock(t, ctx, c, r, "PX", 20000)
		for _, k := range []string{key, fenceKey} {
			for _, args := range [][]string{
				{"SET", k, "x"},
				{"SET", k, "x", "NX"},
				{"set", k, "x", "XX", "KEEPTTL"},
				{"DEL", k},
				{"DEL", "other-key-" + r, k},
				{"UNLINK", k},
				{"EXPIRE", k, "100"},
				{"PEXPIRE", k, "100"},
				{"PERSIST", k},
				{"GETDEL", k},
				{"RENAME", k, k + "x"},
				{"EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", k},
				{"INCR", k},
			} {
				rc := dialRaw(t, p.Addr)
				rc.send(encode(args...))
				got, err := rc.reply()
				if err != nil || got != refused {
					t.Errorf("%q: got %q, %v; want %q", args, got, err, refused)
				}
				_ = rc.c.Close()
			}
		}
		// Writes whose destination is a lock key.
		if err := c.Set(ctx, data, "d", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"RENAME", data, key}, {"COPY", data, key, "REPLACE"}} {
			rc := dialRaw(t, p.Addr)
			rc.send(encode(args...))
			got, err := rc.reply()
			if err != nil || got != refused {
				t.Errorf("%q: got %q, %v; want %q", args, got, err, refused)
			}
			_ = rc.c.Close()
		}
		if v, err := cc.Get(ctx, key).Result(); err != nil || v != tok {
			t.Fatalf("the lock key after refused writes = %q, %v; want the token", v, err)
		}
		// Reads are allowed.
		if v, err := c.Get(ctx, key).Result(); err != nil || v != tok {
			t.Errorf("GET %s = %q, %v; want the token", key, v, err)
		}
		if d, err := c.PTTL(ctx, key).Result(); err != nil || d <= 0 || d > 20*time.Second {
			t.Errorf("PTTL %s = %v, %v", key, d, err)
		}
		if n, err := c.Exists(ctx, key).Result(); err != nil || n != 1 {
			t.Errorf("EXISTS %s = %d, %v; want 1", key, n, err)
		}
		if n, err := c.Exists(ctx, key, fenceKey, data).Result(); err != nil || n < 2 {
			t.Errorf("EXISTS over slots = %d, %v; want >= 2", n, err)
		}
		if v, err := c.Do(ctx, "EVAL_RO", "return redis.call('GET', KEYS[1])", 1, key).Text(); err != nil || v != tok {
			t.Errorf("EVAL_RO GET %s = %q, %v; want the token", key, v, err)
		}
		if _, err := c.Get(ctx, fenceKey).Result(); err != nil && !errors.Is(err, redis.Nil) {
			t.Errorf("GET %s: %v", fenceKey, err)
		}
		lkUnlock(t, ctx, c, r, tok)
	})

	t.Run("Off", func(t *testing.T) {
		p := lkProxy(t, "locks:\n  protect-keys: false\n  replica-timeout: 1s\n")
		c := lkClient(t, p.Addr, 1)
		if err := c.Set(ctx, key, "manual", 10*time.Second).Err(); err != nil {
			t.Fatalf("SET %s with protect-keys off: %v", key, err)
		}
		if v, err := c.Do(ctx, "LOCK", r).Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("LOCK under a manual SET = %q, %v; want nil", v, err)
		}
		if n, err := c.Del(ctx, key).Result(); err != nil || n != 1 {
			t.Fatalf("DEL %s with protect-keys off = %d, %v", key, n, err)
		}
	})
}

// LOCKID, TOKEN retries, reentrancy, UNLOCK without token, RENEW, LOCKINFO, pipelines.
func TestLockCommands(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, time.Minute)
	cc := clusterClient(t)

	t.Run("LockID", func(t *testing.T) {
		c1 := lkClient(t, p.Addr, 1)
		id1, err := c1.Do(ctx, "LOCKID").Text()
		if err != nil || id1 == "" {
			t.Fatalf("LOCKID = %q, %v", id1, err)
		}
		if again, err := c1.Do(ctx, "LOCKID").Text(); err != nil || again != id1 {
			t.Fatalf("LOCKID again on the same connection = %q, %v; want %q", again, err, id1)
		}
		id2, err := lkClient(t, p.Addr, 1).Do(ctx, "LOCKID").Text()
		if err != nil || id2 == id1 {
			t.Fatalf("LOCKID on another connection = %q, %v; want a different id than %q", id2, err, id1)
		}
		r := lkName(t, "r")
		seen := map[string]bool{}
		var last uint64
		for i := 0; i < 5; i++ {
			tok := lkLock(t, ctx, c1, r, "PX", 5000)
			m := lkTokenRe.FindStringSubmatch(tok)
			if m == nil || m[1] != id1 || seen[tok] {
				t.Fatalf("token %q: want %q:<n>, unique", tok, id1)
			}
			n, _ := strconv.ParseUint(m[2], 10, 64)
			if n <= last {
				t.Fatalf("token %q after sequence %d", tok, last)
			}
			last = n
			seen[tok] = true
			lkUnlock(t, ctx, c1, r, tok)
		}
		// A second proxy issues different ids.
		p2 := lkProxy(t, "")
		id3, err := lkClient(t, p2.Addr, 1).Do(ctx, "LOCKID").Text()
		if err != nil || id3 == id1 || id3 == id2 {
			t.Fatalf("LOCKID on another proxy = %q, %v", id3, err)
		}
		// At least 96 random bits: the id is long enough.
		if len(id1) < 16 {
			t.Errorf("LOCKID %q is too short to hold 96 random bits", id1)
		}
	})

	t.Run("TokenRetryAndNotReentrant", func(t *testing.T) {
		c := lkClient(t, p.Addr, 1)
		other := lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		mine := "my-token-" + lkRand(4)
		if v, err := c.Do(ctx, "LOCK", r, "PX", 5000, "TOKEN", mine).Text(); err != nil || v != mine {
			t.Fatalf("LOCK TOKEN %s = %q, %v", mine, v, err)
		}
		if v, err := cc.Get(ctx, "lock:{"+r+"}").Result(); err != nil || v != mine {
			t.Fatalf("direct GET of the lock key = %q, %v; want %q", v, err, mine)
		}
		// A retry (from any connection) with the holder's token succeeds and resets the TTL.
		if v, err := other.Do(ctx, "LOCK", r, "PX", 30000, "TOKEN", mine).Text(); err != nil || v != mine {
			t.Fatalf("retried LOCK TOKEN %s = %q, %v; want the same token", mine, v, err)
		}
		if d, err := cc.PTTL(ctx, "lock:{"+r+"}").Result(); err != nil || d < 25*time.Second || d > 30*time.Second {
			t.Fatalf("PTTL after the retry with PX 30000 = %v, %v", d, err)
		}
		if v, err := c.Do(ctx, "LOCK", r, "TOKEN", "someone-else").Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("LOCK with another token = %q, %v; want nil", v, err)
		}
		if v, err := c.Do(ctx, "LOCK", r).Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("LOCK without token by the holder's connection = %q, %v; want nil (not reentrant)", v, err)
		}
		lkUnlock(t, ctx, c, r, mine)

		r2 := lkName(t, "r2")
		tok := lkLock(t, ctx, c, r2, "PX", 5000)
		if v, err := c.Do(ctx, "LOCK", r2, "PX", 5000).Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("second LOCK on the same connection = %q, %v; want nil (not reentrant)", v, err)
		}
		if v, err := c.Do(ctx, "LOCK", r2, "WAIT", 100).Text(); !errors.Is(err, redis.Nil) {
			t.Fatalf("second LOCK WAIT 100 on the same connection = %q, %v; want nil", v, err)
		}
		lkUnlock(t, ctx, c, r2, tok)
	})

	t.Run("UnlockWithoutToken", func(t *testing.T) {
		rc := dialRaw(t, p.Addr)
		r := lkName(t, "r")
		do := func(args ...string) string {
			t.Helper()
			rc.send(encode(args...))
			got, err := rc.reply()
			if err != nil {
				t.Fatalf("%q: %v", args, err)
			}
			return got
		}
		if got := do("LOCK", r, "PX", "5000"); !strings.HasPrefix(got, "$") || got == "$-1\r\n" {
			t.Fatalf("LOCK = %q", got)
		}
		if got := do("UNLOCK", r); got != ":1\r\n" {
			t.Fatalf("UNLOCK without token after LOCK = %q; want :1", got)
		}
		if got := do("UNLOCK", r); got != ":0\r\n" {
			t.Fatalf("second UNLOCK without token = %q; want :0", got)
		}
		// The latest token wins; the lock was taken over by someone else meanwhile: 0.
		do("LOCK", r, "PX", "100")
		time.Sleep(150 * time.Millisecond)
		other := lkClient(t, p.Addr, 1)
		tok := lkLock(t, ctx, other, r, "PX", 5000)
		if got := do("UNLOCK", r); got != ":0\r\n" {
			t.Fatalf("UNLOCK without token after the lease ran out and another took it = %q; want :0", got)
		}
		lkUnlock(t, ctx, other, r, tok)
		// Another resource's lock of this connection does not count.
		r2 := lkName(t, "r2")
		if got := do("UNLOCK", r2); got != "-ERR UNLOCK without a token needs a lock taken on this connection; pass the token\r\n" {
			t.Fatalf("UNLOCK of another resource without token = %q", got)
		}
	})

	t.Run("Renew", func(t *testing.T) {
		c := lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		key := "lock:{" + r + "}"
		tok := lkLock(t, ctx, c, r, "PX", 1000)
		if n, err := c.Do(ctx, "RENEW", r, tok, "PX", 30000).Int(); err != nil || n != 1 {
			t.Fatalf("RENEW PX 30000 = %d, %v; want 1", n, err)
		}
		if d, err := cc.PTTL(ctx, key).Result(); err != nil || d < 25*time.Second || d > 30*time.Second {
			t.Fatalf("PTTL after RENEW PX 30000 = %v, %v", d, err)
		}
		if n, err := c.Do(ctx, "RENEW", r, tok).Int(); err != nil || n != 1 {
			t.Fatalf("RENEW (default TTL) = %d, %v; want 1", n, err)
		}
		if d, err := cc.PTTL(ctx, key).Result(); err != nil || d < 8*time.Second || d > 10*time.Second {
			t.Fatalf("PTTL after RENEW with the default TTL = %v, %v; want about 10s", d, err)
		}
		if n, err := c.Do(ctx, "RENEW", r, tok, "EX", 100).Int(); err != nil || n != 1 {
			t.Fatalf("RENEW EX 100 = %d, %v; want 1", n, err)
		}
		if d, err := cc.TTL(ctx, key).Result(); err != nil || d < 95*time.Second || d > 100*time.Second {
			t.Fatalf("TTL after RENEW EX 100 = %v, %v", d, err)
		}
		if n, err := c.Do(ctx, "RENEW", r, tok+"x").Int(); err != nil || n != 0 {
			t.Fatalf("RENEW with a wrong token = %d, %v; want 0", n, err)
		}
		lkUnlock(t, ctx, c, r, tok)
		if n, err := c.Do(ctx, "RENEW", r, tok).Int(); err != nil || n != 0 {
			t.Fatalf("RENEW after UNLOCK = %d, %v; want 0", n, err)
		}
		if n, err := cc.Exists(ctx, key).Result(); err != nil || n != 0 {
			t.Fatalf("RENEW after UNLOCK created the lock key: EXISTS = %d, %v", n, err)
		}
	})

	t.Run("LockInfo", func(t *testing.T) {
		c := lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		if in, err := lkLockInfo(ctx, c, r); err != nil || in.held {
			t.Fatalf("LOCKINFO of a free lock = %+v, %v; want nil", in, err)
		}
		tok := lkLock(t, ctx, c, r, "PX", 5000)
		in, err := lkLockInfo(ctx, c, r)
		if err != nil || in.token != tok || in.ttl <= 4000 || in.ttl > 5000 || in.waiters != 0 {
			t.Fatalf("LOCKINFO = %+v, %v; want token %q, ttl-ms ~5000, 0 waiters", in, err, tok)
		}
		w := lkClient(t, p.Addr, 2)
		ch := make(chan error, 2)
		for i := 0; i < 2; i++ {
			go func() {
				_, err := w.Do(ctx, "LOCK", r, "WAIT", 300).Text()
				ch <- err
			}()
		}
		lkWaiters(t, ctx, c, r, 2)
		for i := 0; i < 2; i++ {
			if err := <-ch; !errors.Is(err, redis.Nil) {
				t.Fatalf("waiter: %v; want nil after WAIT 300", err)
			}
		}
		lkWaiters(t, ctx, c, r, 0)
		lkUnlock(t, ctx, c, r, tok)
		if in, err := lkLockInfo(ctx, c, r); err != nil || in.held {
			t.Fatalf("LOCKINFO after UNLOCK = %+v, %v; want nil", in, err)
		}
	})

	t.Run("PipelinedUnlockWithoutToken", func(t *testing.T) {
		// UNLOCK without a token names "this connection's latest LOCK on resource": a LOCK
		// earlier in the same pipeline is that LOCK.
		c := lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		pipe := c.Pipeline()
		l := pipe.Do(ctx, "LOCK", r, "PX", 5000)
		i := pipe.Do(ctx, "LOCKINFO", r)
		u := pipe.Do(ctx, "UNLOCK", r)
		i2 := pipe.Do(ctx, "LOCKINFO", r)
		_, _ = pipe.Exec(ctx)
		tok, err := l.Text()
		if err != nil || !lkTokenRe.MatchString(tok) {
			t.Fatalf("pipelined LOCK = %q, %v", tok, err)
		}
		t.Cleanup(func() { c.Do(context.Background(), "UNLOCK", r, tok) })
		if v, err := i.Slice(); err != nil || len(v) != 6 || v[1] != tok {
			t.Errorf("pipelined LOCKINFO = %#v, %v", v, err)
		}
		if n, err := u.Int(); err != nil || n != 1 {
			t.Errorf("pipelined UNLOCK without token after LOCK in the same pipeline = %d, %v; want 1", n, err)
		}
		if err := i2.Err(); !errors.Is(err, redis.Nil) {
			t.Errorf("pipelined LOCKINFO after UNLOCK: error %v; want redis.Nil (the lock free)", err)
		}
	})

	t.Run("Pipelined", func(t *testing.T) {
		c := lkClient(t, p.Addr, 1)
		r := lkName(t, "r")
		mine0 := "pipe0-" + lkRand(4)
		pipe := c.Pipeline()
		l := pipe.Do(ctx, "LOCK", r, "PX", 5000, "TOKEN", mine0)
		i := pipe.Do(ctx, "LOCKINFO", r)
		u := pipe.Do(ctx, "UNLOCK", r, mine0)
		i2 := pipe.Do(ctx, "LOCKINFO", r)
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			t.Fatalf("pipeline: %v", err)
		}
		if tok, err := l.Text(); err != nil || tok != mine0 {
			t.Fatalf("pipelined LOCK TOKEN = %q, %v", tok, err)
		}
		if v, err := i.Slice(); err != nil || len(v) != 6 || v[1] != mine0 {
			t.Fatalf("pipelined LOCKINFO = %#v, %v", v, err)
		}
		if n, err := u.Int(); err != nil || n != 1 {
			t.Fatalf("pipelined UNLOCK = %d, %v; want 1", n, err)
		}
		if err := i2.Err(); !errors.Is(err, redis.Nil) {
			t.Fatalf("pipelined LOCKINFO after UNLOCK: %v; want nil", err)
		}

		// A LOCK WAIT in the middle of a pipeline: the commands after it are answered after it,
		// in order.
		holder := lkClient(t, p.Addr, 1)
		htok := lkLock(t, ctx, holder, r, "PX", 5000)
		k := lkName(t, "k")
		mine := "pipe-" + lkRand(4)
		go func() {
			time.Sleep(200 * time.Millisecond)
			holder.Do(ctx, "UNLOCK", r, htok)
		}()
		t0 := time.Now()
		pipe = c.Pipeline()
		l = pipe.Do(ctx, "LOCK", r, "PX", 5000, "WAIT", 3000, "TOKEN", mine)
		s := pipe.Do(ctx, "SAFESET", r, "guarded", "EX", 60, "TOKEN", mine)
		g := pipe.Get(ctx, r)
		set := pipe.Set(ctx, k, "after", time.Minute)
		u = pipe.Do(ctx, "UNLOCK", r, mine)
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("pipeline with LOCK WAIT: %v", err)
		}
		if v, err := l.Text(); err != nil || v != mine {
			t.Fatalf("pipelined LOCK WAIT = %q, %v", v, err)
		}
		if d := time.Since(t0); d < 150*time.Millisecond {
			t.Fatalf("pipelined LOCK WAIT answered after %v, before the holder released", d)
		}
		if v, err := s.Text(); err != nil || v != "OK" {
			t.Fatalf("pipelined SAFESET = %q, %v", v, err)
		}
		if v, err := g.Result(); err != nil || v != "guarded" {
			t.Fatalf("pipelined GET = %q, %v", v, err)
		}
		if err := set.Err(); err != nil {
			t.Fatal(err)
		}
		if n, err := u.Int(); err != nil || n != 1 {
			t.Fatalf("pipelined UNLOCK = %d, %v", n, err)
		}
		c.Del(ctx, r, k)
	})

	t.Run("TokensUniqueAcrossProxies", func(t *testing.T) {
		// Tokens are unique per acquisition; a raw check over many connections and two proxies.
		p2 := lkProxy(t, "")
		seen := map[string]bool{}
		ids := map[string]bool{}
		for i := 0; i < 20; i++ {
			addr := p.Addr
			if i%2 == 1 {
				addr = p2.Addr
			}
			rc := dialRaw(t, addr)
			rc.send(encode("LOCKID"))
			id, err := rc.reply()
			if err != nil || ids[id] {
				t.Fatalf("LOCKID %q, %v: repeated or failed", id, err)
			}
			ids[id] = true
			r := lkName(t, "r")
			rc.send(encode("LOCK", r, "PX", "5000"))
			tok, err := rc.reply()
			if err != nil || seen[tok] || !bytes.HasPrefix([]byte(tok), []byte("$")) {
				t.Fatalf("LOCK = %q, %v", tok, err)
			}
			seen[tok] = true
			rc.send(encode("UNLOCK", r))
			if got, err := rc.reply(); err != nil || got != ":1\r\n" {
				t.Fatalf("UNLOCK = %q, %v", got, err)
			}
			_ = rc.c.Close()
		}
	})
}

// A node that lost its script cache (SCRIPT FLUSH, a restart, a failover to a fresh replica) must
// not reorder a pipeline: the lock scripts retried as EVAL still run before the commands the
// client sent after them.
func TestLockScriptFlushKeepsPipelineOrder(t *testing.T) {
	p := lkProxy(t, "")
	ctx := lkCtx(t, time.Minute)
	r := lkName(t, "r")
	owner, _ := lkShard(t, ctx, cluster.SlotOf([]byte(r)))
	oc := lkDirect(t, owner.addr)
	c := lkClient(t, p.Addr, 1)
	t.Cleanup(func() { c.Del(context.Background(), r) })
	tok := "flush-" + lkRand(4)
	steps := []struct {
		cmds  [][]string
		want  []string
		final string
	}{
		{[][]string{{"SAFESET", r, "v1"}, {"SET", r, "v2"}, {"GET", r}},
			[]string{"+OK\r\n", "+OK\r\n", "$2\r\nv2\r\n"}, "v2"},
		{[][]string{{"LOCK", r, "PX", "10000", "TOKEN", tok}, {"SAFESET", r, "v3", "TOKEN", tok}, {"UNLOCK", r, tok}, {"GET", r}},
			[]string{fmt.Sprintf("$%d\r\n%s\r\n", len(tok), tok), "+OK\r\n", ":1\r\n", "$2\r\nv3\r\n"}, "v3"},
		{[][]string{{"SET", r, "v4"}, {"SAFESET", r, "v5"}, {"DEL", r}},
			[]string{"+OK\r\n", "+OK\r\n", ":1\r\n"}, ""},
	}
	for i, st := range steps {
		if err := oc.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH on %s: %v", owner.addr, err)
		}
		rc := dialRaw(t, p.Addr)
		var req strings.Builder
		for _, cmd := range st.cmds {
			req.WriteString(encode(cmd...))
		}
		rc.send(req.String())
		for j, want := range st.want {
			got, err := rc.reply()
			if err != nil || got != want {
				t.Errorf("pipeline %d after SCRIPT FLUSH on the owner: reply to %q = %q, %v; want %q", i, st.cmds[j], got, err, want)
			}
		}
		v, err := c.Get(ctx, r).Result()
		if st.final == "" {
			if !errors.Is(err, redis.Nil) {
				t.Errorf("pipeline %d: %s = %q, %v afterwards; want it deleted by the pipeline's last command", i, r, v, err)
			}
		} else if err != nil || v != st.final {
			t.Errorf("pipeline %d: %s = %q, %v afterwards; want %q, the pipeline's last write", i, r, v, err, st.final)
		}
		_ = rc.c.Close()
		c.Del(ctx, r)
	}
}

// TestLockHolderRetakesPastWaiters: the holder re-taking its lock with LOCK ... WAIT ... TOKEN
// (a retry after a lost reply) succeeds at once, although other clients of the proxy queue for
// the lock: it must not wait behind clients that wait for it. On the event loop and on the
// goroutine front end.
func TestLockHolderRetakesPastWaiters(t *testing.T) {
	for name, yaml := range map[string]string{"loop": lkConfig, "goroutines": lkConfig + "event-loops: 0\n"} {
		t.Run(name, func(t *testing.T) {
			ctx := lkCtx(t, time.Minute)
			p := lkProxy(t, yaml)
			r := lkName(t, "retake")
			a, a2, b := lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1), lkClient(t, p.Addr, 1)
			tok := "holder-" + lkRand(6)
			if v, err := a.Do(ctx, "LOCK", r, "PX", 10000, "TOKEN", tok).Text(); err != nil || v != tok {
				t.Fatalf("LOCK TOKEN = %q, %v", v, err)
			}
			got := make(chan string, 1)
			go func() {
				v, err := b.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 20000).Text()
				if err != nil {
					v = "error: " + err.Error()
				}
				got <- v
			}()
			lkWaiters(t, ctx, a, r, 1)
			if v, err := a2.Do(ctx, "LOCK", r, "PX", 10000, "WAIT", 3000, "TOKEN", tok).Text(); err != nil || v != tok {
				t.Fatalf("the holder's LOCK WAIT TOKEN with a waiter queued = %q, %v; want %q", v, err, tok)
			}
			lkWaiters(t, ctx, a, r, 1) // the waiter still waits
			lkUnlock(t, ctx, a, r, tok)
			select {
			case v := <-got:
				if !lkTokenRe.MatchString(v) {
					t.Fatalf("the waiter's LOCK WAIT = %q; want a token", v)
				}
				lkUnlock(t, ctx, b, r, v)
			case <-ctx.Done():
				t.Fatal("the waiter did not get the lock after the release")
			}
		})
	}
}
