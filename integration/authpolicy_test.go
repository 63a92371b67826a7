package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAuthSequence is Envoy's ErrorsUntilCorrectPasswordSent: NOAUTH, errors, WRONGPASS, then
// OK once the right password is sent, for the default user and for named users.
func TestAuthSequence(t *testing.T) {
	const pw, userPW = "s3cret-proxy-pw", "u-s3cret"
	t.Setenv("VLP_TEST_USER_PW", userPW)
	cfg := writeConfig(t, "auth:\n  password: "+pw+"\n  users:\n    - name: app\n      password-env: VLP_TEST_USER_PW\n")
	p := startProxyAuth(t, cfg, pw)
	rc := dialRaw(t, p.Addr)
	for _, s := range []struct{ req, want string }{
		{encode("GET", "auth:k"), "-NOAUTH Authentication required.\r\n"},
		{encode("AUTH"), "-ERR wrong number of arguments for 'auth' command\r\n"},
		{encode("AUTH", "wrong"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n"},
		{encode("LOCK", "auth:r"), "-NOAUTH Authentication required.\r\n"},
		{encode("HELLO", "2"), "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"},
		{encode("AUTH", "app", pw), "-WRONGPASS invalid username-password pair or user is disabled.\r\n"},
		{encode("AUTH", "nobody", userPW), "-WRONGPASS invalid username-password pair or user is disabled.\r\n"},
		{encode("AUTH", pw), "+OK\r\n"},
		{encode("SET", "auth:k", "1"), "+OK\r\n"},
		{encode("AUTH", "app", userPW), "+OK\r\n"},
		{encode("GET", "auth:k"), "$1\r\n1\r\n"},
	} {
		rc.send(s.req)
		if got, err := rc.reply(); err != nil || got != s.want {
			t.Fatalf("%q: got %q, %v; want %q", s.req, got, err, s.want)
		}
	}
	// HELLO with AUTH authenticates in one step; go-redis does that with a username.
	c := redis.NewClient(&redis.Options{Addr: p.Addr, Protocol: 2, Username: "app", Password: userPW})
	defer c.Close()
	if err := c.Set(context.Background(), "auth:hello", "1", 0).Err(); err != nil {
		t.Fatalf("go-redis with username/password: %v", err)
	}
	// Secrets never reach the log.
	if logs := p.logs.String(); strings.Contains(logs, pw) || strings.Contains(logs, userPW) {
		t.Error("a password appears in the proxy log")
	}
}

// startProxyAuth starts a proxy whose PING probe must authenticate.
func startProxyAuth(t *testing.T, cfg, pw string) *proxyProc {
	t.Helper()
	addr := freePort(t)
	cmd := exec.Command(proxyBin, "--listen", addr, "--upstream", strings.Join(clusterAddrs[:3], ","), "--config", cfg, "--log-format", "console", "--log-level", "debug")
	p := &proxyProc{Addr: addr, cmd: cmd, logs: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.Stop(t) })
	waitFor(t, 20*time.Second, func() bool {
		c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, Password: pw, MaxRetries: -1})
		defer c.Close()
		return c.Ping(context.Background()).Err() == nil
	})
	return p
}

// TestPreAuthLimits: before AUTH at most 10 arguments of 16 KiB each; beyond, the connection
// closes. After AUTH the normal limits apply.
func TestPreAuthLimits(t *testing.T) {
	cfg := writeConfig(t, "auth:\n  password: pw\n")
	p := startProxyAuth(t, cfg, "pw")
	many := dialRaw(t, p.Addr)
	many.send(encode("GET", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
	if got, _ := many.reply(); !strings.HasPrefix(got, "-ERR Protocol error") {
		t.Errorf("11 arguments before AUTH: %q", got)
	}
	if _, err := many.reply(); err == nil {
		t.Error("connection still open")
	}
	big := dialRaw(t, p.Addr)
	big.send(encode("AUTH", strings.Repeat("x", 17<<10)))
	if got, _ := big.reply(); !strings.HasPrefix(got, "-ERR Protocol error") {
		t.Errorf("a 17 KiB argument before AUTH: %q", got)
	}
	ok := dialRaw(t, p.Addr)
	ok.send(encode("AUTH", "pw") + encode("SET", "preauth:big", strings.Repeat("v", 100<<10)))
	if got, _ := ok.reply(); got != "+OK\r\n" {
		t.Fatalf("AUTH = %q", got)
	}
	if got, _ := ok.reply(); got != "+OK\r\n" {
		t.Fatalf("a 100 KiB SET after AUTH = %q", got)
	}
}

// TestListenPolicy: a non-loopback listener needs client authentication.
func TestListenPolicy(t *testing.T) {
	_, port, _ := net.SplitHostPort(freePort(t))
	out, err := exec.Command(proxyBin, "--listen", "0.0.0.0:"+port, "--upstream", clusterAddrs[0]).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "requires auth.password") {
		t.Fatalf("0.0.0.0 without auth: %v\n%s", err, out)
	}
}

// TestPolicyDenyAndAllow: the default deny list in any letter case and inside MULTI; policy.deny
// adds, policy.allow removes. Denied commands never reach the upstream.
func TestPolicyDenyAndAllow(t *testing.T) {
	cfg := writeConfig(t, "policy:\n  deny: [keys, object|freq]\n  allow: [debug]\n")
	p := startProxy(t, nil, "--config", cfg)
	rc := dialRaw(t, p.Addr)
	for _, s := range []struct{ req, want string }{
		{encode("monitor"), "-ERR command 'monitor' is not allowed by the proxy policy\r\n"},
		{encode("MoNiToR"), "-ERR command 'monitor' is not allowed by the proxy policy\r\n"},
		{encode("Shutdown", "NOSAVE"), "-ERR command 'shutdown' is not allowed by the proxy policy\r\n"},
		{encode("KEYS", "*"), "-ERR command 'keys' is not allowed by the proxy policy\r\n"},
		{encode("OBJECT", "FREQ", "x"), "-ERR command 'object|freq' is not allowed by the proxy policy\r\n"},
		{encode("client", "Kill", "ID", "1"), "-ERR command 'client|kill' is not allowed by the proxy policy\r\n"},
		{encode("MULTI"), "+OK\r\n"},
		{encode("replicaof", "no", "one"), "-ERR command 'replicaof' is not allowed by the proxy policy\r\n"},
		{encode("EXEC"), "-EXECABORT Transaction discarded because of previous errors.\r\n"},
		{"monitor\r\n", "-ERR command 'monitor' is not allowed by the proxy policy\r\n"},
	} {
		rc.send(s.req)
		if got, err := rc.reply(); err != nil || got != s.want {
			t.Fatalf("%q: got %q, %v; want %q", s.req, got, err, s.want)
		}
	}
	// DEBUG is allowed here and reaches the upstream (the test cluster enables it).
	rc.send(encode("DEBUG", "SLEEP", "0"))
	if got, _ := rc.reply(); got != "+OK\r\n" {
		t.Errorf("DEBUG SLEEP 0 with debug allowed: %q", got)
	}
	for _, addr := range clusterAddrs {
		d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
		stats, _ := d.Info(context.Background(), "commandstats").Result()
		_ = d.Close()
		for _, bad := range []string{"cmdstat_monitor:", "cmdstat_shutdown:", "cmdstat_replicaof:"} {
			if strings.Contains(stats, bad) {
				t.Errorf("%s: %s reached the upstream", addr, bad)
			}
		}
	}
}

// TestReadFromReplica: with upstream.read-from replica, reads reach a replica and writes never do.
func TestReadFromReplica(t *testing.T) {
	ctx := ctxT(t)
	p := startProxy(t, nil, "--config", writeConfig(t, "upstream:\n  read-from: replica\n"))
	c := p.client(t)
	key := "rfr:{replica-read}"
	slot := cluster.SlotOfString(key)
	all, owner := primaries(t, ctx, slot)
	replica := replicaOf(t, ctx, all[owner].id)
	stat := func(cl *redis.Client, name string) int64 {
		s, _ := cl.Info(ctx, "commandstats").Result()
		for _, line := range strings.Split(s, "\r\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_"+name+":calls="); ok {
				var n int64
				fmt.Sscanf(rest, "%d", &n)
				return n
			}
		}
		return 0
	}
	getsBefore, floatBefore := stat(replica, "get"), stat(replica, "incrbyfloat")
	primBefore := stat(all[owner].client, "incrbyfloat")
	if err := c.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.IncrByFloat(ctx, key, 1.5).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { v, _ := replica.Get(ctx, key).Result(); return v == "1.5" })
	getsBefore = stat(replica, "get")
	for range 20 {
		if v, err := c.Get(ctx, key).Result(); err != nil || v != "1.5" {
			t.Fatalf("GET through the proxy = %q, %v", v, err)
		}
	}
	if got := stat(replica, "get") - getsBefore; got < 20 {
		t.Errorf("the replica served %d of 20 GETs", got)
	}
	// INCRBYFLOAT is replicated as SET: on the replica it never runs as itself.
	if stat(replica, "incrbyfloat") != floatBefore {
		t.Error("a write reached the replica")
	}
	if stat(all[owner].client, "incrbyfloat") != primBefore+1 {
		t.Error("the write did not reach the primary")
	}
}

// replicaOf returns a client for a replica of the primary with node id.
func replicaOf(t *testing.T, ctx context.Context, id string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: clusterAddrs[0], Protocol: 2})
	defer c.Close()
	out, err := c.ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && strings.Contains(f[2], "slave") && f[3] == id {
			r := redis.NewClient(&redis.Options{Addr: strings.Split(f[1], "@")[0], Protocol: 2,
				OnConnect: func(ctx context.Context, cn *redis.Conn) error { return cn.ReadOnly(ctx).Err() }})
			t.Cleanup(func() { _ = r.Close() })
			return r
		}
	}
	t.Fatalf("no replica of %s", id)
	return nil
}

// TestUpstreamTLSAndPassword runs the proxy in front of a Valkey that only speaks TLS and wants
// a password: with the right CA it works; with another CA it fails closed.
func TestUpstreamTLSAndPassword(t *testing.T) {
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := makeCerts(t)
	otherCA, _, _ := makeCerts(t)
	for name, data := range map[string][]byte{"ca.pem": caPEM, "cert.pem": certPEM, "key.pem": keyPEM, "other-ca.pem": otherCA} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(freePort(t))
	srv := exec.Command("valkey-server", "--port", "0", "--tls-port", port, "--bind", "127.0.0.1",
		"--tls-cert-file", filepath.Join(dir, "cert.pem"), "--tls-key-file", filepath.Join(dir, "key.pem"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"), "--tls-auth-clients", "no",
		"--requirepass", "upstream-pw", "--save", "", "--appendonly", "no", "--dir", dir)
	srv.Stdout, srv.Stderr = os.Stderr, os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	})
	upstream := "127.0.0.1:" + port
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", upstream, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	t.Setenv("VLP_TEST_UPSTREAM_PW", "upstream-pw")
	good := writeConfig(t, fmt.Sprintf("upstream:\n  password-env: VLP_TEST_UPSTREAM_PW\n  tls:\n    enabled: true\n    ca-file: %s\n", filepath.Join(dir, "ca.pem")))
	p := startProxy(t, []string{upstream}, "--config", good)
	c := p.client(t)
	ctx := ctxT(t)
	if err := c.Set(ctx, "tls:k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if tok, err := c.Do(ctx, "LOCK", "tls:r").Text(); err != nil || tok == "" {
		t.Fatalf("LOCK over TLS = %q, %v", tok, err)
	}
	bad := writeConfig(t, fmt.Sprintf("upstream:\n  password-env: VLP_TEST_UPSTREAM_PW\n  connect-timeout: 1s\n  tls:\n    enabled: true\n    ca-file: %s\n", filepath.Join(dir, "other-ca.pem")))
	out, err := exec.Command(proxyBin, "--listen", freePort(t), "--upstream", upstream, "--config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("a wrong CA must fail closed: %v\n%s", err, out)
	}
}

// makeCerts returns a CA and a server certificate for 127.0.0.1 signed by it, in PEM.
func makeCerts(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vlp test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
