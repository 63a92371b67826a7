package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestFlushAllWhenAllowed empties every primary. It wipes the whole cluster, so it lives in
// the last file of the package: Go runs a package's tests one after another in file order,
// and nothing after it needs data.
func TestFlushAllWhenAllowed(t *testing.T) {
	ctx := ctxT(t)
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("policy:\n  allow: [flushall, flushdb]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, nil, "--config", cfg)
	c := p.client(t)
	for _, k := range []string{"fa:a", "fa:b", "fa:c", "fa:d"} {
		if err := c.Set(ctx, k, 1, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE after FLUSHALL = %d, %v", n, err)
	}
	for _, addr := range clusterAddrs {
		d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
		role, _ := d.Do(ctx, "ROLE").Slice()
		n, err := d.DBSize(ctx).Result()
		_ = d.Close()
		if len(role) > 0 && role[0] == "master" && (err != nil || n != 0) {
			t.Errorf("%s: DBSIZE %d, %v after FLUSHALL", addr, n, err)
		}
	}
	if err := c.Set(ctx, "fa:a", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.DBSize(ctx).Result(); n != 0 {
		t.Fatalf("DBSIZE after FLUSHDB = %d", n)
	}
}
