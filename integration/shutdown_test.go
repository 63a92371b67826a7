package integration

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// busyScript keeps the server busy for a few hundred milliseconds and returns 1. (TIME is
// frozen inside a script, so the loop counts instead of watching the clock.)
const busyScript = `local x = 0
for i = 1, 30000000 do x = x + i end
return 1`

// TestGracefulShutdown sends SIGTERM while a command is in flight: the command completes and
// its reply is delivered, then the proxy closes the connection, stops accepting and exits 0.
func TestGracefulShutdown(t *testing.T) {
	p := startProxy(t, nil)
	busy := dialRaw(t, p.Addr)
	idle := dialRaw(t, p.Addr)
	busy.send(encode("EVAL", busyScript, "1", "shutdown:k"))
	time.Sleep(100 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	got, err := busy.reply()
	t.Logf("reply after %v", time.Since(t0))
	if err != nil || got != ":1\r\n" {
		t.Fatalf("in-flight EVAL = %q, %v; want :1", got, err)
	}
	if _, err := busy.reply(); err == nil {
		t.Error("the busy connection stayed open after its reply")
	}
	if _, err := idle.reply(); err == nil {
		t.Error("the idle connection stayed open")
	}
	t.Logf("connections closed after %v", time.Since(t0))
	select {
	case err := <-p.done:
		t.Logf("exit after %v", time.Since(t0))
		p.done <- err
		if err != nil {
			t.Fatalf("proxy exited with %v, want status 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("proxy did not exit after SIGTERM")
	}
	if c, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		_ = c.Close()
		t.Error("proxy still accepts connections after shutdown")
	}
}
