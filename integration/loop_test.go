package integration

import (
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
			var resume sync.Once
			cont := func() { resume.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatalf("SIGSTOP %d: %v", pid, err)
			}
			t.Cleanup(cont)
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

// TestLoopLockWait: a LOCK WAIT that gets the lock at once is answered on the event loop; one
// that has to wait hands its client over, which waits, answers, and serves what the client
// pipelined after it, in order.
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
	if h := proxyInfoField(t, p, "proxy_loop_handovers"); h != "3" {
		t.Errorf("proxy_loop_handovers = %s; want 3 (the waiter and two INFO connections)", h)
	}
}
