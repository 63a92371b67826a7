package benchkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// ProxyOptions says how StartProxy starts the proxy.
type ProxyOptions struct {
	Bin      string // the proxy binary
	Upstream string // its --upstream
	Config   string // its --config file; none when empty
	Pprof    bool   // also serve pprof (--pprof) on a free loopback port
	// Name tells the proxy apart in errors when a benchmark starts several ("proxy r0").
	Name string
	// Logf reports what Stop has to say; nil: plain lines on stderr.
	Logf func(format string, args ...any)
}

// Proxy is a proxy process started by StartProxy; stop it with Stop.
type Proxy struct {
	Name  string   // as in ProxyOptions
	Addr  string   // its client listener, 127.0.0.1:port
	Pprof string   // its pprof listener, empty without ProxyOptions.Pprof
	Args  []string // its command-line arguments, without the binary; --config FILE first when given

	cmd    *exec.Cmd
	logf   func(format string, args ...any)
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

// StartProxy starts the proxy with --listen on a free loopback port and --log-level warn,
// its output on stderr, and waits up to 30 s for it to answer PING (stopping it again when
// ctx ends or the time runs out first). The process is not tied to ctx after that: the caller
// stops it by PID with Stop.
func StartProxy(ctx context.Context, o ProxyOptions) (*Proxy, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &Proxy{Name: o.Name, Addr: addr, logf: o.Logf, exited: make(chan struct{})}
	if p.logf == nil {
		p.logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	}
	if o.Config != "" {
		p.Args = append(p.Args, "--config", o.Config)
	}
	p.Args = append(p.Args, "--listen", addr, "--upstream", o.Upstream, "--log-level", "warn")
	if o.Pprof {
		if p.Pprof, err = freePort(); err != nil {
			return nil, err
		}
		p.Args = append(p.Args, "--pprof", p.Pprof)
	}
	// Not CommandContext: the proxy is stopped by its PID in Stop, SIGTERM first.
	p.cmd = exec.Command(o.Bin, p.Args...)
	p.cmd.Stdout = os.Stderr
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.label(), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ping(addr) == nil {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited during start-up: %v", p.label(), p.err)
		case <-ctx.Done():
			p.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s on %s did not answer PING within 30s", p.label(), addr)
		}
	}
}

// label is "proxy" or "proxy NAME", for messages.
func (p *Proxy) label() string {
	if p.Name == "" {
		return "proxy"
	}
	return "proxy " + p.Name
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr, nil
}

// ping sends one PING on a fresh connection and expects +PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", buf)
	}
	return nil
}

// PID is the proxy's process id.
func (p *Proxy) PID() int { return p.cmd.Process.Pid }

// Alive reports whether the proxy has not exited yet.
func (p *Proxy) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Err is how the proxy exited (as exec.Cmd.Wait says); nil while it is alive.
func (p *Proxy) Err() error {
	if p.Alive() {
		return nil
	}
	return p.err
}

// Stop ends the proxy by its PID: SIGTERM, then SIGKILL after 15 s. It returns once the
// process is gone, and at once when it already is; calling it again is harmless.
func (p *Proxy) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.logf("proxy pid %d ignored SIGTERM; killing it", p.PID())
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// CPUProfile fetches a CPU profile of d (rounded up to whole seconds) from the proxy's pprof
// endpoint; the caller keeps the proxy under load meanwhile.
func (p *Proxy) CPUProfile(ctx context.Context, d time.Duration) ([]byte, error) {
	if p.Pprof == "" {
		return nil, errors.New("the proxy was started without pprof")
	}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.Pprof, int(math.Ceil(d.Seconds())))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: d + 30*time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch profile: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("read profile: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch profile: %s: %s", resp.Status, Tail(string(data)))
	}
	return data, nil
}
