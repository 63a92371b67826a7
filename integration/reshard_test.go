package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// nodeInfo is a primary as CLUSTER NODES reports it.
type nodeInfo struct {
	id, addr string
	client   *redis.Client
}

// primaries returns the cluster's primaries and the one serving slot.
func primaries(t *testing.T, ctx context.Context, slot uint16) (all []nodeInfo, owner int) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: clusterAddrs[0], Protocol: 2})
	defer c.Close()
	out, err := c.ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner = -1
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(f[2], "master") {
			continue
		}
		addr := strings.Split(f[1], "@")[0]
		n := nodeInfo{id: f[0], addr: addr, client: redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})}
		t.Cleanup(func() { _ = n.client.Close() })
		for _, r := range f[8:] {
			lo, hi := 0, 0
			if strings.HasPrefix(r, "[") {
				continue
			}
			if _, err := fmt.Sscanf(r, "%d-%d", &lo, &hi); err != nil {
				fmt.Sscanf(r, "%d", &lo)
				hi = lo
			}
			if int(slot) >= lo && int(slot) <= hi {
				owner = len(all)
			}
		}
		all = append(all, n)
	}
	if owner < 0 || len(all) < 2 {
		t.Fatalf("slot %d: owner not found in\n%s", slot, out)
	}
	return all, owner
}

// migrateSlot moves slot from src to dst the way valkey-cli --cluster reshard does, in small
// steps with pauses so that clients meet the ASK and TRYAGAIN states.
func migrateSlot(t *testing.T, ctx context.Context, all []nodeInfo, slot uint16, src, dst nodeInfo) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dst.client.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", src.id).Err())
	must(src.client.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.id).Err())
	host, port, _ := strings.Cut(dst.addr, ":")
	for {
		keys, err := src.client.ClusterGetKeysInSlot(ctx, int(slot), 5).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(src.client.Do(ctx, args...).Err())
		time.Sleep(20 * time.Millisecond)
	}
	for _, n := range all {
		must(n.client.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dst.id).Err())
	}
}

// TestReshardingIsTransparent moves a slot between primaries while clients read and write its
// keys through the proxy: no MOVED, ASK or TRYAGAIN may reach them, and no write is lost.
func TestReshardingIsTransparent(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const tag = "{reshard-t}"
	slot := cluster.SlotOfString(tag)
	all, owner := primaries(t, ctx, slot)
	src, dst := all[owner], all[(owner+1)%len(all)]

	const nkeys = 300
	for i := range nkeys {
		if err := c.Set(ctx, fmt.Sprintf("%s:%d", tag, i), 0, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		errs      []string
		increment [4]int64
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("%s:%d", tag, (i*4+w)%nkeys)
				pipe := c.Pipeline()
				incr := pipe.Incr(ctx, k)
				pipe.Get(ctx, k)
				pipe.MGet(ctx, k, fmt.Sprintf("%s:%d", tag, (i*4+w+1)%nkeys))
				_, err := pipe.Exec(ctx)
				if incr.Err() == nil {
					increment[w]++
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	migrateSlot(t, ctx, all, slot, src, dst)
	time.Sleep(300 * time.Millisecond)
	migrateSlot(t, ctx, all, slot, dst, src) // and back, leaving the cluster as it was
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	for _, e := range errs {
		if strings.Contains(e, "MOVED") || strings.Contains(e, "ASK") || strings.Contains(e, "TRYAGAIN") {
			t.Errorf("a redirect reached the client: %s", e)
		}
	}
	if len(errs) > 0 {
		t.Errorf("%d errors during resharding, first: %s", len(errs), errs[0])
	}
	var total int64
	for _, n := range increment {
		total += n
	}
	var sum int64
	for i := range nkeys {
		v, err := c.Get(ctx, fmt.Sprintf("%s:%d", tag, i)).Int64()
		if err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	if sum != total {
		t.Errorf("sum of counters %d, successful INCRs %d: writes lost or doubled", sum, total)
	}
	// The go-redis connections stay on the event loop (only the INFO connection leaves it):
	// the loop's own redirect handling is what this test measures.
	handovers := proxyInfoField(t, p, "proxy_loop_handovers")
	redirects := proxyInfoField(t, p, "upstream_redirects_followed")
	t.Logf("%d pipelines of INCR+GET+MGET during two migrations of slot %d; the proxy followed %s redirects; %s client(s) left the event loop",
		total, slot, redirects, handovers)
	if handovers != "1" {
		t.Errorf("proxy_loop_handovers = %s, want 1 (the INFO connection): the workload left the event loop", handovers)
	}
	if redirects == "0" {
		t.Error("no redirect was followed: the migration was not exercised")
	}
	if total == 0 {
		t.Error("no traffic ran during the migration")
	}
}
