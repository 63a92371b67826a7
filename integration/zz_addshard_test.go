package integration

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// TestAskToNewShard adds an empty primary to the cluster, as the first step of adding a shard,
// and starts moving a slot to it. Keys not yet on the old owner are answered with ASK pointing
// at the new node, which owns no slot and so is missing from CLUSTER SLOTS: the proxy must
// follow the ASK to it anyway, and no redirect may reach the client.
//
// The new node is forgotten and stopped at the end, so later tests see the cluster as it was.
func TestAskToNewShard(t *testing.T) {
	ctx := ctxT(t)
	const key = "addshard:{newshard}:k"
	slot := cluster.SlotOfString(key)
	all, owner := primaries(t, ctx, slot)
	src := all[owner]

	// The new node: cluster mode, no slots, in a directory of its own.
	dir := t.TempDir()
	addr := freePort(t)
	host, port, _ := net.SplitHostPort(addr)
	srv := exec.Command("valkey-server", "--port", port, "--bind", host, "--cluster-enabled", "yes",
		"--cluster-node-timeout", "3000", "--cluster-config-file", "nodes.conf", "--save", "",
		"--appendonly", "no", "--dir", dir, "--protected-mode", "no")
	logf, err := os.Create(dir + "/valkey.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	nc := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, PoolSize: 1})
	var newID string
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 20*time.Second)
	}
	t.Cleanup(func() {
		// Undo in reverse: the key, the slot states, then the node itself, forgotten by every
		// other node (within the 60 s in which FORGET keeps it from being re-learnt).
		cctx, cancel := cleanupCtx()
		defer cancel()
		pipe := nc.Pipeline()
		pipe.Do(cctx, "ASKING")
		pipe.Del(cctx, key)
		_, _ = pipe.Exec(cctx)
		_ = src.client.Do(cctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err()
		_ = nc.Do(cctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err()
		_ = nc.Close()
		_ = srv.Process.Kill()
		_ = srv.Wait()
		if newID == "" {
			return
		}
		for _, a := range clusterAddrs {
			c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2})
			if err := c.Do(cctx, "CLUSTER", "FORGET", newID).Err(); err != nil && !strings.Contains(err.Error(), "Unknown node") {
				t.Errorf("CLUSTER FORGET on %s: %v", a, err)
			}
			_ = c.Close()
		}
	})
	waitFor(t, 10*time.Second, func() bool { return nc.Ping(ctx).Err() == nil })
	if newID, err = nc.Do(ctx, "CLUSTER", "MYID").Text(); err != nil {
		t.Fatal(err)
	}
	srcHost, srcPort, _ := net.SplitHostPort(src.addr)
	if err := nc.Do(ctx, "CLUSTER", "MEET", srcHost, srcPort).Err(); err != nil {
		t.Fatal(err)
	}
	// Every primary knows the new node (the proxy asks one of them for CLUSTER NODES before it
	// follows an ASK to an address outside the slot map).
	for _, n := range all {
		waitFor(t, 15*time.Second, func() bool {
			out, err := n.client.ClusterNodes(ctx).Result()
			return err == nil && strings.Contains(out, newID) && !strings.Contains(out, "handshake")
		})
	}
	// The new node serves commands once gossip has told it every slot's owner.
	waitFor(t, 15*time.Second, func() bool {
		info, err := nc.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})

	p := startProxy(t, clusterAddrs)
	c := p.client(t)
	// The slot starts moving: a key the old owner does not have is now the new node's.
	if err := nc.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", src.id).Err(); err != nil {
		t.Fatal(err)
	}
	if err := src.client.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", newID).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, key, "v1", 0).Err(); err != nil {
		t.Fatalf("SET during the move to a new shard: %v", err)
	}
	if v, err := c.Get(ctx, key).Result(); err != nil || v != "v1" {
		t.Fatalf("GET during the move = %q, %v; want v1", v, err)
	}
	// The write went where ASK said: to the new node, not the old owner.
	pipe := nc.Pipeline()
	pipe.Do(ctx, "ASKING")
	got := pipe.Get(ctx, key)
	if _, err := pipe.Exec(ctx); err != nil || got.Val() != "v1" {
		t.Fatalf("the new node has %q, %v; want v1", got.Val(), err)
	}
	// (The old owner answers ASK for a key it does not have, and 1 for one it has.)
	if n, err := src.client.Exists(ctx, key).Result(); n != 0 || err == nil || !strings.HasPrefix(err.Error(), "ASK ") {
		t.Fatalf("EXISTS on the old owner = %d, %v; want ASK (the key is not there)", n, err)
	}
	// A script's ASK-shaped error naming another address is the script's reply, not followed.
	fake := "ASK " + strconv.Itoa(int(slot)) + " 127.0.0.1:1"
	if err := c.Eval(ctx, "return redis.error_reply(ARGV[1])", []string{key}, fake).Err(); err == nil || err.Error() != fake {
		t.Fatalf("EVAL returning %q = %v; want that error verbatim", fake, err)
	}
	// The proxy is still healthy for everything else.
	if err := c.Set(ctx, "addshard:other", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	_ = c.Del(ctx, "addshard:other")
}
