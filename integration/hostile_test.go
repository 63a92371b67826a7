package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// The hostile-input tests (reliability.md §5.1 P1–P5, P10, P11 at the process level): each
// input is sent on its own connection, and afterwards a second connection must still get
// +PONG and a SET/GET round trip, the process must be alive and must not have logged a panic.

// hostileRSS returns the VmRSS of a process in KiB.
func hostileRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// hostileCPU returns the user+system CPU time of a process (/proc/<pid>/stat fields 14 and 15,
// in USER_HZ = 100 ticks per second).
func hostileCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may contain spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// f[0] is field 3 (state), so fields 14 and 15 are f[11] and f[12].
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad /proc/%d/stat: %q", pid, s)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// hostileHealthy checks, on a new connection, that the proxy answers PING and a SET/GET round
// trip, that the process is alive, and that it logged no panic.
func hostileHealthy(t *testing.T, p *proxyProc, label string) {
	t.Helper()
	if !p.Alive() {
		t.Fatalf("%s: proxy process exited\n%s", label, p.logs.String())
	}
	rc := dialRaw(t, p.Addr)
	defer rc.c.Close()
	key := "hostile:health:" + label
	val := fmt.Sprintf("v-%d", time.Now().UnixNano())
	rc.send(encode("PING") + encode("SET", key, val) + encode("GET", key) + encode("DEL", key))
	for i, want := range []string{"+PONG\r\n", "+OK\r\n", fmt.Sprintf("$%d\r\n%s\r\n", len(val), val), ":1\r\n"} {
		got, err := rc.reply()
		if err != nil || got != want {
			t.Fatalf("%s: health reply %d = %q, %v; want %q", label, i, got, err, want)
		}
	}
	if strings.Contains(strings.ToLower(p.logs.String()), "panic") {
		t.Fatalf("%s: the proxy logged a panic:\n%s", label, p.logs.String())
	}
}

// hostileClosed checks that the peer closes the connection (EOF or reset) within d, with no
// further reply bytes.
func hostileClosed(t *testing.T, rc *rawConn, d time.Duration) {
	t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	b, err := rc.r.ReadByte()
	switch {
	case err == nil:
		rest, _ := rc.r.Peek(rc.r.Buffered())
		t.Fatalf("connection still open: got %q", append([]byte{b}, rest...))
	case errors.Is(err, io.EOF) || isConnReset(err):
	default:
		t.Fatalf("connection not closed within %v: %v", d, err)
	}
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && (strings.Contains(op.Err.Error(), "reset") || strings.Contains(op.Err.Error(), "broken pipe"))
}

// hostileDirect sends raw bytes to a Valkey server and returns its first reply.
func hostileDirect(t *testing.T, addr, req string) string {
	t.Helper()
	rc := dialRaw(t, addr)
	defer rc.c.Close()
	rc.send(req)
	got, err := rc.reply()
	if err != nil {
		t.Fatalf("direct %s: %v", addr, err)
	}
	return got
}

// hostileOwner returns the cluster node that serves key: the one node whose reply to a
// read-only probe is not a MOVED for the key's slot.
func hostileOwner(t *testing.T, key string) string {
	t.Helper()
	moved := fmt.Sprintf("-MOVED %d ", cluster.SlotOf([]byte(key)))
	for _, addr := range clusterAddrs {
		if r := hostileDirect(t, addr, encode("EXISTS", key)); !strings.HasPrefix(r, moved) {
			return addr
		}
	}
	t.Fatalf("no node owns %q", key)
	return ""
}

type hostileCase struct {
	name string
	// chunks are sent in order, with a short pause between them.
	chunks []string
	// replies are expected exactly, in order.
	replies []string
	// closed: the proxy must close the connection after the replies.
	closed bool
}

func TestHostileInputs(t *testing.T) {
	p := startProxy(t, nil)
	pid := p.cmd.Process.Pid
	hostileHealthy(t, p, "start")
	rssStart := hostileRSS(t, pid)

	proto := func(msg string) string { return "-ERR Protocol error: " + msg + "\r\n" }
	cases := []hostileCase{
		{"bulk length int64 max", []string{"*1\r\n$9223372036854775807\r\n"}, []string{proto("invalid bulk length")}, true},
		{"multibulk length int64 max + 1", []string{"*9223372036854775808\r\n"}, []string{proto("invalid multibulk length")}, true},
		{"multibulk -1 then PING", []string{"*-1\r\n", encode("PING")}, []string{"+PONG\r\n"}, false},
		{"multibulk 0 then PING", []string{"*0\r\n", encode("PING")}, []string{"+PONG\r\n"}, false},
		{"multibulk -1, 0 and PING in one write", []string{"*-1\r\n*0\r\n" + encode("PING")}, []string{"+PONG\r\n"}, false},
		{"protocol.tcl *0 then inline PING", []string{"*0\r\nPING\r\n"}, []string{"+PONG\r\n"}, false},
		{"empty query", []string{"\r\n" + encode("PING")}, []string{"+PONG\r\n"}, false},
		{"out of range multibulk length", []string{"*3000000000\r\n"}, []string{proto("invalid multibulk length")}, true},
		{"negative bulk length", []string{"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"}, []string{proto("invalid bulk length")}, true},
		{"bulk length over max-bulk", []string{"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n"}, []string{proto("invalid bulk length")}, true},
		{"non-number bulk length", []string{"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n"}, []string{proto("invalid bulk length")}, true},
		{"bulk length +5", []string{"*1\r\n$+5\r\nhello\r\n"}, []string{proto("invalid bulk length")}, true},
		{"bulk length -0", []string{"*1\r\n$-0\r\n\r\n"}, []string{proto("invalid bulk length")}, true},
		{"bulk length 20 digits", []string{"*1\r\n$12345678901234567890\r\n"}, []string{proto("invalid bulk length")}, true},
		{"multibulk not followed by bulk", []string{"*1\r\nfoo\r\n"}, []string{proto("expected '$', got 'f'")}, true},
		{"wrong bulk terminator", []string{"*1\r\n$4\r\nPINGxx"}, []string{proto("invalid bulk terminator")}, true},
		{"nested array", []string{"*1\r\n*1\r\n$4\r\nPING\r\n"}, []string{proto("expected '$', got '*'")}, true},
		{"integer item", []string{"*1\r\n:1\r\n"}, []string{proto("expected '$', got ':'")}, true},
		{"unbalanced quotes", []string{"set \"\"\"test-key\"\"\" test-value\r\nping\r\n"}, []string{proto("unbalanced quotes in request")}, true},
		{"HTTP POST", []string{"POST / HTTP/1.1\r\nHost: x\r\n\r\n"}, nil, true},
		{"Host: first line", []string{"Host: x\r\n\r\n"}, nil, true},
		{"POST as multibulk", []string{encode("POST", "/")}, nil, true},
		{"PING then POST", []string{encode("PING") + "POST / HTTP/1.1\r\n"}, []string{"+PONG\r\n"}, true},
		{"empty command name", []string{"*1\r\n$0\r\n\r\n", encode("PING")},
			[]string{"-ERR unknown command '', with args beginning with: \r\n", "+PONG\r\n"}, false},
		{"desync \\x00", []string{"\x00" + strings.Repeat("A", 70<<10)}, []string{proto("too big inline request")}, true},
		{"desync *\\x00", []string{"*\x00" + strings.Repeat("A", 70<<10)}, []string{proto("too big mbulk count string")}, true},
		{"desync *1 $\\x00", []string{"*1\r\n$\x00" + strings.Repeat("A", 70<<10)}, []string{proto("too big bulk count string")}, true},
	}

	// Errors that must be exactly what Valkey itself answers.
	direct := func(req string) string { return hostileDirect(t, standaloneOrCluster(), req) }
	for _, req := range [][]string{
		{"GET"},
		{"SET", "k"},
		{"PING", "x", "y", "z"},
		{"FOOBAR"},
		{"FOOBAR", "a", "b"},
		{"NOSUCHCOMMAND", strings.Repeat("x", 200)},
	} {
		cases = append(cases, hostileCase{"valkey error for " + strings.Join(req, " ")[:min(30, len(strings.Join(req, " ")))],
			[]string{encode(req...), encode("PING")}, []string{direct(encode(req...)), "+PONG\r\n"}, false})
	}

	// Scripts whose error text looks like a redirect: the client gets the text verbatim.
	owner := hostileOwner(t, "k")
	for _, e := range []string{"MOVED", "ASK", "MOVED 1 x", "ASK 99999 127.0.0.1:1", "TRYAGAIN x", "MOVED -1 127.0.0.1:1"} {
		req := encode("EVAL", "return redis.error_reply('"+e+"')", "1", "k")
		want := hostileDirect(t, owner, req)
		t.Logf("EVAL error_reply(%q): Valkey answers %q", e, want)
		if strings.HasPrefix(e, "TRYAGAIN") {
			// Known to be retried by the proxy (see TestHostileScriptFakeRedirects).
			continue
		}
		cases = append(cases, hostileCase{"EVAL error_reply " + e, []string{req, encode("PING")}, []string{want, "+PONG\r\n"}, false})
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, p.Addr)
			for i, c := range tc.chunks {
				if i > 0 {
					time.Sleep(20 * time.Millisecond)
				}
				rc.send(c)
			}
			for i, want := range tc.replies {
				got, err := rc.reply()
				if err != nil || got != want {
					t.Fatalf("reply %d = %q, %v; want %q", i, got, err, want)
				}
			}
			if tc.closed {
				hostileClosed(t, rc, 2*time.Second)
			} else {
				rc.send(encode("PING"))
				if got, err := rc.reply(); got != "+PONG\r\n" {
					t.Fatalf("connection not usable afterwards: %q, %v", got, err)
				}
			}
			t.Logf("replies %q, closed=%v", tc.replies, tc.closed)
			hostileHealthy(t, p, tc.name)
		})
	}

	t.Run("multibulk 9e18 closes promptly without spinning", func(t *testing.T) {
		rc := dialRaw(t, p.Addr)
		cpu0 := hostileCPU(t, pid)
		start := time.Now()
		rc.send("*9000000000000000000\r\n")
		got, err := rc.reply()
		if want := proto("invalid multibulk length"); got != want {
			t.Fatalf("reply %q, %v; want %q", got, err, want)
		}
		hostileClosed(t, rc, time.Second)
		took := time.Since(start)
		time.Sleep(time.Second - took)
		cpu := hostileCPU(t, pid) - cpu0
		t.Logf("closed after %v; proxy CPU over the 1 s window: %v", took.Round(time.Millisecond), cpu)
		if took > time.Second {
			t.Errorf("took %v to close", took)
		}
		if cpu >= 500*time.Millisecond {
			t.Errorf("proxy used %v of CPU in 1 s", cpu)
		}
		hostileHealthy(t, p, "9e18")
	})

	t.Run("64 MiB without newline", func(t *testing.T) {
		rc := dialRaw(t, p.Addr)
		replyc := make(chan string, 1)
		go func() {
			_ = rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
			line, err := rc.r.ReadString('\n')
			if err != nil {
				line += "<" + err.Error() + ">"
			}
			replyc <- line
		}()
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		written := 0
		var werr error
		var reply string
		gotReply := false
		start := time.Now()
		for written < 64<<20 {
			_ = rc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			n, err := rc.c.Write(chunk)
			written += n
			if err != nil {
				werr = err
				break
			}
			select {
			case reply = <-replyc:
				gotReply = true
			default:
			}
			if gotReply {
				break
			}
		}
		if !gotReply {
			select {
			case reply = <-replyc:
			case <-time.After(10 * time.Second):
				t.Fatal("no reply")
			}
		}
		t.Logf("accepted %d KiB before the proxy answered %q (write error: %v) in %v", written>>10, reply, werr, time.Since(start).Round(time.Millisecond))
		if want := proto("too big inline request"); reply != want {
			t.Fatalf("reply %q, want %q", reply, want)
		}
		if written >= 32<<20 {
			t.Errorf("the proxy accepted %d MiB before closing", written>>20)
		}
		// Writes now fail with a reset (expected); reads see EOF or a reset.
		hostileClosed(t, rc, 5*time.Second)
		hostileHealthy(t, p, "64MiB")
	})

	t.Run("slow sender, one byte per write", func(t *testing.T) {
		rc := dialRaw(t, p.Addr)
		val := strings.Repeat("0123456789", 1000)
		req := encode("SET", "hostile:slow", val)
		start := time.Now()
		for i := 0; i < len(req); i++ {
			rc.send(req[i : i+1])
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		if got, err := rc.reply(); got != "+OK\r\n" {
			t.Fatalf("SET: %q, %v", got, err)
		}
		rc.send(encode("GET", "hostile:slow") + encode("DEL", "hostile:slow"))
		if got, err := rc.reply(); got != fmt.Sprintf("$%d\r\n%s\r\n", len(val), val) {
			t.Fatalf("GET: %d bytes, %v", len(got), err)
		}
		if got, _ := rc.reply(); got != ":1\r\n" {
			t.Fatalf("DEL: %q", got)
		}
		t.Logf("%d one-byte writes in %v", len(req), time.Since(start).Round(time.Millisecond))
		hostileHealthy(t, p, "slow")
	})

	rssAfterInputs := hostileRSS(t, pid)

	t.Run("200 connections holding declared sizes", func(t *testing.T) {
		var conns []net.Conn
		for i := 0; i < 200; i++ {
			c, err := net.DialTimeout("tcp", p.Addr, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte("*1048576\r\n$536870912\r\n")); err != nil {
				t.Fatal(err)
			}
		}
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		time.Sleep(500 * time.Millisecond)
		rssHeld := hostileRSS(t, pid)
		hostileHealthy(t, p, "200conns")
		// Every connection is still open and waiting (none was answered or closed).
		for i, c := range conns {
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			var b [1]byte
			if n, err := c.Read(b[:]); n > 0 || !isTimeout(err) {
				t.Fatalf("connection %d: %d bytes, %v", i, n, err)
			}
		}
		t.Logf("memory figure: proxy VmRSS %d KiB at start, %d KiB after the hostile inputs (+%d KiB), %d KiB with 200 connections each holding *1048576 and $536870912 headers (+%d KiB over start, %.1f KiB per connection)",
			rssStart, rssAfterInputs, rssAfterInputs-rssStart, rssHeld, rssHeld-rssStart, float64(rssHeld-rssAfterInputs)/200)
		if rssAfterInputs-rssStart > 64<<10 {
			t.Errorf("RSS grew by %d KiB over the hostile inputs", rssAfterInputs-rssStart)
		}
		if rssHeld-rssStart > 64<<10 {
			t.Errorf("RSS grew by %d KiB with 200 connections holding declared sizes", rssHeld-rssStart)
		}
	})
	hostileHealthy(t, p, "end")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// standaloneOrCluster is a Valkey server to compare error texts with.
func standaloneOrCluster() string {
	if standaloneAddr != "" {
		return standaloneAddr
	}
	return clusterAddrs[0]
}

// TestHostilePipelineFlood: one client writes a 100 MB pipeline of small commands without
// reading replies; a second client must keep being served meanwhile. Then the first client's
// replies are read, all of them, in bounded time.
func TestHostilePipelineFlood(t *testing.T) {
	p := startProxy(t, nil)
	pid := p.cmd.Process.Pid
	rss0 := hostileRSS(t, pid)

	const target = 100 << 20
	unit := encode("PING") + encode("GET", "hostile:flood") // 14 + 33 bytes, two replies
	per := len(unit)
	n := target / per
	const chunkUnits = 2000
	chunk := []byte(strings.Repeat(unit, chunkUnits))

	flood, err := net.DialTimeout("tcp", p.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	var written atomic.Int64
	writeDone := make(chan error, 1)
	go func() {
		_ = flood.SetWriteDeadline(time.Now().Add(90 * time.Second))
		for sent := 0; sent < n; sent += chunkUnits {
			k := min(chunkUnits, n-sent)
			w, err := flood.Write(chunk[:k*per])
			written.Add(int64(w))
			if err != nil {
				writeDone <- err
				return
			}
		}
		writeDone <- nil
	}()

	// Phase 1: nobody reads the flood's replies. Another client is served meanwhile.
	other := dialRaw(t, p.Addr)
	other.send(encode("SET", "hostile:other", "x"))
	if got, err := other.reply(); got != "+OK\r\n" {
		t.Fatalf("SET: %q, %v", got, err)
	}
	var worst time.Duration
	gets := 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		t0 := time.Now()
		other.send(encode("GET", "hostile:other"))
		got, err := other.reply()
		if got != "$1\r\nx\r\n" {
			t.Fatalf("GET during the flood: %q, %v", got, err)
		}
		worst = max(worst, time.Since(t0))
		gets++
	}
	stalled := written.Load()
	rssStalled := hostileRSS(t, pid)
	t.Logf("while the flood's replies went unread: %d GETs by another client, worst latency %v; the flood had written %d MiB of %d MiB; proxy VmRSS %d KiB (+%d KiB)",
		gets, worst.Round(time.Microsecond), stalled>>20, (n*per)>>20, rssStalled, rssStalled-rss0)
	if worst > time.Second {
		t.Errorf("GET latency %v during the flood", worst)
	}

	// Phase 2: read every reply of the flood.
	start := time.Now()
	r := bufio.NewReaderSize(flood, 1<<20)
	_ = flood.SetReadDeadline(time.Now().Add(60 * time.Second))
	want := []string{"+PONG\r\n", "$-1\r\n"}
	for i := 0; i < 2*n; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("flood reply %d of %d: %v (after %v)", i, 2*n, err, time.Since(start))
		}
		if line != want[i%2] {
			t.Fatalf("flood reply %d = %q, want %q", i, line, want[i%2])
		}
	}
	if err := <-writeDone; err != nil {
		t.Fatalf("flood write: %v", err)
	}
	rssEnd := hostileRSS(t, pid)
	t.Logf("read all %d replies of the %d MiB pipeline in %v; proxy VmRSS %d KiB at start, %d KiB at the end",
		2*n, (n*per)>>20, time.Since(start).Round(time.Millisecond), rss0, rssEnd)
	if rssStalled-rss0 > 64<<10 {
		t.Errorf("RSS grew by %d KiB while the flood was stalled", rssStalled-rss0)
	}
	hostileHealthy(t, p, "flood")
}

// TestHostileScriptFakeRedirects: a script can return error text shaped exactly like a cluster
// redirect. The proxy follows a redirect only to a primary of the topology other than the node
// that answered, and TRYAGAIN only with Valkey's own text, so each of these runs the script
// once and reaches the client verbatim.
func TestHostileScriptFakeRedirects(t *testing.T) {
	p := startProxy(t, nil)
	key := "{hostile:fake}"
	owner := hostileOwner(t, key)
	slot := cluster.SlotOf([]byte(key))
	for _, e := range []string{
		"TRYAGAIN",
		"TRYAGAIN x",
		fmt.Sprintf("MOVED %d %s", slot, owner),
		fmt.Sprintf("ASK %d %s", slot, owner),
		fmt.Sprintf("MOVED %d 127.0.0.1:1", slot),
	} {
		t.Run(e, func(t *testing.T) {
			cnt := key + ":count"
			_ = hostileDirect(t, owner, encode("DEL", cnt))
			// The script counts its executions in a key of the same slot.
			req := encode("EVAL", "redis.call('INCR', KEYS[2]); return redis.error_reply('"+e+"')", "2", key, cnt)
			want := hostileDirect(t, owner, req)
			_ = hostileDirect(t, owner, encode("DEL", cnt))
			rc := dialRaw(t, p.Addr)
			probe := dialRaw(t, p.Addr)
			t0 := time.Now()
			rc.send(req)
			got, err := rc.reply()
			took := time.Since(t0)
			// Another client's command for the same slot, right after.
			probe.send(encode("EXISTS", key))
			if pr, _ := probe.reply(); pr != ":0\r\n" && pr != ":1\r\n" {
				t.Errorf("another client's EXISTS %s right after: %q", key, pr)
			}
			runs := hostileDirect(t, owner, encode("GET", cnt))
			_ = hostileDirect(t, owner, encode("DEL", cnt))
			t.Logf("Valkey answers %q; the proxy answers %q (%v) after %v; script executions: %q", want, got, err, took.Round(time.Millisecond), runs)
			if got != want {
				t.Errorf("reply %q, want %q", got, want)
			}
			if runs != "$1\r\n1\r\n" {
				t.Errorf("the script ran %q times, want once", runs)
			}
			hostileHealthy(t, p, "fake-redirect")
		})
	}
}
