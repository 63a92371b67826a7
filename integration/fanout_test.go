package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// TestScanAndKeys: KEYS merges every primary; a full SCAN iteration (MATCH, COUNT, TYPE)
// returns each of 10,000 keys at least once.
func TestScanAndKeys(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx := ctxT(t)
	const n = 10000
	pipe := c.Pipeline()
	for i := range n {
		pipe.Set(ctx, fmt.Sprintf("scan:%d", i), i, 0)
	}
	pipe.SAdd(ctx, "scan:set", "m")
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pipe := c.Pipeline()
		for i := range n {
			pipe.Del(ctx, fmt.Sprintf("scan:%d", i))
		}
		pipe.Del(ctx, "scan:set")
		_, _ = pipe.Exec(ctx)
	})
	keys, err := c.Keys(ctx, "scan:*").Result()
	if err != nil || len(keys) != n+1 {
		t.Fatalf("KEYS = %d keys, %v; want %d", len(keys), err, n+1)
	}
	seen := map[string]int{}
	var cursor uint64
	calls := 0
	for {
		var page []string
		page, cursor, err = c.Scan(ctx, cursor, "scan:*", 500).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page {
			seen[k]++
		}
		if calls++; cursor == 0 || calls > 10000 {
			break
		}
	}
	for i := range n {
		if seen[fmt.Sprintf("scan:%d", i)] == 0 {
			t.Fatalf("SCAN missed scan:%d", i)
		}
	}
	if seen["scan:set"] == 0 {
		t.Fatal("SCAN missed scan:set")
	}
	t.Logf("SCAN: %d calls, %d distinct keys", calls, len(seen))
	typed, _, err := c.ScanType(ctx, 0, "scan:*", 100000, "set").Result()
	if err != nil {
		t.Fatal(err)
	}
	// The first page covers one node only; iterate fully for TYPE as well.
	found := false
	cursor = 0
	for i := 0; i < 100; i++ {
		typed, cursor, err = c.ScanType(ctx, cursor, "scan:*", 100000, "set").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range typed {
			if k != "scan:set" {
				t.Fatalf("SCAN TYPE set returned %q", k)
			}
			found = true
		}
		if cursor == 0 {
			break
		}
	}
	if !found {
		t.Error("SCAN TYPE set did not return scan:set")
	}
	raw := dialRaw(t, p.Addr)
	raw.send(encode("SCAN", "notanumber"))
	if got, _ := raw.reply(); got != "-ERR invalid cursor\r\n" {
		t.Errorf("SCAN notanumber = %q", got)
	}
	if k, err := c.RandomKey(ctx).Result(); err != nil || k == "" {
		t.Errorf("RANDOMKEY = %q, %v", k, err)
	}
}

// TestScriptsEverywhere: SCRIPT LOAD reaches every primary; EVALSHA keeps working after one
// node loses its scripts; SCRIPT EXISTS is true only where all have it; a script's error
// text passes through verbatim.
func TestScriptsEverywhere(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx := ctxT(t)
	body := "return {KEYS[1], ARGV[1], 'scripts-everywhere'}"
	sha, err := c.ScriptLoad(ctx, body).Result()
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.ScriptExists(ctx, sha, strings.Repeat("0", 40)).Result()
	if err != nil || !ex[0] || ex[1] {
		t.Fatalf("SCRIPT EXISTS = %v, %v", ex, err)
	}
	for _, key := range []string{"se:a", "se:b", "se:c", "se:d"} {
		if v, err := c.EvalSha(ctx, sha, []string{key}, "x").StringSlice(); err != nil || v[0] != key {
			t.Fatalf("EVALSHA %s = %v, %v", key, v, err)
		}
	}
	// Flush the scripts of the primary owning se:a, behind the proxy's back.
	all, owner := primaries(t, ctx, cluster.SlotOfString("se:a"))
	if err := all[owner].client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.EvalSha(ctx, sha, []string{"se:a"}, "y").StringSlice(); err != nil || v[1] != "y" {
		t.Fatalf("EVALSHA after SCRIPT FLUSH on its node = %v, %v", v, err)
	}
	// An unknown script is still NOSCRIPT.
	if err := c.EvalSha(ctx, strings.Repeat("1", 40), []string{"se:a"}).Err(); err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
		t.Errorf("EVALSHA unknown = %v", err)
	}
	raw := dialRaw(t, p.Addr)
	raw.send(encode("EVAL", "return redis.error_reply('MY_ERR custom text')", "1", "se:a"))
	if got, _ := raw.reply(); got != "-MY_ERR custom text\r\n" {
		t.Errorf("script error = %q", got)
	}
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		if ok, _ := n.client.ScriptExists(ctx, sha).Result(); ok[0] {
			t.Errorf("%s still has the script after SCRIPT FLUSH through the proxy", n.addr)
		}
	}
	if got, err := c.Do(ctx, "SCRIPT", "KILL").Result(); err == nil || !strings.HasPrefix(err.Error(), "NOTBUSY") {
		t.Errorf("SCRIPT KILL = %v, %v", got, err)
	}
}

func TestFunctionsEverywhere(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx := ctxT(t)
	lib := "#!lua name=vlpfanout\nserver.register_function('vlp_echo', function(keys, args) return args[1] end)"
	if name, err := c.FunctionLoadReplace(ctx, lib).Result(); err != nil || name != "vlpfanout" {
		t.Fatalf("FUNCTION LOAD = %q, %v", name, err)
	}
	all, _ := primaries(t, ctx, 0)
	for _, n := range all {
		libs, err := n.client.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: "vlpfanout"}).Result()
		if err != nil || len(libs) != 1 {
			t.Errorf("%s: FUNCTION LIST = %v, %v", n.addr, libs, err)
		}
	}
	for _, key := range []string{"fn:a", "fn:b", "fn:c"} {
		if v, err := c.FCall(ctx, "vlp_echo", []string{key}, key).Text(); err != nil || v != key {
			t.Errorf("FCALL on %s = %q, %v", key, v, err)
		}
	}
	if libs, err := c.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: "vlpfanout"}).Result(); err != nil || len(libs) != 1 {
		t.Errorf("FUNCTION LIST through the proxy = %v, %v", libs, err)
	}
	if err := c.FunctionDelete(ctx, "vlpfanout").Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		if libs, _ := n.client.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: "vlpfanout"}).Result(); len(libs) != 0 {
			t.Errorf("%s still has the library", n.addr)
		}
	}
}

// TestConfigWhenAllowed: CONFIG is denied by default; allowed, SET reaches every node and GET
// answers from one.
func TestConfigWhenAllowed(t *testing.T) {
	ctx := ctxT(t)
	denied := startProxy(t, nil)
	if err := denied.client(t).ConfigGet(ctx, "maxclients").Err(); err == nil || !strings.Contains(err.Error(), "not allowed by the proxy policy") {
		t.Fatalf("CONFIG GET with the default policy: %v", err)
	}
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("policy:\n  allow: [config]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, nil, "--config", cfg)
	c := p.client(t)
	old, err := c.ConfigGet(ctx, "slowlog-max-len").Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ConfigSet(context.Background(), "slowlog-max-len", old["slowlog-max-len"]) })
	if err := c.ConfigSet(ctx, "slowlog-max-len", "777").Err(); err != nil {
		t.Fatal(err)
	}
	for _, addr := range clusterAddrs {
		d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
		v, err := d.ConfigGet(ctx, "slowlog-max-len").Result()
		_ = d.Close()
		if err != nil || v["slowlog-max-len"] != "777" {
			t.Errorf("%s: slowlog-max-len = %v, %v", addr, v, err)
		}
	}
}
