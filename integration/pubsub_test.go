package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// TestPubSubShapes: SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBE through the proxy deliver messages
// byte-identical to a direct subscription on a cluster node, with single-server counts.
func TestPubSubShapes(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)
	ch, shard := "ps:chan", "ps:{shard}"
	_, owner := primaries(t, ctx, cluster.SlotOfString(shard))
	all, _ := primaries(t, ctx, 0)

	sub := dialRaw(t, p.Addr)
	direct := dialRaw(t, all[(owner+1)%len(all)].addr) // a node the proxy did not subscribe on
	shardDirect := dialRaw(t, all[owner].addr)
	expect := func(rc *rawConn, want string) {
		t.Helper()
		got, err := rc.reply()
		if err != nil || got != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	sub.send(encode("SUBSCRIBE", ch, "ps:other") + encode("PSUBSCRIBE", "ps:p*") + encode("SSUBSCRIBE", shard) + encode("PING") + encode("GET", "x"))
	expect(sub, "*3\r\n$9\r\nsubscribe\r\n$7\r\nps:chan\r\n:1\r\n")
	expect(sub, "*3\r\n$9\r\nsubscribe\r\n$8\r\nps:other\r\n:2\r\n")
	expect(sub, "*3\r\n$10\r\npsubscribe\r\n$5\r\nps:p*\r\n:3\r\n")
	expect(sub, "*3\r\n$10\r\nssubscribe\r\n$10\r\nps:{shard}\r\n:1\r\n")
	expect(sub, "*2\r\n$4\r\npong\r\n$0\r\n\r\n")
	expect(sub, "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n")
	direct.send(encode("SUBSCRIBE", ch) + encode("PSUBSCRIBE", "ps:p*"))
	direct.reply()
	direct.reply()
	shardDirect.send(encode("SSUBSCRIBE", shard))
	shardDirect.reply()

	pub := p.client(t)
	// In a cluster PUBLISH counts the receivers of the node that took it; the message itself
	// reaches every node.
	if n, err := pub.Publish(ctx, ch, "hello\r\nworld").Result(); err != nil || n < 1 {
		t.Fatalf("PUBLISH = %d, %v", n, err)
	}
	got, _ := sub.reply()
	want, _ := direct.reply()
	if got != want || !strings.HasPrefix(got, "*3\r\n$7\r\nmessage\r\n") {
		t.Errorf("message through the proxy %q, direct %q", got, want)
	}
	pub.Publish(ctx, "ps:pattern", "pm")
	got, _ = sub.reply()
	want, _ = direct.reply()
	if got != want || !strings.HasPrefix(got, "*4\r\n$8\r\npmessage\r\n") {
		t.Errorf("pmessage through the proxy %q, direct %q", got, want)
	}
	if err := pub.SPublish(ctx, shard, "sm").Err(); err != nil {
		t.Fatal(err)
	}
	got, _ = sub.reply()
	want, _ = shardDirect.reply()
	if got != want || !strings.HasPrefix(got, "*3\r\n$8\r\nsmessage\r\n") {
		t.Errorf("smessage through the proxy %q, direct %q", got, want)
	}
	// PUBSUB is answered for the whole cluster.
	ns, err := pub.PubSubNumSub(ctx, ch).Result()
	if err != nil || ns[ch] < 2 {
		t.Errorf("PUBSUB NUMSUB = %v, %v (want the proxy's and the direct subscriber)", ns, err)
	}
	if chans, err := pub.PubSubChannels(ctx, "ps:*").Result(); err != nil || len(chans) < 2 {
		t.Errorf("PUBSUB CHANNELS = %v, %v", chans, err)
	}
	if chans, err := pub.PubSubShardChannels(ctx, "ps:*").Result(); err != nil || len(chans) != 1 {
		t.Errorf("PUBSUB SHARDCHANNELS = %v, %v", chans, err)
	}
	// Unsubscribing everything leaves subscribed mode and no server-side subscription.
	sub.send(encode("UNSUBSCRIBE") + encode("PUNSUBSCRIBE") + encode("SUNSUBSCRIBE") + encode("PING"))
	for range 4 {
		if _, err := sub.reply(); err != nil {
			t.Fatal(err)
		}
	}
	expect(sub, "+PONG\r\n")
	sub.send(encode("UNSUBSCRIBE"))
	expect(sub, "-NOSUB 'unsubscribe' command executed not in subscribed mode\r\n")
	_ = direct.c.Close()
	_ = shardDirect.c.Close()
	waitFor(t, 5*time.Second, func() bool { return upstreamSubscribers(t, ctx, ch, shard) == 0 })
}

// upstreamSubscribers counts subscribers of ch and shard channel sh on every node directly.
func upstreamSubscribers(t *testing.T, ctx context.Context, ch, sh string) int64 {
	total := int64(0)
	for _, addr := range clusterAddrs {
		d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
		if m, err := d.PubSubNumSub(ctx, ch).Result(); err == nil {
			total += m[ch]
		}
		if m, err := d.PubSubShardNumSub(ctx, sh).Result(); err == nil {
			total += m[sh]
		}
		if n, err := d.PubSubNumPat(ctx).Result(); err == nil {
			total += n
		}
		_ = d.Close()
	}
	return total
}

// TestPubSubDisconnectAndReset: a subscriber that disconnects or RESETs leaves nothing behind
// upstream.
func TestPubSubDisconnectAndReset(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)
	a := dialRaw(t, p.Addr)
	a.send(encode("SUBSCRIBE", "psd:c") + encode("SSUBSCRIBE", "psd:{s}"))
	a.reply()
	a.reply()
	b := dialRaw(t, p.Addr)
	b.send(encode("PSUBSCRIBE", "psd:*") + encode("RESET"))
	b.reply()
	if got, _ := b.reply(); got != "+RESET\r\n" {
		t.Fatalf("RESET = %q", got)
	}
	b.send(encode("SET", "psd:after-reset", "1"))
	if got, _ := b.reply(); got != "+OK\r\n" {
		t.Fatalf("after RESET: %q", got)
	}
	if got := upstreamSubscribers(t, ctx, "psd:c", "psd:{s}"); got != 2 {
		t.Fatalf("subscribers upstream = %d, want 2", got)
	}
	_ = a.c.Close()
	waitFor(t, 5*time.Second, func() bool { return upstreamSubscribers(t, ctx, "psd:c", "psd:{s}") == 0 })
	waitFor(t, 5*time.Second, func() bool { return proxyInfoField(t, p, "upstream_pinned_connections") == "0" })
}

// TestSlowSubscriber: a subscriber that stops reading is disconnected at a bounded buffer;
// others are served meanwhile and the proxy's memory stays bounded.
func TestSlowSubscriber(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("limits:\n  slow-client-timeout: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, nil, "--config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	slow := dialRaw(t, p.Addr)
	slow.send(encode("SUBSCRIBE", "slow:c"))
	slow.reply()
	rss0 := hostileRSS(t, p.cmd.Process.Pid)
	pub := p.client(t)
	payload := strings.Repeat("x", 64<<10)
	gone := false
	for i := 0; i < 4000 && !gone; i++ {
		n, err := pub.Publish(ctx, "slow:c", payload).Result()
		if err != nil {
			t.Fatal(err)
		}
		gone = n == 0
		if i%100 == 0 {
			// Another client is served all along.
			if err := pub.Set(ctx, "slow:probe", i, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !gone {
		waitFor(t, 10*time.Second, func() bool {
			n, _ := pub.Publish(ctx, "slow:c", "x").Result()
			return n == 0
		})
	}
	rss1 := hostileRSS(t, p.cmd.Process.Pid)
	t.Logf("slow subscriber dropped; proxy VmRSS %d KiB -> %d KiB", rss0, rss1)
	if rss1-rss0 > 64<<10 {
		t.Errorf("RSS grew by %d KiB", rss1-rss0)
	}
	_ = fmt.Sprint()
}

// TestPubSubRefused: a (S)SUBSCRIBE the server refuses (here NOPERM: the proxy's upstream user
// may only use channels "allowed:*") is answered with the server's error at once, and the
// connection stays usable and out of subscribed mode.
func TestPubSubRefused(t *testing.T) {
	ctx := ctxT(t)
	const user, pw = "vlp-pubsub-limited", "limited-pw"
	for _, a := range clusterAddrs {
		c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2})
		if err := c.Do(ctx, "ACL", "SETUSER", user, "reset", "on", ">"+pw, "~*", "&allowed:*", "+@all").Err(); err != nil {
			t.Fatalf("ACL SETUSER on %s: %v", a, err)
		}
		t.Cleanup(func() {
			_ = c.Do(context.Background(), "ACL", "DELUSER", user).Err()
			_ = c.Close()
		})
	}
	t.Setenv("VLP_TEST_LIMITED_PW", pw)
	p := startProxy(t, nil, "--config", writeConfig(t, "upstream:\n  username: "+user+"\n  password-env: VLP_TEST_LIMITED_PW\n"))
	rc := dialRaw(t, p.Addr)
	for _, cmd := range [][]string{{"SSUBSCRIBE", "denied:{x}"}, {"SUBSCRIBE", "denied:plain"}} {
		rc.send(encode(cmd...))
		got, err := rc.reply()
		if err != nil || !strings.HasPrefix(got, "-NOPERM") {
			t.Fatalf("%s of a denied channel = %q, %v; want the server's NOPERM error", cmd[0], got, err)
		}
		rc.send(encode("PING"))
		if got, err := rc.reply(); err != nil || got != "+PONG\r\n" {
			t.Fatalf("PING after a refused %s = %q, %v; want +PONG (not in subscribed mode)", cmd[0], got, err)
		}
	}
	rc.send(encode("SSUBSCRIBE", "allowed:{x}"))
	if got, err := rc.reply(); err != nil || got != "*3\r\n$10\r\nssubscribe\r\n$11\r\nallowed:{x}\r\n:1\r\n" {
		t.Fatalf("SSUBSCRIBE of an allowed channel = %q, %v", got, err)
	}
	// The proxy follows each (un)subscribe with a PING of its own on that connection; a user
	// that may not PING still gets its confirmations, and nothing else.
	for _, a := range clusterAddrs {
		c := redis.NewClient(&redis.Options{Addr: a, Protocol: 2})
		if err := c.Do(ctx, "ACL", "SETUSER", user, "-ping").Err(); err != nil {
			t.Fatalf("ACL SETUSER -ping on %s: %v", a, err)
		}
		_ = c.Close()
	}
	rc.send(encode("SUBSCRIBE", "allowed:plain") + encode("PING", "after"))
	for _, want := range []string{"*3\r\n$9\r\nsubscribe\r\n$13\r\nallowed:plain\r\n:1\r\n", "*2\r\n$4\r\npong\r\n$5\r\nafter\r\n"} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SUBSCRIBE with an upstream user that may not PING: reply %q, %v; want %q", got, err, want)
		}
	}
}

// TestPubSubSunsubscribeAcrossShards: SUNSUBSCRIBE of channels on several shards, one of them
// never subscribed and owned by a shard the client has no subscription on, answers every
// channel in order with single-server counts and leaves subscribed mode.
func TestPubSubSunsubscribeAcrossShards(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)
	// Three channels whose slots three different primaries own.
	var names [3]string
	owners := map[int]bool{}
	for i, k := 0, 0; k < 3 && i < 1000; i++ {
		name := fmt.Sprintf("ps:mix:{%d}", i)
		_, owner := primaries(t, ctx, cluster.SlotOfString(name))
		if !owners[owner] {
			owners[owner] = true
			names[k] = name
			k++
		}
	}
	if len(owners) < 3 {
		t.Fatalf("no three channels on three different primaries found: owners %v", owners)
	}
	a, b, z := names[0], names[1], names[2]
	conf := func(kind, ch string, n int) string {
		return fmt.Sprintf("*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n", len(kind), kind, len(ch), ch, n)
	}
	rc := dialRaw(t, p.Addr)
	// A first SSUBSCRIBE refused (channels of two slots) leaves the client out of subscribed
	// mode: its next command is an ordinary one.
	rc.send(encode("SSUBSCRIBE", a, b) + encode("GET", "ps:mix:none"))
	for _, want := range []string{"-CROSSSLOT Keys in request don't hash to the same slot\r\n", "$-1\r\n"} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SSUBSCRIBE of two slots, then GET: reply %q, %v; want %q", got, err, want)
		}
	}
	rc.send(encode("SSUBSCRIBE", a))
	rc.send(encode("SSUBSCRIBE", b))
	for i, want := range []string{conf("ssubscribe", a, 1), conf("ssubscribe", b, 2)} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SSUBSCRIBE %d = %q, %v; want %q", i, got, err, want)
		}
	}
	rc.send(encode("SUNSUBSCRIBE", a, z, b))
	for _, want := range []string{conf("sunsubscribe", a, 1), conf("sunsubscribe", z, 1), conf("sunsubscribe", b, 0)} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SUNSUBSCRIBE %s %s %s: reply %q, %v; want %q", a, z, b, got, err, want)
		}
	}
	rc.send(encode("PING"))
	if got, err := rc.reply(); err != nil || got != "+PONG\r\n" {
		t.Fatalf("PING after the last SUNSUBSCRIBE = %q, %v; want +PONG (out of subscribed mode)", got, err)
	}

	// SUNSUBSCRIBE without channels asks only the shards that hold some: one reply per
	// channel held, then out of subscribed mode (a shard left without channels used to add a
	// reply of its own).
	rc.send(encode("SSUBSCRIBE", a) + encode("SSUBSCRIBE", b) + encode("SUNSUBSCRIBE", b) + encode("SUNSUBSCRIBE") + encode("PING"))
	for _, want := range []string{conf("ssubscribe", a, 1), conf("ssubscribe", b, 2), conf("sunsubscribe", b, 1),
		conf("sunsubscribe", a, 0), "+PONG\r\n"} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SUNSUBSCRIBE without channels after a shard was left: reply %q, %v; want %q", got, err, want)
		}
	}
}

// TestPubSubSlotMovedPush: when a shard channel's slot moves, the server unsubscribes its
// subscribers on its own; the proxy forwards that sunsubscribe and does not count it as the
// confirmation of the client's next command, whose replies keep their order.
func TestPubSubSlotMovedPush(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)
	ch, other := "ps:moved:{push}", "ps:moved:{stay}"
	slot := cluster.SlotOfString(ch)
	all, owner := primaries(t, ctx, slot)
	if _, o2 := primaries(t, ctx, cluster.SlotOfString(other)); o2 == owner {
		other = "ps:moved:{stay2}"
	}
	rc := dialRaw(t, p.Addr)
	rc.send(encode("SSUBSCRIBE", ch))
	if got, err := rc.reply(); err != nil || !strings.HasPrefix(got, "*3\r\n$10\r\nssubscribe\r\n") {
		t.Fatalf("SSUBSCRIBE = %q, %v", got, err)
	}
	dst := all[(owner+1)%len(all)]
	migrateSlot(t, ctx, all, slot, all[owner], dst)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		migrateSlot(t, cctx, all, slot, dst, all[owner])
	})
	want := fmt.Sprintf("*3\r\n$12\r\nsunsubscribe\r\n$%d\r\n%s\r\n:0\r\n", len(ch), ch)
	if got, err := rc.reply(); err != nil || got != want {
		t.Fatalf("after the slot moved: %q, %v; want the server's %q", got, err, want)
	}
	rc.send(encode("SSUBSCRIBE", other) + encode("PING"))
	for _, want := range []string{fmt.Sprintf("*3\r\n$10\r\nssubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(other), other),
		"*2\r\n$4\r\npong\r\n$0\r\n\r\n"} {
		if got, err := rc.reply(); err != nil || got != want {
			t.Fatalf("SSUBSCRIBE then PING after the push: reply %q, %v; want %q", got, err, want)
		}
	}
}
