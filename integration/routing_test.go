package integration

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
)

// TestKeySpecsMatchGetKeys checks the proxy's key extraction against the server's own
// COMMAND GETKEYS for commands with every kind of key spec, movable keys included.
func TestKeySpecsMatchGetKeys(t *testing.T) {
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: clusterAddrs[:1], AlwaysRESP2: true, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	ctx := ctxT(t)
	reply, err := rc.Do(ctx, rc.B().Command().Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	table, err := commands.Load(reply, commands.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	corpus := [][]string{
		{"GET", "a"},
		{"SET", "a", "1", "EX", "10"},
		{"MGET", "a", "b", "c"},
		{"MSET", "a", "1", "b", "2"},
		{"DEL", "a", "b"},
		{"EVAL", "return 1", "2", "k1", "k2", "arg"},
		{"EVAL", "return 1", "0"},
		{"EVALSHA", "abc", "1", "k1"},
		{"EVAL_RO", "return 1", "1", "k1", "x"},
		{"FCALL", "f", "2", "k1", "k2", "a"},
		{"XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"},
		{"XREAD", "BLOCK", "0", "STREAMS", "s1", "$"},
		{"XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s1", "s2", ">", ">"},
		{"ZUNIONSTORE", "dst", "2", "z1", "z2", "WEIGHTS", "1", "2"},
		{"ZINTERSTORE", "dst", "3", "z1", "z2", "z3"},
		{"ZUNION", "2", "z1", "z2"},
		{"ZDIFF", "2", "z1", "z2", "WITHSCORES"},
		{"SINTERCARD", "2", "s1", "s2", "LIMIT", "1"},
		{"LMPOP", "2", "l1", "l2", "LEFT", "COUNT", "1"},
		{"BLMPOP", "0", "2", "l1", "l2", "LEFT"},
		{"ZMPOP", "2", "z1", "z2", "MIN"},
		{"BZMPOP", "1", "2", "z1", "z2", "MAX"},
		{"SORT", "src", "BY", "w_*", "GET", "o_*", "STORE", "dst"},
		{"SORT", "src", "LIMIT", "0", "1"},
		{"SORT_RO", "src", "ALPHA"},
		{"GEORADIUS", "src", "0", "0", "10", "km", "STORE", "dst"},
		{"GEORADIUS", "src", "0", "0", "10", "km", "STOREDIST", "dst"},
		{"GEORADIUSBYMEMBER", "src", "m", "10", "km", "STORE", "dst"},
		{"GEOSEARCHSTORE", "dst", "src", "FROMMEMBER", "m", "BYRADIUS", "1", "km"},
		{"BLPOP", "l1", "l2", "0"},
		{"BRPOPLPUSH", "src", "dst", "0"},
		{"BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"},
		{"RENAME", "a", "b"},
		{"COPY", "a", "b", "REPLACE"},
		{"SMOVE", "s1", "s2", "m"},
		{"OBJECT", "ENCODING", "a"},
		{"MEMORY", "USAGE", "a"},
		{"XINFO", "STREAM", "s1"},
		{"XGROUP", "CREATE", "s1", "g", "$"},
		{"PFCOUNT", "h1", "h2"},
		{"PFMERGE", "dst", "h1", "h2"},
		{"BITOP", "AND", "dst", "a", "b"},
		{"SUNIONSTORE", "dst", "s1", "s2"},
		{"MSETNX", "a", "1", "b", "2"},
		{"LCS", "a", "b"},
		{"WATCH", "a", "b"},
		{"TOUCH", "a", "b"},
		{"EXISTS", "a", "b", "c"},
		{"SPUBLISH", "ch", "msg"},
		{"SSUBSCRIBE", "ch1", "ch2"},
		{"DUMP", "a"},
		{"RESTORE", "a", "0", "x"},
		{"BITFIELD_RO", "a", "GET", "u8", "0"},
		{"HGETALL", "h"},
	}
	for _, args := range corpus {
		bargs := make([][]byte, len(args))
		for i, a := range args {
			bargs[i] = []byte(a)
		}
		spec, errText := table.Lookup(bargs)
		if spec == nil {
			t.Errorf("%v: lookup: %s", args, errText)
			continue
		}
		var got []string
		for _, i := range spec.Keys(bargs, nil) {
			got = append(got, args[i])
		}
		want, err := rc.Do(ctx, rc.B().Arbitrary(append([]string{"COMMAND", "GETKEYS"}, args...)...).Build()).AsStrSlice()
		if err != nil {
			if strings.Contains(err.Error(), "no key arguments") {
				want = nil
			} else {
				t.Errorf("%v: COMMAND GETKEYS: %v", args, err)
				continue
			}
		}
		// Shard channels are flagged not_key, so GETKEYS omits them, but they decide the slot.
		switch args[0] {
		case "SPUBLISH":
			want = args[1:2]
		case "SSUBSCRIBE":
			want = args[1:]
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%v: proxy keys %q, server keys %q", args, got, want)
		}
	}
}

// TestSlotOfMatchesServer compares cluster.SlotOf with CLUSTER KEYSLOT for random and hostile
// names.
func TestSlotOfMatchesServer(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: clusterAddrs[0], Protocol: 2})
	defer c.Close()
	ctx := ctxT(t)
	names := []string{"", "{", "}", "{}", "{}x", "x{", "a}b", "{t}y", "x{t}y{u}", "{{t}}", "\x00\xff{\r\n}", strings.Repeat("k", 100000)}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := "ab{}\x00\xff"
	for range 2000 {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		names = append(names, string(b))
	}
	pipe := c.Pipeline()
	cmds := make([]*redis.IntCmd, len(names))
	for i, n := range names {
		cmds[i] = pipe.ClusterKeySlot(ctx, n)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		if got, want := cluster.SlotOfString(n), cmds[i].Val(); int64(got) != want {
			t.Errorf("SlotOf(%q) = %d, server says %d", n, got, want)
		}
	}
}

// TestSplitCommandsAcrossSlots checks MGET/MSET/DEL/UNLINK/EXISTS/TOUCH over keys on every
// shard: replies merged in the client's order or summed.
func TestSplitCommandsAcrossSlots(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx := ctxT(t)
	const n = 200
	keys := make([]string, n)
	kv := make([]any, 0, 2*n)
	for i := range keys {
		keys[i] = fmt.Sprintf("split:%d", i)
		kv = append(kv, keys[i], fmt.Sprintf("v%d", i))
	}
	slots := map[uint16]bool{}
	for _, k := range keys {
		slots[cluster.SlotOfString(k)] = true
	}
	if len(slots) < 100 {
		t.Fatalf("keys span only %d slots", len(slots))
	}
	if err := c.MSet(ctx, kv...).Err(); err != nil {
		t.Fatal(err)
	}
	withMissing := append([]string{"split:missing"}, keys...)
	vals, err := c.MGet(ctx, withMissing...).Result()
	if err != nil {
		t.Fatal(err)
	}
	if vals[0] != nil {
		t.Errorf("MGET of a missing key = %v", vals[0])
	}
	for i, k := range keys {
		if vals[i+1] != fmt.Sprintf("v%d", i) {
			t.Fatalf("MGET %s = %v", k, vals[i+1])
		}
	}
	// Direct check that every value really is on the cluster.
	cc := clusterClient(t)
	for i, k := range keys[:20] {
		if v, err := cc.Get(ctx, k).Result(); err != nil || v != fmt.Sprintf("v%d", i) {
			t.Fatalf("direct GET %s = %q, %v", k, v, err)
		}
	}
	dup := append(append([]string{}, keys...), keys[0], "split:missing")
	if got, err := c.Exists(ctx, dup...).Result(); err != nil || got != n+1 {
		t.Errorf("EXISTS = %d, %v; want %d", got, err, n+1)
	}
	if got, err := c.Touch(ctx, keys...).Result(); err != nil || got != n {
		t.Errorf("TOUCH = %d, %v; want %d", got, err, n)
	}
	if got, err := c.Unlink(ctx, keys[:n/2]...).Result(); err != nil || got != n/2 {
		t.Errorf("UNLINK = %d, %v; want %d", got, err, n/2)
	}
	if got, err := c.Del(ctx, keys...).Result(); err != nil || got != n/2 {
		t.Errorf("DEL = %d, %v; want %d", got, err, n/2)
	}
	// An error from one part reaches the client: MSET with an odd count never gets that far,
	// but MGET on a key of the wrong type answers nil like Valkey.
	if err := c.Do(ctx, "MSET", "split:a", "1", "split:b").Err(); err == nil || !strings.Contains(err.Error(), "wrong number of arguments") {
		t.Errorf("MSET odd args: %v", err)
	}
}

// TestCrossSlotRefused checks that multi-key commands that are not split get CROSSSLOT.
func TestCrossSlotRefused(t *testing.T) {
	p := startProxy(t, nil)
	raw := dialRaw(t, p.Addr)
	a, b := "xs:a", "xs:b"
	if cluster.SlotOfString(a) == cluster.SlotOfString(b) {
		t.Fatal("test keys share a slot")
	}
	for _, args := range [][]string{
		{"SUNIONSTORE", a, b},
		{"MSETNX", a, "1", b, "2"},
		{"RENAME", a, b},
		{"EVAL", "return 1", "2", a, b},
		{"ZUNIONSTORE", a, "1", b},
		{"XREAD", "STREAMS", a, b, "0", "0"},
		{"SORT", a, "STORE", b},
	} {
		raw.send(encode(args...))
		got, err := raw.reply()
		if err != nil {
			t.Fatal(err)
		}
		if got != "-CROSSSLOT Keys in request don't hash to the same slot\r\n" {
			t.Errorf("%v: %q", args, got)
		}
	}
}

// TestKeylessBasics covers the keyless commands the proxy answers or routes.
func TestKeylessBasics(t *testing.T) {
	p := startProxy(t, nil)
	raw := dialRaw(t, p.Addr)
	exact := []struct {
		args []string
		want string
	}{
		{[]string{"PING"}, "+PONG\r\n"},
		{[]string{"ping", "hi"}, "$2\r\nhi\r\n"},
		{[]string{"ECHO", "a\r\nb"}, "$4\r\na\r\nb\r\n"},
		{[]string{"SELECT", "0"}, "+OK\r\n"},
		{[]string{"SELECT", "1"}, "-ERR DB index is out of range\r\n"},
		{[]string{"SELECT", "x"}, "-ERR value is not an integer or out of range\r\n"},
		{[]string{"HELLO", "3"}, "-NOPROTO unsupported protocol version\r\n"},
		{[]string{"HELLO", "x"}, "-ERR Protocol version is not an integer or out of range\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$-1\r\n"},
		{[]string{"CLIENT", "SETNAME", "app-1"}, "+OK\r\n"},
		{[]string{"CLIENT", "GETNAME"}, "$5\r\napp-1\r\n"},
		{[]string{"CLIENT", "SETNAME", "a b"}, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"},
		{[]string{"CLIENT", "SETINFO", "LIB-NAME", "go-redis"}, "+OK\r\n"},
		{[]string{"CLIENT", "SETINFO", "LIB-VER", "9.0"}, "+OK\r\n"},
		{[]string{"CLIENT", "SETINFO", "FOO", "x"}, "-ERR Unrecognized option 'FOO'\r\n"},
		{[]string{"CLUSTER", "INFO"}, "-ERR This instance has cluster support disabled\r\n"},
		{[]string{"MONITOR"}, "-ERR command 'monitor' is not allowed by the proxy policy\r\n"},
		{[]string{"FLUSHALL"}, "-ERR command 'flushall' is not allowed by the proxy policy\r\n"},
		{[]string{"flushdb"}, "-ERR command 'flushdb' is not allowed by the proxy policy\r\n"},
		{[]string{"GET"}, "-ERR wrong number of arguments for 'get' command\r\n"},
		{[]string{"NOSUCH", "a", "b"}, "-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' \r\n"},
	}
	for _, tt := range exact {
		raw.send(encode(tt.args...))
		got, err := raw.reply()
		if err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("%v = %q, want %q", tt.args, got, tt.want)
		}
	}
	c := p.client(t)
	ctx := ctxT(t)
	id, err := c.ClientID(ctx).Result()
	if err != nil || id <= 0 {
		t.Errorf("CLIENT ID = %d, %v", id, err)
	}
	if ts, err := c.Time(ctx).Result(); err != nil || ts.IsZero() {
		t.Errorf("TIME = %v, %v", ts, err)
	}
	hello, err := c.Do(ctx, "HELLO", "2").Slice()
	if err != nil || len(hello) != 14 || hello[0] != "server" || hello[5] != int64(2) || hello[9] != "standalone" {
		t.Errorf("HELLO 2 = %v, %v", hello, err)
	}
	info, err := c.Info(ctx).Result()
	if err != nil || !strings.Contains(info, "# Proxy") || !strings.Contains(info, "valkey_version:") || !strings.Contains(info, "upstream_primaries:3") {
		t.Errorf("INFO = %q, %v", info, err)
	}
	if n, err := c.Do(ctx, "COMMAND", "COUNT").Int64(); err != nil || n < 200 {
		t.Errorf("COMMAND COUNT = %d, %v", n, err)
	}
	if docs, err := c.Do(ctx, "COMMAND", "DOCS", "get").Slice(); err != nil || len(docs) != 2 {
		t.Errorf("COMMAND DOCS get = %v, %v", docs, err)
	}
	// DBSIZE is the sum over the primaries.
	var want int64
	for _, addr := range clusterAddrs {
		d := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2})
		role, _ := d.Do(ctx, "ROLE").Slice()
		if len(role) > 0 && role[0] == "master" {
			n, _ := d.DBSize(ctx).Result()
			want += n
		}
		_ = d.Close()
	}
	if got, err := c.DBSize(ctx).Result(); err != nil || got < want-50 || got > want+50 {
		// Other tests may write concurrently: allow a little drift.
		t.Errorf("DBSIZE = %d, %v; primaries say %d", got, err, want)
	}
	// QUIT answers OK and closes; nothing after it runs.
	q := dialRaw(t, p.Addr)
	q.send(encode("QUIT") + encode("SET", "quit:after", "1"))
	if got, _ := q.reply(); got != "+OK\r\n" {
		t.Errorf("QUIT = %q", got)
	}
	if _, err := q.reply(); err == nil {
		t.Error("connection still open after QUIT")
	}
	if n, _ := c.Exists(ctx, "quit:after").Result(); n != 0 {
		t.Error("a command after QUIT was executed")
	}
}

// TestStandaloneUpstream runs the proxy in front of a non-cluster server.
func TestStandaloneUpstream(t *testing.T) {
	if standaloneAddr == "" {
		t.Fatal("VLP_STANDALONE_ADDR is not set")
	}
	p := startProxy(t, []string{standaloneAddr})
	c := p.client(t)
	ctx := ctxT(t)
	if err := c.MSet(ctx, "sa:a", "1", "sa:b", "2").Err(); err != nil {
		t.Fatal(err)
	}
	vals, err := c.MGet(ctx, "sa:a", "sa:b").Result()
	if err != nil || vals[0] != "1" || vals[1] != "2" {
		t.Fatalf("MGET = %v, %v", vals, err)
	}
	info, _ := c.Info(ctx, "proxy").Result()
	if !strings.Contains(info, "upstream_mode:standalone") {
		t.Errorf("INFO proxy = %q", info)
	}
	d := redis.NewClient(&redis.Options{Addr: standaloneAddr, Protocol: 2})
	defer d.Close()
	if v, _ := d.Get(ctx, "sa:b").Result(); v != "2" {
		t.Errorf("direct GET = %q", v)
	}
	c.Del(ctx, "sa:a", "sa:b")
}
