package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestTransactions(t *testing.T) {
	p := startProxy(t, nil)
	raw := dialRaw(t, p.Addr)
	steps := []struct{ req, want string }{
		{encode("DEL", "tx:{a}:1", "tx:{a}:2"), ""},
		{encode("MULTI"), "+OK\r\n"},
		{encode("SET", "tx:{a}:1", "10"), "+QUEUED\r\n"},
		{encode("INCRBY", "tx:{a}:1", "5"), "+QUEUED\r\n"},
		{encode("LPUSH", "tx:{a}:2", "x"), "+QUEUED\r\n"},
		{encode("PING"), "+QUEUED\r\n"},
		{encode("EXEC"), "*4\r\n+OK\r\n:15\r\n:1\r\n+PONG\r\n"},
		// A command on another slot aborts the transaction, as in a cluster.
		{encode("MULTI"), "+OK\r\n"},
		{encode("GET", "tx:{a}:1"), "+QUEUED\r\n"},
		{encode("GET", "tx:{b}:1"), "-CROSSSLOT Keys in request don't hash to the same slot\r\n"},
		{encode("EXEC"), "-EXECABORT Transaction discarded because of previous errors.\r\n"},
		// Queue-time errors, nesting, DISCARD.
		{encode("EXEC"), "-ERR EXEC without MULTI\r\n"},
		{encode("DISCARD"), "-ERR DISCARD without MULTI\r\n"},
		{encode("MULTI"), "+OK\r\n"},
		{encode("MULTI"), "-ERR MULTI calls can not be nested\r\n"},
		{encode("WATCH", "tx:{a}:1"), "-ERR WATCH inside MULTI is not allowed\r\n"},
		{encode("INCR", "tx:{a}:1"), "+QUEUED\r\n"},
		{encode("DISCARD"), "+OK\r\n"},
		{encode("GET", "tx:{a}:1"), "$2\r\n15\r\n"},
		{encode("MULTI"), "+OK\r\n"},
		{encode("GET"), "-ERR wrong number of arguments for 'get' command\r\n"},
		{encode("FLUSHALL"), "-ERR command 'flushall' is not allowed by the proxy policy\r\n"},
		{encode("EXEC"), "-EXECABORT Transaction discarded because of previous errors.\r\n"},
		// Runtime errors inside EXEC come back in its array, verbatim.
		{encode("MULTI"), "+OK\r\n"},
		{encode("LPOP", "tx:{a}:1"), "+QUEUED\r\n"},
		{encode("EXEC"), "*1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"},
	}
	for i, s := range steps {
		raw.send(s.req)
		got, err := raw.reply()
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if s.want != "" && got != s.want {
			t.Errorf("step %d %q: got %q, want %q", i, s.req, got, s.want)
		}
	}
}

// TestWatchConflict: WATCH, a concurrent write by another client, MULTI/EXEC gives *-1.
func TestWatchConflict(t *testing.T) {
	p := startProxy(t, nil)
	a, b := dialRaw(t, p.Addr), dialRaw(t, p.Addr)
	for _, s := range []struct {
		c         *rawConn
		req, want string
	}{
		{a, encode("SET", "watch:k", "1"), "+OK\r\n"},
		{a, encode("WATCH", "watch:k"), "+OK\r\n"},
		{b, encode("SET", "watch:k", "2"), "+OK\r\n"},
		{a, encode("MULTI"), "+OK\r\n"},
		{a, encode("INCR", "watch:k"), "+QUEUED\r\n"},
		{a, encode("EXEC"), "*-1\r\n"},
		// Without a conflicting write the same sequence commits.
		{a, encode("WATCH", "watch:k"), "+OK\r\n"},
		{a, encode("MULTI"), "+OK\r\n"},
		{a, encode("INCR", "watch:k"), "+QUEUED\r\n"},
		{a, encode("EXEC"), "*1\r\n:3\r\n"},
		// UNWATCH releases the pinned connection; WATCH across slots is refused.
		{a, encode("WATCH", "watch:k"), "+OK\r\n"},
		{a, encode("UNWATCH"), "+OK\r\n"},
		{a, encode("WATCH", "watch:{x}", "watch:{y}"), "-CROSSSLOT Keys in request don't hash to the same slot\r\n"},
	} {
		s.c.send(s.req)
		got, err := s.c.reply()
		if err != nil || got != s.want {
			t.Fatalf("%q: got %q, %v; want %q", s.req, got, err, s.want)
		}
	}
}

// TestManyConcurrentWatchTransactions: 1,000 clients each run WATCH/MULTI/EXEC on their own
// key at the same time; every EXEC reply belongs to its client.
func TestManyConcurrentWatchTransactions(t *testing.T) {
	p := startProxy(t, nil)
	const clients = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := make(chan struct{})
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: p.Addr, Protocol: 2, PoolSize: 1, MaxRetries: -1, ReadTimeout: 60 * time.Second})
			defer c.Close()
			key := fmt.Sprintf("mw:%d", i)
			if err := c.Set(ctx, key, i*1000, 0).Err(); err != nil {
				errs <- err
				return
			}
			<-start
			err := c.Watch(ctx, func(tx *redis.Tx) error {
				v, err := tx.Get(ctx, key).Int()
				if err != nil {
					return err
				}
				cmds, err := tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
					pipe.IncrBy(ctx, key, 7)
					pipe.Get(ctx, key)
					return nil
				})
				if err != nil {
					return err
				}
				if got := cmds[0].(*redis.IntCmd).Val(); got != int64(v+7) {
					return fmt.Errorf("client %d: INCRBY = %d, want %d", i, got, v+7)
				}
				if got := cmds[1].(*redis.StringCmd).Val(); got != strconv.Itoa(v+7) {
					return fmt.Errorf("client %d: GET = %s, want %d", i, got, v+7)
				}
				return nil
			}, key)
			if err != nil {
				errs <- err
			}
			c.Del(ctx, key)
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n < 5 {
			t.Error(err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d clients failed", n, clients)
	}
	if pinned := proxyInfoField(t, p, "upstream_pinned_connections"); pinned != "0" {
		t.Errorf("pinned connections after all transactions: %s", pinned)
	}
}

func proxyInfoField(t *testing.T, p *proxyProc, field string) string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: p.Addr, Protocol: 2})
	defer c.Close()
	info, err := c.Info(context.Background(), "proxy").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	t.Fatalf("INFO proxy has no %s", field)
	return ""
}

// TestBlockingCommands: blocking commands run on connections of their own. 200 clients
// blocked in BLPOP leave another client's GET latency alone; a blocked client that
// disconnects frees its upstream connection at once; beyond upstream.max-pinned, a clear error.
func TestBlockingCommands(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)
	c := p.client(t)

	// Served and woken like on Valkey.
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.RPush(ctx, "blk:list", "v")
	}()
	if got, err := c.BLPop(ctx, 5*time.Second, "blk:list").Result(); err != nil || got[1] != "v" {
		t.Fatalf("BLPOP = %v, %v", got, err)
	}
	if _, err := c.BLPop(ctx, 50*time.Millisecond, "blk:none").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("BLPOP timeout = %v, want nil", err)
	}

	getP99 := func() time.Duration {
		var lat []time.Duration
		for i := range 300 {
			t0 := time.Now()
			if err := c.Get(ctx, fmt.Sprintf("blk:get:%d", i%10)).Err(); err != nil && !errors.Is(err, redis.Nil) {
				t.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return lat[len(lat)*99/100]
	}
	before := getP99()
	var blocked []*rawConn
	for i := range 200 {
		rc := dialRaw(t, p.Addr)
		rc.send(encode("BLPOP", fmt.Sprintf("blk:wait:%d", i), "0"))
		blocked = append(blocked, rc)
	}
	waitFor(t, 10*time.Second, func() bool { return proxyInfoField(t, p, "upstream_pinned_connections") == "200" })
	during := getP99()
	t.Logf("GET p99 %v without and %v with 200 clients blocked in BLPOP", before, during)
	if during > 20*before+50*time.Millisecond {
		t.Errorf("blocked clients slowed other clients: p99 %v -> %v", before, during)
	}
	// Disconnecting the blocked clients frees their upstream connections at once.
	t0 := time.Now()
	for _, rc := range blocked {
		_ = rc.c.Close()
	}
	waitFor(t, 5*time.Second, func() bool { return proxyInfoField(t, p, "upstream_pinned_connections") == "0" })
	t.Logf("200 upstream connections freed %v after their clients left", time.Since(t0))
}

func TestPinnedLimit(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("upstream:\n  max-pinned: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, nil, "--config", cfg)
	// All on one slot, so on one node.
	for i := range 3 {
		rc := dialRaw(t, p.Addr)
		rc.send(encode("BLPOP", fmt.Sprintf("{pin}:%d", i), "0"))
	}
	waitFor(t, 5*time.Second, func() bool { return proxyInfoField(t, p, "upstream_pinned_connections") == "3" })
	rc := dialRaw(t, p.Addr)
	rc.send(encode("BLPOP", "{pin}:x", "0"))
	got, err := rc.reply()
	if err != nil || got != "-ERR proxy: too many pinned upstream connections (upstream.max-pinned)\r\n" {
		t.Fatalf("4th BLPOP = %q, %v", got, err)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
