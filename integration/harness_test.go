package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Environment shared by every test: set by TestMain.
var (
	clusterAddrs   []string // all six cluster nodes
	standaloneAddr string
	proxyBin       string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	started, err := ensureCluster()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: no cluster:", err)
		if os.Getenv("CI") == "true" {
			return 1
		}
		fmt.Fprintln(os.Stderr, "integration: set VLP_CLUSTER_ADDRS or make integration/cluster.sh work; failing")
		return 1
	}
	if started {
		defer func() { _ = exec.Command("bash", "cluster.sh", "stop").Run() }()
	}
	dir, err := os.MkdirTemp("", "vlp-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	proxyBin = filepath.Join(dir, "valkey-lock-proxy")
	build := exec.Command("go", "build", "-race", "-o", proxyBin, "..")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: build:", err)
		return 1
	}
	return m.Run()
}

// ensureCluster uses VLP_CLUSTER_ADDRS when set, else starts the local cluster itself.
func ensureCluster() (started bool, err error) {
	if a := os.Getenv("VLP_CLUSTER_ADDRS"); a != "" {
		clusterAddrs = strings.Split(a, ",")
		standaloneAddr = os.Getenv("VLP_STANDALONE_ADDR")
		return false, nil
	}
	out, err := exec.Command("bash", "cluster.sh", "start").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("cluster.sh start: %v\n%s", err, out)
	}
	out, err = exec.Command("bash", "cluster.sh", "env").Output()
	if err != nil {
		return true, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "VLP_CLUSTER_ADDRS="); ok {
			clusterAddrs = strings.Split(v, ",")
		}
		if v, ok := strings.CutPrefix(line, "VLP_STANDALONE_ADDR="); ok {
			standaloneAddr = v
		}
	}
	if len(clusterAddrs) == 0 {
		return true, fmt.Errorf("cluster.sh env printed no addresses")
	}
	return true, nil
}

// proxyProc is a running proxy process.
type proxyProc struct {
	Addr string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// startProxy runs the proxy binary in front of upstream (the cluster when empty) and waits until
// it answers PING. Extra args are passed through. The process is stopped at test cleanup.
func startProxy(t testing.TB, upstream []string, extra ...string) *proxyProc {
	t.Helper()
	if len(upstream) == 0 {
		upstream = clusterAddrs[:3]
	}
	addr := freePort(t)
	args := append([]string{"--listen", addr, "--upstream", strings.Join(upstream, ","), "--log-format", "console"}, extra...)
	cmd := exec.Command(proxyBin, args...)
	p := &proxyProc{Addr: addr, cmd: cmd, logs: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.Stop(t)
		// The binary is built with -race: a race report fails the test that ran it.
		if strings.Contains(p.logs.String(), "WARNING: DATA RACE") {
			t.Errorf("the proxy reported a data race")
		}
		if t.Failed() {
			t.Logf("proxy logs:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
			line, _ := bufio.NewReader(c).ReadString('\n')
			_ = c.Close()
			if line == "+PONG\r\n" {
				return p
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("proxy exited before serving: %v\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not answer PING within 20s\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop sends SIGTERM and waits for a clean exit.
func (p *proxyProc) Stop(t testing.TB) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("proxy did not exit within 20s of SIGTERM")
		return <-p.done
	}
}

// Alive reports whether the process is still running.
func (p *proxyProc) Alive() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return false
	default:
		return true
	}
}

// client returns a go-redis standalone client pointed at the proxy.
func (p *proxyProc) client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: p.Addr, Protocol: 2, DisableIdentity: false})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clusterClient returns a go-redis cluster client that talks to the cluster directly.
func clusterClient(t testing.TB) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs, Protocol: 2})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// rawConn is a byte-level connection for wire tests.
type rawConn struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	_ = rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.c.Write([]byte(s)); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// reply reads one complete RESP reply and returns its raw bytes.
func (rc *rawConn) reply() (string, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var sb strings.Builder
	err := readReply(rc.r, &sb)
	return sb.String(), err
}

func readReply(r *bufio.Reader, sb *strings.Builder) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	sb.WriteString(line)
	if len(line) < 3 {
		return fmt.Errorf("short line %q", line)
	}
	var n int
	switch line[0] {
	case '$':
		fmt.Sscanf(line[1:], "%d", &n)
		if n < 0 {
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := ioReadFull(r, buf); err != nil {
			return err
		}
		sb.Write(buf)
	case '*':
		fmt.Sscanf(line[1:], "%d", &n)
		for i := 0; i < n; i++ {
			if err := readReply(r, sb); err != nil {
				return err
			}
		}
	}
	return nil
}

func ioReadFull(r *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// encode turns args into a RESP multibulk request.
func encode(args ...string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&sb, "$%d\r\n%s\r\n", len(a), a)
	}
	return sb.String()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
