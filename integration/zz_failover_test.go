package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// TestPrimaryKilledUnderLoad is the reliability plan's R1, short: kill -9 the primary of a
// slot while clients read, write and lock through the proxy. Every request is answered within
// its deadline (no hang), the proxy follows the promoted replica, and it does so within
// node-timeout plus election plus refresh. The killed node is started again and rejoins.
// It changes the cluster's topology, so it runs late (file order).
func TestPrimaryKilledUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := startProxy(t, nil, "--config", writeConfig(t, "upstream:\n  timeout: 3s\nlocks:\n  replica-timeout: 1s\n"))
	const tag = "{killed-primary}"
	slot := cluster.SlotOfString(tag)
	all, owner := primaries(t, ctx, slot)
	victim := all[owner]
	pid := nodePID(t, ctx, victim.client)
	port := strings.Split(victim.addr, ":")[1]

	c := redis.NewClient(&redis.Options{Addr: p.Addr, Protocol: 2, PoolSize: 8, MaxRetries: -1,
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	defer c.Close()
	if err := c.Set(ctx, tag+":n", 0, 0).Err(); err != nil {
		t.Fatal(err)
	}
	var (
		stop       atomic.Bool
		wg         sync.WaitGroup
		mu         sync.Mutex
		lastOK     time.Time
		killedAt   time.Time
		firstAfter time.Time
		slowest    time.Duration
		errs       = map[string]int{}
		ops        atomic.Int64
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				t0 := time.Now()
				var err error
				switch i % 3 {
				case 0:
					err = c.Incr(ctx, tag+":n").Err()
				case 1:
					err = c.Get(ctx, fmt.Sprintf("%s:%d", tag, w)).Err()
					if errors.Is(err, redis.Nil) {
						err = nil
					}
				case 2:
					var tok string
					tok, err = c.Do(ctx, "LOCK", fmt.Sprintf("%s:lock:%d", tag, w), "PX", 2000).Text()
					if err == nil {
						err = c.Do(ctx, "UNLOCK", fmt.Sprintf("%s:lock:%d", tag, w), tok).Err()
					} else if errors.Is(err, redis.Nil) {
						err = nil
					}
				}
				d := time.Since(t0)
				mu.Lock()
				slowest = max(slowest, d)
				if err != nil {
					msg := err.Error()
					if len(msg) > 60 {
						msg = msg[:60]
					}
					errs[msg]++
				} else {
					ops.Add(1)
					lastOK = time.Now()
					// A command sent well after the kill that succeeds was served by the
					// promoted replica: the old primary is dead.
					if !killedAt.IsZero() && firstAfter.IsZero() && t0.After(killedAt.Add(200*time.Millisecond)) {
						firstAfter = lastOK
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed primary %s (pid %d) serving slot %d", victim.addr, pid, slot)
	// Wait until the slot is served through the proxy again, by its new primary.
	waitFor(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !firstAfter.IsZero()
	})
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	reroute := firstAfter.Sub(killedAt)
	t.Logf("first successful command on the slot %v after the kill; slowest request %v; %d ok; errors %v",
		reroute.Round(time.Millisecond), slowest.Round(time.Millisecond), ops.Load(), errs)
	mu.Unlock()
	// node-timeout 3 s + election (~1-2 s) + refresh: the plan's bound is about 7 s.
	if reroute > 15*time.Second {
		t.Errorf("the proxy took %v to serve the slot again", reroute)
	}
	if slowest > 10*time.Second {
		t.Errorf("a request took %v: requests must be answered within their deadline", slowest)
	}
	if !p.Alive() || strings.Contains(p.logs.String(), "panic") {
		t.Fatal("the proxy died or panicked")
	}
	// Bring the node back; it rejoins as a replica of the promoted one.
	restart := exec.Command("bash", "cluster.sh", "restart-node", port)
	restart.Env = append(os.Environ(), "VLP_CLUSTER_BASE_PORT="+strings.Split(clusterAddrs[0], ":")[1])
	if out, err := restart.CombinedOutput(); err != nil {
		t.Fatalf("restart-node %s: %v\n%s", port, err, out)
	}
	back := redis.NewClient(&redis.Options{Addr: victim.addr, Protocol: 2})
	defer back.Close()
	waitFor(t, 30*time.Second, func() bool {
		info, err := back.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
	})
	// Every node agrees the cluster is whole again before the next test.
	waitFor(t, 30*time.Second, func() bool {
		for _, addr := range clusterAddrs {
			d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
			info, err := d.ClusterInfo(ctx).Result()
			_ = d.Close()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
				return false
			}
		}
		return true
	})
}

func nodePID(t *testing.T, ctx context.Context, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err == nil {
				return pid
			}
		}
	}
	t.Fatal("no process_id in INFO server")
	return 0
}
