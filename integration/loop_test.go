package integration

import (
	"fmt"
	"math/rand"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestLoopPipelineAcrossNodes pipelines thousands of commands over keys on every primary, with
// values from a few bytes to 300 KB, so that replies come back from the nodes out of order and
// larger than the loop's read buffer; every reply must come back in request order.
func TestLoopPipelineAcrossNodes(t *testing.T) {
	p := startProxy(t, nil)
	rc := dialRaw(t, p.Addr)
	rng := rand.New(rand.NewSource(7))
	const n = 3000
	vals := map[string]string{}
	var req strings.Builder
	var want []string
	for i := range n {
		k := "loop:" + strconv.Itoa(rng.Intn(400))
		switch {
		case i%3 == 0 || vals[k] == "":
			size := 1 + rng.Intn(64)
			if i%97 == 0 {
				size = 100_000 + rng.Intn(200_000)
			}
			v := strings.Repeat(string(rune('a'+i%26)), size)
			vals[k] = v
			req.WriteString(encode("SET", k, v))
			want = append(want, "+OK\r\n")
		case i%3 == 1:
			req.WriteString(encode("GET", k))
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", len(vals[k]), vals[k]))
		default:
			req.WriteString(encode("STRLEN", k))
			want = append(want, fmt.Sprintf(":%d\r\n", len(vals[k])))
		}
	}
	done := make(chan error, 1)
	go func() {
		_ = rc.c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		_, err := rc.c.Write([]byte(req.String()))
		done <- err
	}()
	for i := range want {
		got, err := rc.reply()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if got != want[i] {
			t.Fatalf("reply %d = %.80q, want %.80q", i, got, want[i])
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h := proxyInfoField(t, p, "proxy_loop_handovers"); h != "1" {
		// Only the INFO connection itself leaves the loop.
		t.Errorf("proxy_loop_handovers = %s, want 1: the pipeline should have stayed on the loop", h)
	}
}

// TestLoopHandOverMidPipeline sends, in one write, commands the loop serves, then one it hands
// over (MULTI), then more of both: the replies must be exactly those of one server, in order.
func TestLoopHandOverMidPipeline(t *testing.T) {
	p := startProxy(t, nil)
	rc := dialRaw(t, p.Addr)
	cmds := [][]string{
		{"PING"},
		{"CLIENT", "SETNAME", "looper"},
		{"SET", "{loopho}a", "1"},
		{"SET", "loopho:b", "2"},
		{"MGET", "{loopho}a", "{loopho}x"},
		{"GET", "loopho:b"},
		{"NOSUCHCOMMAND"},
		{"GET"},
		{"MULTI"},
		{"INCR", "{loopho}a"},
		{"GET", "{loopho}a"},
		{"EXEC"},
		{"MGET", "{loopho}a", "loopho:b"},
		{"CLIENT", "GETNAME"},
		{"GET", "{loopho}a"},
	}
	want := []string{
		"+PONG\r\n",
		"+OK\r\n",
		"+OK\r\n",
		"+OK\r\n",
		"*2\r\n$1\r\n1\r\n$-1\r\n",
		"$1\r\n2\r\n",
		"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: \r\n",
		"-ERR wrong number of arguments for 'get' command\r\n",
		"+OK\r\n",
		"+QUEUED\r\n",
		"+QUEUED\r\n",
		"*2\r\n:2\r\n$1\r\n2\r\n",
		"*2\r\n$1\r\n2\r\n$1\r\n2\r\n",
		"$6\r\nlooper\r\n",
		"$1\r\n2\r\n",
	}
	var all strings.Builder
	for _, c := range cmds {
		all.WriteString(encode(c...))
	}
	rc.send(all.String())
	for i := range want {
		got, err := rc.reply()
		if err != nil {
			t.Fatalf("reply %d (%q): %v", i, cmds[i], err)
		}
		if got != want[i] {
			t.Fatalf("reply %d (%q) = %q, want %q", i, cmds[i], got, want[i])
		}
	}
	// Then the same connection, now on its goroutine, keeps working.
	rc.send(encode("GET", "loopho:b"))
	if got, _ := rc.reply(); got != "$1\r\n2\r\n" {
		t.Fatalf("after the hand-over: GET = %q", got)
	}
}

// TestLoopsOff runs the proxy with event-loops 0: every client on a goroutine.
func TestLoopsOff(t *testing.T) {
	cfg := writeConfig(t, "event-loops: 0\n")
	p := startProxy(t, nil, "--config", cfg)
	if v := proxyInfoField(t, p, "proxy_event_loops"); v != "0" {
		t.Fatalf("proxy_event_loops = %s, want 0", v)
	}
	c := p.client(t)
	ctx := ctxT(t)
	for i := range 50 {
		k := "loopsoff:" + strconv.Itoa(i)
		if err := c.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, k).Int(); err != nil || v != i {
			t.Fatalf("GET %s = %d, %v", k, v, err)
		}
	}
	if v := proxyInfoField(t, p, "proxy_loop_handovers"); v != "0" {
		t.Fatalf("proxy_loop_handovers = %s, want 0", v)
	}
}

// TestStalledUpstream stops the (standalone) upstream with SIGSTOP: a request waiting on it is
// answered with an error once upstream.timeout passes, on the event loop and on the goroutine
// front end alike, and the next request after SIGCONT works on a new connection.
func TestStalledUpstream(t *testing.T) {
	ctx := ctxT(t)
	direct := redis.NewClient(&redis.Options{Addr: standaloneAddr, Protocol: 2})
	t.Cleanup(func() { _ = direct.Close() })
	pid, err := strconv.Atoi(lkInfoField(ctx, direct, "server", "process_id"))
	if err != nil || pid <= 0 {
		t.Fatalf("standalone server %s: process_id %d, %v", standaloneAddr, pid, err)
	}
	for _, loops := range []int{1, 0} {
		t.Run(fmt.Sprintf("event-loops=%d", loops), func(t *testing.T) {
			cfg := writeConfig(t, fmt.Sprintf("event-loops: %d\nupstream:\n  timeout: 1s\n", loops))
			p := startProxy(t, []string{standaloneAddr}, "--config", cfg)
			rc := dialRaw(t, p.Addr)
			rc.send(encode("SET", "stall:k", "v"))
			if got, err := rc.reply(); got != "+OK\r\n" {
				t.Fatalf("SET = %q, %v", got, err)
			}
			cont := lkPause(t, pid, standaloneAddr)
			start := time.Now()
			rc.send(encode("GET", "stall:k"))
			got, err := rc.reply()
			waited := time.Since(start)
			cont()
			t.Logf("GET while the upstream was stopped: %q after %v", got, waited.Round(time.Millisecond))
			if err != nil || !strings.HasPrefix(got, "-ERR proxy: upstream") {
				t.Fatalf("GET while the upstream is stopped = %q, %v; want an upstream error", got, err)
			}
			if waited < 900*time.Millisecond {
				t.Errorf("the error came after %v, before upstream.timeout (1s)", waited)
			}
			rc.send(encode("GET", "stall:k"))
			if got, err := rc.reply(); got != "$1\r\nv\r\n" {
				t.Fatalf("GET after SIGCONT = %q, %v", got, err)
			}
		})
	}
}

// TestLoopLockWait: LOCK WAIT is served on the event loop whether it gets the lock at once or
// has to wait: the waiter answers, then serves what the client pipelined after it, in order;
// waiters queue FIFO; a waiter that leaves never ends up holding the lock; WAIT runs out with
// nil. No client leaves the loop.
func TestLoopLockWait(t *testing.T) {
	p := startProxy(t, nil)
	r := "loopwait:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	a := dialRaw(t, p.Addr)
	a.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "ta") + encode("SET", "{"+r+"}k", "1") + encode("GET", "{"+r+"}k"))
	for i, want := range []string{"$2\r\nta\r\n", "+OK\r\n", "$1\r\n1\r\n"} {
		if got, err := a.reply(); got != want {
			t.Fatalf("free lock, reply %d = %q, %v; want %q", i, got, err, want)
		}
	}
	if h := proxyInfoField(t, p, "proxy_loop_handovers"); h != "1" {
		t.Errorf("proxy_loop_handovers = %s after a LOCK WAIT on a free lock; want 1 (the INFO connection)", h)
	}
	b := dialRaw(t, p.Addr)
	b.send(encode("GET", "{"+r+"}k") + encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "tb") + encode("GET", "{"+r+"}k"))
	if got, err := b.reply(); got != "$1\r\n1\r\n" {
		t.Fatalf("GET before the waiting LOCK = %q, %v", got, err)
	}
	time.Sleep(100 * time.Millisecond)
	a.send(encode("SET", "{"+r+"}k", "2") + encode("UNLOCK", r, "ta"))
	for i, want := range []string{"+OK\r\n", ":1\r\n"} {
		if got, err := a.reply(); got != want {
			t.Fatalf("holder, reply %d = %q, %v; want %q", i, got, err, want)
		}
	}
	for i, want := range []string{"$2\r\ntb\r\n", "$1\r\n2\r\n"} {
		if got, err := b.reply(); got != want {
			t.Fatalf("waiter, reply %d = %q, %v; want %q", i, got, err, want)
		}
	}
	b.send(encode("UNLOCK", r, "tb"))
	if got, err := b.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by the waiter = %q, %v", got, err)
	}

	// FIFO: b holds; c queues first, then d. Each release goes to the next in line.
	b.send(encode("LOCK", r, "PX", "10000", "TOKEN", "tb"))
	if got, err := b.reply(); got != "$2\r\ntb\r\n" {
		t.Fatalf("LOCK by b = %q, %v", got, err)
	}
	c := dialRaw(t, p.Addr)
	c.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "tc"))
	time.Sleep(50 * time.Millisecond)
	d := dialRaw(t, p.Addr)
	d.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "td") + encode("PING"))
	time.Sleep(50 * time.Millisecond)
	// gone queues too, and leaves while it waits.
	gone := dialRaw(t, p.Addr)
	gone.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "tgone"))
	time.Sleep(50 * time.Millisecond)
	if got := lockInfoWaiters(t, b, r); got != 3 {
		t.Fatalf("LOCKINFO waiters = %d, want 3", got)
	}
	_ = gone.c.Close()
	b.send(encode("UNLOCK", r, "tb"))
	if got, err := b.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by b = %q, %v", got, err)
	}
	if got, err := c.reply(); got != "$2\r\ntc\r\n" {
		t.Fatalf("first in line = %q, %v; want tc", got, err)
	}
	c.send(encode("UNLOCK", r, "tc"))
	if got, err := c.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by c = %q, %v", got, err)
	}
	for i, want := range []string{"$2\r\ntd\r\n", "+PONG\r\n"} {
		if got, err := d.reply(); got != want {
			t.Fatalf("second in line, reply %d = %q, %v; want %q", i, got, err, want)
		}
	}
	d.send(encode("UNLOCK", r, "td"))
	if got, err := d.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by d = %q, %v", got, err)
	}
	// The client that left is no longer queued and never got the lock.
	b.send(encode("LOCKINFO", r))
	if got, err := b.reply(); got != "$-1\r\n" && got != "_\r\n" {
		t.Fatalf("LOCKINFO after every release = %q, %v; want nil (free)", got, err)
	}

	// WAIT runs out: nil, then the pipelined command.
	b.send(encode("LOCK", r, "PX", "10000", "TOKEN", "tb2"))
	if got, err := b.reply(); got != "$3\r\ntb2\r\n" {
		t.Fatalf("LOCK by b = %q, %v", got, err)
	}
	start := time.Now()
	c.send(encode("LOCK", r, "WAIT", "200") + encode("PING"))
	for i, want := range []string{"$-1\r\n", "+PONG\r\n"} {
		if got, err := c.reply(); got != want {
			t.Fatalf("WAIT 200 on a held lock, reply %d = %q, %v; want %q", i, got, err, want)
		}
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("WAIT 200 answered after %v", el)
	}
	if h := proxyInfoField(t, p, "proxy_loop_handovers"); h != "2" {
		t.Errorf("proxy_loop_handovers = %s; want 2 (the two INFO connections)", h)
	}
}

// lockInfoWaiters reads the waiters field of LOCKINFO r.
func lockInfoWaiters(t *testing.T, rc *rawConn, r string) int {
	t.Helper()
	rc.send(encode("LOCKINFO", r))
	got, err := rc.reply()
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndex(got, ":")
	n, err := strconv.Atoi(strings.TrimSpace(got[i+1:]))
	if i < 0 || err != nil {
		t.Fatalf("LOCKINFO = %q", got)
	}
	return n
}

// TestLoopWaiterLeaves: a client that leaves while its LOCK WAIT waits on the loop never ends up
// holding the lock, and what it pipelined behind the LOCK is not run. Both a close and a
// half-close, with and without replica acknowledgement (the attempts travel on different
// upstream connections).
func TestLoopWaiterLeaves(t *testing.T) {
	for _, replicas := range []string{"0", "auto"} {
		t.Run("replicas-"+replicas, func(t *testing.T) {
			p := startProxy(t, nil, "--config", writeConfig(t, "locks:\n  replicas: "+replicas+"\n"))
			for _, half := range []bool{false, true} {
				r := fmt.Sprintf("leaves:%s:%v:%d", replicas, half, time.Now().UnixNano())
				k := "{" + r + "}after"
				holder := dialRaw(t, p.Addr)
				holder.send(encode("LOCK", r, "PX", "10000", "TOKEN", "th"))
				if got, err := holder.reply(); got != "$2\r\nth\r\n" {
					t.Fatalf("LOCK by the holder = %q, %v", got, err)
				}
				// Not queued behind anyone: its first attempt fails, then it waits.
				w := dialRaw(t, p.Addr)
				w.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", "tw") + encode("INCR", k))
				time.Sleep(100 * time.Millisecond)
				if n := lockInfoWaiters(t, holder, r); n != 1 {
					t.Fatalf("waiters = %d, want 1", n)
				}
				if half {
					_ = w.c.(*net.TCPConn).CloseWrite()
				} else {
					_ = w.c.Close()
				}
				time.Sleep(100 * time.Millisecond)
				holder.send(encode("UNLOCK", r, "th"))
				if got, err := holder.reply(); got != ":1\r\n" {
					t.Fatalf("UNLOCK by the holder = %q, %v", got, err)
				}
				time.Sleep(100 * time.Millisecond)
				holder.send(encode("LOCKINFO", r) + encode("GET", k))
				if got, err := holder.reply(); got != "$-1\r\n" {
					t.Fatalf("half-close %v: LOCKINFO after the release = %q, %v; want nil: the client that left holds it", half, got, err)
				}
				if got, err := holder.reply(); got != "$-1\r\n" {
					t.Fatalf("half-close %v: GET of the key the leaver pipelined = %q, %v; want nil (not run)", half, got, err)
				}
				if half {
					// The half-closed client gets no reply, and its connection is closed.
					_ = w.c.SetReadDeadline(time.Now().Add(2 * time.Second))
					if got, err := w.reply(); err == nil {
						t.Fatalf("half-closed waiter got %q", got)
					}
				}
			}
		})
	}
}

// TestLoopHandoff: an UNLOCK whose lock has a waiter on the loop carries that waiter's attempt
// behind it (on the acknowledged connection when the waiter needs replicas): the waiter gets
// the lock, both clients' pipelined commands are answered in order, and the release counts as
// handed over. With locks.handoff false the same sequence works through the announced release.
func TestLoopHandoff(t *testing.T) {
	for _, cfg := range []struct{ replicas, handoff string }{{"0", "true"}, {"auto", "true"}, {"0", "false"}} {
		replicas := cfg.replicas
		t.Run("replicas-"+replicas+"-handoff-"+cfg.handoff, func(t *testing.T) {
			p := startProxy(t, nil, "--config", writeConfig(t, "locks:\n  replicas: "+replicas+"\n  handoff: "+cfg.handoff+"\n"))
			r := fmt.Sprintf("handoff:%s:%d", replicas, time.Now().UnixNano())
			k := "{" + r + "}k"
			a, b := dialRaw(t, p.Addr), dialRaw(t, p.Addr)
			const rounds = 10
			for i := range rounds {
				ta, tb := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
				a.send(encode("LOCK", r, "PX", "10000", "TOKEN", ta))
				if got, err := a.reply(); got != bulk(ta) {
					t.Fatalf("round %d: LOCK by a = %q, %v", i, got, err)
				}
				b.send(encode("LOCK", r, "PX", "10000", "WAIT", "5000", "TOKEN", tb) + encode("INCR", k))
				waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, a, r) == 1 })
				// Let the waiter subscribe to the release channel and make its attempt: an UNLOCK
				// meanwhile releases as usual (and wakes it), instead of handing over.
				time.Sleep(150 * time.Millisecond)
				a.send(encode("UNLOCK", r, ta) + encode("INCR", k) + encode("UNLOCK", r, ta))
				for j, want := range []string{":1\r\n", fmt.Sprintf(":%d\r\n", 2*i+1), ":0\r\n"} {
					if got, err := a.reply(); got != want {
						t.Fatalf("round %d: a's reply %d = %q, %v; want %q", i, j, got, err, want)
					}
				}
				if got, err := b.reply(); got != bulk(tb) {
					t.Fatalf("round %d: the waiter got %q, %v; want its token", i, got, err)
				}
				if got, err := b.reply(); got != fmt.Sprintf(":%d\r\n", 2*i+2) {
					t.Fatalf("round %d: the waiter's pipelined INCR = %q, %v", i, got, err)
				}
				b.send(encode("UNLOCK", r, tb))
				if got, err := b.reply(); got != ":1\r\n" {
					t.Fatalf("round %d: UNLOCK by the waiter = %q, %v", i, got, err)
				}
			}
			want := strconv.Itoa(rounds)
			if cfg.handoff == "false" {
				want = "0" // every release announced, the waiter woken to try
			}
			if v := proxyInfoField(t, p, "locks_handed_over"); v != want {
				t.Errorf("locks_handed_over = %s, want %s", v, want)
			}
		})
	}
}

func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }

// TestLoopHandoffExpiry: after a handoff, the next waiter in line sleeps until the new holder's
// TTL at the latest, not until the re-check: a holder that never releases is outlived at its
// TTL (the re-check is set far beyond WAIT here, so only the TTL can let the waiter in).
func TestLoopHandoffExpiry(t *testing.T) {
	p := startProxy(t, nil, "--config", writeConfig(t, "locks:\n  replicas: 0\n  recheck-interval: 60s\n"))
	r := fmt.Sprintf("handoff-expiry:%d", time.Now().UnixNano())
	a, b, c := dialRaw(t, p.Addr), dialRaw(t, p.Addr), dialRaw(t, p.Addr)
	a.send(encode("LOCK", r, "PX", "10000", "TOKEN", "ta"))
	if got, err := a.reply(); got != bulk("ta") {
		t.Fatalf("LOCK by a = %q, %v", got, err)
	}
	b.send(encode("LOCK", r, "PX", "500", "WAIT", "10000", "TOKEN", "tb"))
	waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, a, r) == 1 })
	c.send(encode("LOCK", r, "PX", "10000", "WAIT", "10000", "TOKEN", "tc"))
	waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, a, r) == 2 })
	time.Sleep(150 * time.Millisecond)
	a.send(encode("UNLOCK", r, "ta"))
	if got, err := a.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by a = %q, %v", got, err)
	}
	if got, err := b.reply(); got != bulk("tb") {
		t.Fatalf("b got %q, %v; want the lock", got, err)
	}
	// b never releases: its 500 ms lease runs out, and c is let in then.
	if got, err := c.reply(); got != bulk("tc") {
		t.Fatalf("c got %q, %v; want the lock once b's TTL ran out", got, err)
	}
	if v := proxyInfoField(t, p, "locks_handed_over"); v != "1" {
		t.Errorf("locks_handed_over = %s, want 1", v)
	}
}

// TestLoopHandoffFairness: a release handed over reports whether waiters of other proxies wait
// for the lock too (they subscribe to its release channel); if so, the next release is
// announced instead of handed over, and the other proxy's waiter gets the lock within two
// releases instead of waiting out its WAIT while this proxy's clients pass the lock around.
func TestLoopHandoffFairness(t *testing.T) {
	p1, p2 := startProxy(t, nil), startProxy(t, nil)
	r := fmt.Sprintf("fair:%d", time.Now().UnixNano())
	a, b, remote := dialRaw(t, p1.Addr), dialRaw(t, p1.Addr), dialRaw(t, p2.Addr)
	a.send(encode("LOCK", r, "PX", "10000", "TOKEN", "ta"))
	if got, err := a.reply(); got != bulk("ta") {
		t.Fatalf("LOCK by a = %q, %v", got, err)
	}
	b.send(encode("LOCK", r, "PX", "10000", "WAIT", "20000", "TOKEN", "tb"))
	remote.send(encode("LOCK", r, "PX", "10000", "WAIT", "20000", "TOKEN", "tr"))
	waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, a, r) == 1 })
	rc := dialRaw(t, p2.Addr)
	waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, rc, r) == 1 })
	time.Sleep(150 * time.Millisecond) // both waiters subscribed and idle
	// a hands over to b, and learns that p2 waits too.
	a.send(encode("UNLOCK", r, "ta"))
	if got, err := a.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by a = %q, %v", got, err)
	}
	if got, err := b.reply(); got != bulk("tb") {
		t.Fatalf("b got %q, %v; want the lock handed over", got, err)
	}
	if v := proxyInfoField(t, p1, "locks_handed_over"); v != "1" {
		t.Fatalf("locks_handed_over = %s after the first release, want 1", v)
	}
	// a queues again behind b; b's release is announced, not handed to a.
	a.send(encode("LOCK", r, "PX", "10000", "WAIT", "20000", "TOKEN", "ta2"))
	waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, b, r) == 1 })
	time.Sleep(50 * time.Millisecond)
	b.send(encode("UNLOCK", r, "tb"))
	if got, err := b.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by b = %q, %v", got, err)
	}
	if v := proxyInfoField(t, p1, "locks_handed_over"); v != "1" {
		t.Fatalf("locks_handed_over = %s after the second release, want still 1: the other proxy's waiter had its turn", v)
	}
	// Whoever won that race, the remote waiter holds the lock within one more release.
	var holder string
	waitFor(t, 5*time.Second, func() bool {
		b.send(encode("LOCKINFO", r))
		got, err := b.reply()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.Contains(got, "\r\ntr\r\n"):
			holder = "tr"
		case strings.Contains(got, "\r\nta2\r\n"):
			holder = "ta2"
		}
		return holder != ""
	})
	if holder == "tr" {
		if got, err := remote.reply(); got != bulk("tr") {
			t.Fatalf("remote waiter got %q, %v", got, err)
		}
		t.Log("the other proxy's waiter won the announced release")
		return
	}
	if got, err := a.reply(); got != bulk("ta2") {
		t.Fatalf("a got %q, %v; want the lock", got, err)
	}
	a.send(encode("UNLOCK", r, "ta2"))
	if got, err := a.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by a = %q, %v", got, err)
	}
	if got, err := remote.reply(); got != bulk("tr") {
		t.Fatalf("remote waiter got %q, %v; want the lock after a's release", got, err)
	}
	t.Log("this proxy's waiter won the announced release; the other proxy's got the next")
}

// TestLoopManyWaiters: 300 clients queue for one lock on the loop; each release goes to the
// next in line, in arrival order, every one handed over behind the UNLOCK, and none is lost.
func TestLoopManyWaiters(t *testing.T) {
	p := startProxy(t, nil, "--config", writeConfig(t, "locks:\n  replicas: 0\n"))
	r := fmt.Sprintf("many:%d", time.Now().UnixNano())
	holder := dialRaw(t, p.Addr)
	holder.send(encode("LOCK", r, "PX", "30000", "TOKEN", "t-holder"))
	if got, err := holder.reply(); got != bulk("t-holder") {
		t.Fatalf("LOCK by the holder = %q, %v", got, err)
	}
	const n = 300
	ws := make([]*rawConn, n)
	for i := range ws {
		ws[i] = dialRaw(t, p.Addr)
		ws[i].send(encode("LOCK", r, "PX", "30000", "WAIT", "60000", "TOKEN", fmt.Sprintf("t%d", i)))
		// Arrival order is queue order: the next one is sent once this one is queued.
		waitFor(t, 5*time.Second, func() bool { return lockInfoWaiters(t, holder, r) == i+1 })
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	holder.send(encode("UNLOCK", r, "t-holder"))
	if got, err := holder.reply(); got != ":1\r\n" {
		t.Fatalf("UNLOCK by the holder = %q, %v", got, err)
	}
	for i, w := range ws {
		tok := fmt.Sprintf("t%d", i)
		if got, err := w.reply(); got != bulk(tok) {
			t.Fatalf("waiter %d got %q, %v; want the lock in arrival order", i, got, err)
		}
		w.send(encode("UNLOCK", r, tok))
		if got, err := w.reply(); got != ":1\r\n" {
			t.Fatalf("UNLOCK by waiter %d = %q, %v", i, got, err)
		}
	}
	t.Logf("%d handoffs in %v", n, time.Since(start).Round(time.Millisecond))
	if v := proxyInfoField(t, p, "locks_handed_over"); v != strconv.Itoa(n) {
		t.Errorf("locks_handed_over = %s, want %d", v, n)
	}
	if v := proxyInfoField(t, p, "locks_waiting_clients"); v != "0" {
		t.Errorf("locks_waiting_clients = %s after every wait ended, want 0", v)
	}
}
