package integration

// Real clients pointed at the proxy as at one standalone server: go-redis v9, rueidis
// (standalone mode), valkey-cli, and Node's ioredis and @valkey/valkey-glide (installed from
// npm by the test itself). Each client makes its own handshake (HELLO, CLIENT SETINFO, INFO ...),
// then strings, hashes, a pipeline, MULTI/EXEC, pub/sub and a LOCK/UNLOCK through the client's
// generic-command call.
//
// Every client talks to the proxy through a recorder: a TCP relay that forwards bytes verbatim
// and decodes both directions, so each test logs the exact commands its client sent (the
// handshake included) and fails, naming the command, on any error reply it did not expect: a
// command a client needs that the proxy does not support shows up there even when the client
// itself swallows the error (go-redis and ioredis ignore a failed CLIENT SETINFO, say).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// tokenRE matches a lock token: <client-id>:<n>, printable ASCII, at most 64 bytes.
var tokenRE = regexp.MustCompile(`^[!-~]{1,62}:[0-9]+$`)

// uniquePrefix returns a key prefix no other run or test uses on the shared cluster.
func uniquePrefix(name string) string {
	return fmt.Sprintf("vlpclients:%s:%d:", name, time.Now().UnixNano())
}

// allowNoProto accepts the one error every RESP3-first client is meant to get: HELLO 3 →
// NOPROTO (SPEC §4: the proxy speaks RESP2 only), after which the client falls back to RESP2.
func allowNoProto(cmd []string, msg string) bool {
	return len(cmd) >= 2 && strings.EqualFold(cmd[0], "hello") && cmd[1] == "3" &&
		strings.HasPrefix(msg, "NOPROTO")
}

// ---------------------------------------------------------------------------------------------
// go-redis v9

func TestClientGoRedis(t *testing.T) {
	p := startProxy(t, nil)
	tests := []struct {
		name     string
		protocol int // 0: go-redis's default (3, with its own fallback to RESP2)
		hello    string
	}{
		{name: "default", protocol: 0, hello: "3"},
		{name: "protocol2", protocol: 2, hello: "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := startRecorder(t, p.Addr)
			defer rec.check(t, allowNoProto)
			newClient := func() *redis.Client {
				c := redis.NewClient(&redis.Options{
					Addr: rec.Addr, Protocol: tt.protocol,
					DialTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
				})
				t.Cleanup(func() { _ = c.Close() })
				return c
			}
			c, other := newClient(), newClient()
			ctx := ctxT(t)
			pre := uniquePrefix("goredis-" + tt.name)
			t.Cleanup(func() { cleanupKeys(c, pre) })

			t.Run("handshake", func(t *testing.T) {
				if err := c.Ping(ctx).Err(); err != nil {
					t.Fatalf("PING: %v", err)
				}
				first := rec.firstCommand()
				if len(first) < 2 || !strings.EqualFold(first[0], "hello") || first[1] != tt.hello {
					t.Errorf("first command = %q, want HELLO %s", first, tt.hello)
				}
				list, err := c.ClientList(ctx).Result()
				if err != nil {
					t.Fatalf("CLIENT LIST: %v", err)
				}
				if !strings.Contains(list, "lib-name=go-redis") {
					t.Errorf("CLIENT LIST has no lib-name=go-redis (CLIENT SETINFO lost?):\n%s", list)
				}
			})
			t.Run("strings", func(t *testing.T) {
				k := pre + "s"
				mustEqual(t, "SET", c.Set(ctx, k, "v1", 0).Val(), "OK")
				mustEqual(t, "GET", c.Get(ctx, k).Val(), "v1")
				if err := c.Get(ctx, pre+"missing").Err(); err != redis.Nil {
					t.Errorf("GET missing: err = %v, want redis.Nil", err)
				}
				mustEqual(t, "APPEND", c.Append(ctx, k, "+").Val(), int64(3))
				mustEqual(t, "INCRBY", c.IncrBy(ctx, pre+"n", 5).Val(), int64(5))
				mustEqual(t, "SETNX", c.SetNX(ctx, k, "x", 0).Val(), false)
				mustEqual(t, "SET EX", c.Set(ctx, pre+"ttl", "t", time.Minute).Val(), "OK")
				if ttl := c.TTL(ctx, pre+"ttl").Val(); ttl <= 0 || ttl > time.Minute {
					t.Errorf("TTL = %v", ttl)
				}
				mustEqual(t, "MSET", c.MSet(ctx, pre+"m1", "a", pre+"m2", "b").Val(), "OK")
				mustEqual(t, "MGET", c.MGet(ctx, pre+"m1", pre+"m2", pre+"missing").Val(), []any{"a", "b", nil})
			})
			t.Run("hashes", func(t *testing.T) {
				h := pre + "h"
				mustEqual(t, "HSET", c.HSet(ctx, h, "f1", "v1", "f2", "v2").Val(), int64(2))
				mustEqual(t, "HGET", c.HGet(ctx, h, "f1").Val(), "v1")
				mustEqual(t, "HINCRBY", c.HIncrBy(ctx, h, "n", 3).Val(), int64(3))
				mustEqual(t, "HGETALL", c.HGetAll(ctx, h).Val(), map[string]string{"f1": "v1", "f2": "v2", "n": "3"})
				mustEqual(t, "HMGET", c.HMGet(ctx, h, "f2", "none").Val(), []any{"v2", nil})
				mustEqual(t, "HDEL", c.HDel(ctx, h, "f1").Val(), int64(1))
				mustEqual(t, "HLEN", c.HLen(ctx, h).Val(), int64(2))
			})
			t.Run("pipeline", func(t *testing.T) {
				cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, pre+"p1", "1", 0)
					p.Incr(ctx, pre+"p1")
					p.HSet(ctx, pre+"ph", "f", "v")
					p.Get(ctx, pre+"p1")
					p.Get(ctx, pre+"missing")
					return nil
				})
				if err != redis.Nil { // the last GET is nil: Pipelined returns the first error
					t.Fatalf("Pipelined: %v", err)
				}
				mustEqual(t, "pipeline replies", cmdValues(cmds), []string{"OK", "2", "1", "2", "redis: nil"})
			})
			t.Run("multi-exec", func(t *testing.T) {
				k1, k2 := pre+"{tx}a", pre+"{tx}b"
				cmds, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, k1, "x", 0)
					p.Incr(ctx, k2)
					p.Incr(ctx, k2)
					p.Get(ctx, k1)
					return nil
				})
				if err != nil {
					t.Fatalf("TxPipelined: %v", err)
				}
				mustEqual(t, "EXEC replies", cmdValues(cmds), []string{"OK", "1", "2", "x"})
			})
			t.Run("watch", func(t *testing.T) {
				k := pre + "{w}n"
				c.Set(ctx, k, "1", 0)
				incr := func(tx *redis.Tx, meddle bool) error {
					n, err := tx.Get(ctx, k).Int()
					if err != nil {
						return err
					}
					if meddle {
						if err := other.Set(ctx, k, "100", 0).Err(); err != nil {
							return err
						}
					}
					_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
						p.Set(ctx, k, n+1, 0)
						return nil
					})
					return err
				}
				if err := c.Watch(ctx, func(tx *redis.Tx) error { return incr(tx, false) }, k); err != nil {
					t.Fatalf("WATCH, no conflict: %v", err)
				}
				mustEqual(t, "after WATCH/EXEC", c.Get(ctx, k).Val(), "2")
				if err := c.Watch(ctx, func(tx *redis.Tx) error { return incr(tx, true) }, k); err != redis.TxFailedErr {
					t.Fatalf("WATCH, key changed by another client: err = %v, want redis.TxFailedErr", err)
				}
				mustEqual(t, "after aborted EXEC", c.Get(ctx, k).Val(), "100")
			})
			t.Run("pubsub", func(t *testing.T) {
				goRedisPubSub(t, ctx, c, other, pre)
			})
			t.Run("lock", func(t *testing.T) {
				res := pre + "lock"
				tok, err := c.Do(ctx, "LOCK", res, "PX", 10000).Text()
				if err != nil || !tokenRE.MatchString(tok) {
					t.Fatalf("LOCK = %q, %v; want a token", tok, err)
				}
				if v, err := other.Do(ctx, "LOCK", res).Result(); err != redis.Nil {
					t.Errorf("LOCK of a held lock = %v, %v; want nil", v, err)
				}
				info, err := c.Do(ctx, "LOCKINFO", res).Slice()
				if err != nil || len(info) != 6 || info[0] != "token" || info[1] != tok {
					t.Errorf("LOCKINFO = %v, %v", info, err)
				}
				mustEqual(t, "UNLOCK (token, any connection)", other.Do(ctx, "UNLOCK", res, tok).Val(), int64(1))
				mustEqual(t, "UNLOCK again", c.Do(ctx, "UNLOCK", res, tok).Val(), int64(0))
				fenced, err := c.Do(ctx, "LOCK", res, "PX", 10000, "FENCE").Slice()
				if err != nil || len(fenced) != 2 {
					t.Fatalf("LOCK FENCE = %v, %v; want [token fence]", fenced, err)
				}
				if _, ok := fenced[1].(int64); !ok {
					t.Errorf("LOCK FENCE fence = %T %v, want an integer", fenced[1], fenced[1])
				}
				mustEqual(t, "UNLOCK fenced", c.Do(ctx, "UNLOCK", res, fenced[0]).Val(), int64(1))
			})
		})
	}
}

func goRedisPubSub(t *testing.T, ctx context.Context, c, publisher *redis.Client, pre string) {
	ch, pattern := pre+"ch", pre+"pat.*"
	ps := c.Subscribe(ctx, ch)
	defer ps.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg, err := ps.Receive(rctx)
	if err != nil {
		t.Fatalf("SUBSCRIBE %s: %v", ch, err)
	}
	mustEqual(t, "SUBSCRIBE confirmation", msg, &redis.Subscription{Kind: "subscribe", Channel: ch, Count: 1})
	if err := ps.PSubscribe(rctx, pattern); err != nil {
		t.Fatalf("PSUBSCRIBE: %v", err)
	}
	msg, err = ps.Receive(rctx)
	if err != nil {
		t.Fatalf("PSUBSCRIBE %s: %v", pattern, err)
	}
	mustEqual(t, "PSUBSCRIBE confirmation", msg, &redis.Subscription{Kind: "psubscribe", Channel: pattern, Count: 2})
	if err := ps.Ping(rctx, "hi"); err != nil {
		t.Fatalf("PING while subscribed: %v", err)
	}
	msg, err = ps.Receive(rctx)
	if err != nil {
		t.Fatalf("PING reply while subscribed: %v", err)
	}
	mustEqual(t, "PING while subscribed", msg, &redis.Pong{Payload: "hi"})

	// The subscription is confirmed: one PUBLISH (from another connection) must arrive.
	// Its count is not checked: in a cluster it counts the receiving node's subscribers only.
	if err := publisher.Publish(ctx, ch, "hello").Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
	m, err := ps.ReceiveMessage(rctx)
	if err != nil {
		t.Fatalf("receive message: %v", err)
	}
	mustEqual(t, "message", [3]string{m.Channel, m.Pattern, m.Payload}, [3]string{ch, "", "hello"})
	if err := publisher.Publish(ctx, pre+"pat.x", "world").Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
	m, err = ps.ReceiveMessage(rctx)
	if err != nil {
		t.Fatalf("receive pmessage: %v", err)
	}
	mustEqual(t, "pmessage", [3]string{m.Channel, m.Pattern, m.Payload}, [3]string{pre + "pat.x", pattern, "world"})
	if err := ps.Unsubscribe(rctx, ch); err != nil {
		t.Fatalf("UNSUBSCRIBE: %v", err)
	}
	msg, err = ps.Receive(rctx)
	if err != nil {
		t.Fatalf("UNSUBSCRIBE reply: %v", err)
	}
	mustEqual(t, "UNSUBSCRIBE confirmation", msg, &redis.Subscription{Kind: "unsubscribe", Channel: ch, Count: 1})
}

// cmdValues renders each pipelined command's result (or error) as a string.
func cmdValues(cmds []redis.Cmder) []string {
	out := make([]string, len(cmds))
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			out[i] = err.Error()
			continue
		}
		switch c := cmd.(type) {
		case *redis.StatusCmd:
			out[i] = c.Val()
		case *redis.StringCmd:
			out[i] = c.Val()
		case *redis.IntCmd:
			out[i] = strconv.FormatInt(c.Val(), 10)
		default:
			out[i] = cmd.String()
		}
	}
	return out
}

func cleanupKeys(c *redis.Client, pre string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, pre+"*", 1000).Result()
		if err != nil {
			return // SCAN may not be supported yet; the keys are uniquely named anyway
		}
		for _, k := range keys {
			c.Del(ctx, k)
		}
		if cursor = next; cursor == 0 {
			return
		}
	}
}

func mustEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if g, w := fmt.Sprintf("%#v", got), fmt.Sprintf("%#v", want); g != w {
		t.Errorf("%s = %s, want %s", what, g, w)
	}
}

// ---------------------------------------------------------------------------------------------
// rueidis

func TestClientRueidis(t *testing.T) {
	p := startProxy(t, nil)
	ctx := ctxT(t)

	t.Run("resp2", func(t *testing.T) {
		rec := startRecorder(t, p.Addr)
		defer rec.check(t, nil) // AlwaysRESP2: not even HELLO 3 may fail
		// AlwaysRESP2: the proxy speaks RESP2 only (HELLO 3 answers NOPROTO), and rueidis v1 falls
		// back from HELLO 3 only on "unknown command 'HELLO'" (pipe.go's noHello), not on
		// NOPROTO: see the "hello3" subtest. DisableCache: client-side caching needs RESP3.
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{rec.Addr}, ForceSingleClient: true, AlwaysRESP2: true, DisableCache: true,
			Dialer: net.Dialer{Timeout: 5 * time.Second}, ConnWriteTimeout: 10 * time.Second,
		})
		if err != nil {
			t.Fatalf("rueidis.NewClient: %v", err)
		}
		defer c.Close()
		first := rec.firstCommand()
		if len(first) < 2 || !strings.EqualFold(first[0], "hello") || first[1] != "2" {
			t.Errorf("first command = %q, want HELLO 2", first)
		}
		rueidisSuite(t, ctx, c, uniquePrefix("rueidis"))
	})

	t.Run("hello3", func(t *testing.T) {
		rec := startRecorder(t, p.Addr)
		defer rec.check(t, allowNoProto)
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{rec.Addr}, ForceSingleClient: true, DisableCache: true,
			Dialer: net.Dialer{Timeout: 5 * time.Second}, ConnWriteTimeout: 10 * time.Second,
		})
		if err != nil {
			// Expected with rueidis v1.0.x: HELLO 3 → NOPROTO is not one of the errors it
			// downgrades on, so it gives up; AlwaysRESP2 is required against this proxy.
			if !strings.Contains(err.Error(), "NOPROTO") {
				t.Fatalf("rueidis.NewClient without AlwaysRESP2: %v (want the NOPROTO refusal of HELLO 3)", err)
			}
			t.Logf("rueidis without AlwaysRESP2 does not fall back to RESP2 on NOPROTO: NewClient: %v", err)
			return
		}
		defer c.Close()
		t.Logf("rueidis without AlwaysRESP2 connected: running the same checks")
		rueidisSuite(t, ctx, c, uniquePrefix("rueidis-hello3"))
	})
}

func rueidisSuite(t *testing.T, ctx context.Context, c rueidis.Client, pre string) {
	b := c.B
	t.Run("handshake", func(t *testing.T) {
		list, err := c.Do(ctx, b().ClientList().Build()).ToString()
		if err != nil {
			t.Fatalf("CLIENT LIST: %v", err)
		}
		if !strings.Contains(list, "lib-name=rueidis") {
			t.Errorf("CLIENT LIST has no lib-name=rueidis:\n%s", list)
		}
	})
	t.Run("strings", func(t *testing.T) {
		k := pre + "s"
		mustEqual(t, "SET", rstr(c.Do(ctx, b().Set().Key(k).Value("v1").Build())), "OK")
		mustEqual(t, "GET", rstr(c.Do(ctx, b().Get().Key(k).Build())), "v1")
		if err := c.Do(ctx, b().Get().Key(pre+"missing").Build()).Error(); !rueidis.IsRedisNil(err) {
			t.Errorf("GET missing: %v, want nil", err)
		}
		mustEqual(t, "INCRBY", rint(c.Do(ctx, b().Incrby().Key(pre+"n").Increment(7).Build())), int64(7))
		mustEqual(t, "SET EX", rstr(c.Do(ctx, b().Set().Key(pre+"ttl").Value("t").ExSeconds(60).Build())), "OK")
		mustEqual(t, "MSET", rstr(c.Do(ctx, b().Mset().KeyValue().KeyValue(pre+"m1", "a").KeyValue(pre+"m2", "b").Build())), "OK")
		vals, err := c.Do(ctx, b().Mget().Key(pre+"m1", pre+"m2", pre+"missing").Build()).ToArray()
		if err != nil || len(vals) != 3 {
			t.Fatalf("MGET: %v %v", vals, err)
		}
		mustEqual(t, "MGET", []string{rstr(&vals[0]), rstr(&vals[1]), fmt.Sprint(vals[2].IsNil())}, []string{"a", "b", "true"})
	})
	t.Run("hashes", func(t *testing.T) {
		h := pre + "h"
		mustEqual(t, "HSET", rint(c.Do(ctx, b().Hset().Key(h).FieldValue().FieldValue("f1", "v1").FieldValue("f2", "v2").Build())), int64(2))
		mustEqual(t, "HGET", rstr(c.Do(ctx, b().Hget().Key(h).Field("f2").Build())), "v2")
		all, err := c.Do(ctx, b().Hgetall().Key(h).Build()).AsStrMap()
		if err != nil {
			t.Fatalf("HGETALL: %v", err)
		}
		mustEqual(t, "HGETALL", all, map[string]string{"f1": "v1", "f2": "v2"})
	})
	t.Run("pipeline", func(t *testing.T) {
		resps := c.DoMulti(ctx,
			b().Set().Key(pre+"p1").Value("1").Build(),
			b().Incr().Key(pre+"p1").Build(),
			b().Hset().Key(pre+"ph").FieldValue().FieldValue("f", "v").Build(),
			b().Get().Key(pre+"p1").Build(),
			b().Get().Key(pre+"missing").Build(),
		)
		mustEqual(t, "pipeline replies", rvals(resps), []string{"OK", "2", "1", "2", "<nil>"})
	})
	t.Run("multi-exec", func(t *testing.T) {
		k1, k2 := pre+"{tx}a", pre+"{tx}b"
		resps := c.DoMulti(ctx,
			b().Multi().Build(),
			b().Set().Key(k1).Value("x").Build(),
			b().Incr().Key(k2).Build(),
			b().Get().Key(k1).Build(),
			b().Exec().Build(),
		)
		mustEqual(t, "MULTI..EXEC replies", rvals(resps[:4]), []string{"OK", "QUEUED", "QUEUED", "QUEUED"})
		arr, err := resps[4].ToArray()
		if err != nil {
			t.Fatalf("EXEC: %v", err)
		}
		mustEqual(t, "EXEC", rmsgs(arr), []string{"OK", "1", "x"})
	})
	t.Run("watch", func(t *testing.T) {
		k := pre + "{w}n"
		c.Do(ctx, b().Set().Key(k).Value("1").Build())
		err := c.Dedicated(func(d rueidis.DedicatedClient) error {
			if err := d.Do(ctx, d.B().Watch().Key(k).Build()).Error(); err != nil {
				return fmt.Errorf("WATCH: %w", err)
			}
			// Another connection changes the watched key: EXEC must abort (nil).
			if err := c.Do(ctx, b().Set().Key(k).Value("100").Build()).Error(); err != nil {
				return err
			}
			resps := d.DoMulti(ctx, d.B().Multi().Build(), d.B().Set().Key(k).Value("999").Build(), d.B().Exec().Build())
			if err := resps[2].Error(); !rueidis.IsRedisNil(err) {
				return fmt.Errorf("EXEC after a conflicting write = %v, %v; want nil", rvals(resps), err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		mustEqual(t, "after aborted EXEC", rstr(c.Do(ctx, b().Get().Key(k).Build())), "100")
	})
	t.Run("pubsub", func(t *testing.T) {
		ch := pre + "ch"
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		got := make(chan rueidis.PubSubMessage, 10)
		done := make(chan error, 1)
		go func() {
			done <- c.Receive(rctx, b().Subscribe().Channel(ch).Build(), func(m rueidis.PubSubMessage) { got <- m })
		}()
		// rueidis.Receive gives no signal once subscribed: publish until a message arrives.
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case m := <-got:
				mustEqual(t, "message", [3]string{m.Channel, m.Pattern, m.Message}, [3]string{ch, "", "hello"})
				cancel()
				<-done
				return
			case err := <-done:
				t.Fatalf("Receive(SUBSCRIBE) returned before a message: %v", err)
			case <-tick.C:
				if err := c.Do(ctx, b().Publish().Channel(ch).Message("hello").Build()).Error(); err != nil {
					t.Fatalf("PUBLISH: %v", err)
				}
			case <-rctx.Done():
				t.Fatalf("no message within 15s")
			}
		}
	})
	t.Run("lock", func(t *testing.T) {
		res := pre + "lock"
		tok, err := c.Do(ctx, b().Arbitrary("LOCK").Keys(res).Args("PX", "10000").Build()).ToString()
		if err != nil || !tokenRE.MatchString(tok) {
			t.Fatalf("LOCK = %q, %v; want a token", tok, err)
		}
		if err := c.Do(ctx, b().Arbitrary("LOCK").Keys(res).Build()).Error(); !rueidis.IsRedisNil(err) {
			t.Errorf("LOCK of a held lock: %v, want nil", err)
		}
		mustEqual(t, "UNLOCK", rint(c.Do(ctx, b().Arbitrary("UNLOCK").Keys(res).Args(tok).Build())), int64(1))
		mustEqual(t, "UNLOCK again", rint(c.Do(ctx, b().Arbitrary("UNLOCK").Keys(res).Args(tok).Build())), int64(0))
	})
}

func rstr[T interface{ ToString() (string, error) }](r T) string {
	s, err := r.ToString()
	if err != nil {
		return "error: " + err.Error()
	}
	return s
}

func rint[T interface{ AsInt64() (int64, error) }](r T) int64 {
	n, err := r.AsInt64()
	if err != nil {
		return -1 << 62
	}
	return n
}

// rvals renders replies as strings: "<nil>" for nil, "error: ..." for an error.
func rvals(rs []rueidis.RedisResult) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		m, err := r.ToMessage()
		switch {
		case rueidis.IsRedisNil(err):
			out[i] = "<nil>"
		case err != nil:
			out[i] = "error: " + err.Error()
		default:
			out[i] = rmsg(&m)
		}
	}
	return out
}

func rmsgs(ms []rueidis.RedisMessage) []string {
	out := make([]string, len(ms))
	for i := range ms {
		out[i] = rmsg(&ms[i])
	}
	return out
}

func rmsg(m *rueidis.RedisMessage) string {
	if m.IsNil() {
		return "<nil>"
	}
	if err := m.Error(); err != nil {
		return "error: " + err.Error()
	}
	if s, err := m.ToString(); err == nil {
		return s
	}
	if n, err := m.AsInt64(); err == nil {
		return strconv.FormatInt(n, 10)
	}
	return fmt.Sprintf("%v", m)
}

// ---------------------------------------------------------------------------------------------
// valkey-cli

func TestClientValkeyCLI(t *testing.T) {
	cli, err := exec.LookPath("valkey-cli")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("valkey-cli not found: %v", err)
		}
		t.Skipf("valkey-cli not found (installed with valkey-tools, see install-valkey.sh): %v", err)
	}
	p := startProxy(t, nil)
	rec := startRecorder(t, p.Addr)
	defer rec.check(t, allowNoProto)
	port := portOf(t, rec.Addr)
	pre := uniquePrefix("cli")
	ctx := ctxT(t)
	run := func(t *testing.T, port, stdin string, args ...string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, cli, append([]string{"-p", port}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("valkey-cli %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out, stderr.String())
		}
		if stderr.Len() > 0 {
			t.Errorf("valkey-cli %v wrote to stderr: %s", args, stderr.String())
		}
		return string(out)
	}

	// One script, raw output (stdout is not a terminal) and --no-raw, compared with the text
	// Valkey itself produces, and with the standalone reference server when there is one.
	script := strings.ReplaceAll(`SET P:s 1
GET P:s
GET P:missing
INCR P:s
APPEND P:s x
HSET P:h f1 v1 f2 v2
HGET P:h f2
HGETALL P:h
MSET P:m1 a P:m2 b
MGET P:m1 P:m2 P:missing
MULTI
SET P:{tx}a 5
INCR P:{tx}a
GET P:{tx}a
EXEC
PING
ECHO hi
DEL P:s P:h P:m1 P:m2 P:{tx}a
`, "P:", pre)
	wantRaw := "OK\n1\n\n2\n2\n2\nv2\nf1\nv1\nf2\nv2\nOK\na\nb\n\nOK\nQUEUED\nQUEUED\nQUEUED\nOK\n6\n6\nPONG\nhi\n5\n"
	wantNoRaw := "OK\n\"1\"\n(nil)\n(integer) 2\n(integer) 2\n(integer) 2\n\"v2\"\n1) \"f1\"\n2) \"v1\"\n3) \"f2\"\n4) \"v2\"\nOK\n" +
		"1) \"a\"\n2) \"b\"\n3) (nil)\nOK\nQUEUED\nQUEUED\nQUEUED\n1) OK\n2) (integer) 6\n3) \"6\"\nPONG\n\"hi\"\n(integer) 5\n"
	t.Run("script", func(t *testing.T) {
		mustEqual(t, "raw output", run(t, port, script), wantRaw)
		mustEqual(t, "--no-raw output", run(t, port, script, "--no-raw"), wantNoRaw)
		if standaloneAddr == "" {
			t.Log("VLP_STANDALONE_ADDR not set: compared with the expected text only")
			return
		}
		ref := portOf(t, standaloneAddr)
		mustEqual(t, "raw output of the standalone server", run(t, ref, script), wantRaw)
		mustEqual(t, "--no-raw output of the standalone server", run(t, ref, script, "--no-raw"), wantNoRaw)
	})
	t.Run("lock", func(t *testing.T) {
		res := pre + "lock"
		// One connection: UNLOCK without a token releases this connection's own lock.
		out := run(t, port, "LOCK "+res+" PX 10000\nLOCKINFO "+res+"\nUNLOCK "+res+"\nUNLOCK "+res+"\n")
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 9 || !tokenRE.MatchString(lines[0]) || lines[1] != "token" || lines[2] != lines[0] ||
			lines[3] != "ttl-ms" || lines[5] != "waiters" || lines[6] != "0" || lines[7] != "1" || lines[8] != "0" {
			t.Fatalf("LOCK/LOCKINFO/UNLOCK/UNLOCK output:\n%s", out)
		}
		// Separate connections (arguments instead of stdin): the token is the ownership.
		tok := strings.TrimSuffix(run(t, port, "", "LOCK", res, "PX", "10000"), "\n")
		if !tokenRE.MatchString(tok) {
			t.Fatalf("LOCK = %q", tok)
		}
		mustEqual(t, "LOCK held (--no-raw)", run(t, port, "", "--no-raw", "LOCK", res), "(nil)\n")
		mustEqual(t, "UNLOCK (--no-raw)", run(t, port, "", "--no-raw", "UNLOCK", res, tok), "(integer) 1\n")
		fenced := run(t, port, "", "--no-raw", "LOCK", res, "FENCE")
		if !regexp.MustCompile(`^1\) "[!-~]+:[0-9]+"\n2\) \(integer\) [0-9]+\n$`).MatchString(fenced) {
			t.Errorf("LOCK FENCE (--no-raw) = %q", fenced)
		}
		tok = strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(fenced, "\n", 2)[0], `1) "`), `"`)
		mustEqual(t, "UNLOCK fenced", run(t, port, "", "UNLOCK", res, tok), "1\n")
	})
	t.Run("pubsub", func(t *testing.T) {
		ch := pre + "ch"
		pub := p.client(t)
		want := fmt.Sprintf("1) \"subscribe\"\n2) \"%s\"\n3) (integer) 1\n1) \"message\"\n2) \"%s\"\n3) \"hello\"\n", ch, ch)
		out := cliSubscribe(t, ctx, cli, port, ch, func() error { return pub.Publish(ctx, ch, "hello").Err() })
		mustEqual(t, "SUBSCRIBE output (--no-raw)", out, want)
		if standaloneAddr == "" {
			return
		}
		ref := redis.NewClient(&redis.Options{Addr: standaloneAddr, Protocol: 2})
		defer ref.Close()
		out = cliSubscribe(t, ctx, cli, portOf(t, standaloneAddr), ch, func() error { return ref.Publish(ctx, ch, "hello").Err() })
		mustEqual(t, "SUBSCRIBE output of the standalone server", out, want)
	})
	t.Run("resp3", func(t *testing.T) {
		// valkey-cli -3 sends HELLO 3, reports the NOPROTO on stderr and goes on in RESP2.
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, cli, "-p", port, "-3", "PING").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PONG") {
			t.Errorf("valkey-cli -3 PING: %v\n%s", err, out)
		}
	})
}

// cliSubscribe runs `valkey-cli --no-raw SUBSCRIBE ch`, calls publish once the subscription is
// confirmed (and again every 500 ms until the message shows), and returns what it printed.
func cliSubscribe(t *testing.T, ctx context.Context, cli, port, ch string, publish func() error) string {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, cli, "-p", port, "--no-raw", "SUBSCRIBE", ch)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var out strings.Builder
	subscribed := false
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				break loop
			}
			out.WriteString(l + "\n")
			if !subscribed && strings.HasPrefix(l, "3) ") {
				subscribed = true
				if err := publish(); err != nil {
					t.Errorf("PUBLISH: %v", err)
				}
			}
			if l == `3) "hello"` {
				break loop
			}
		case <-tick.C:
			if subscribed {
				if err := publish(); err != nil {
					t.Errorf("PUBLISH: %v", err)
				}
			}
		case <-cctx.Done():
			break loop
		}
	}
	cancel()
	for range lines {
	}
	_ = cmd.Wait()
	if stderr.Len() > 0 {
		t.Logf("valkey-cli SUBSCRIBE stderr: %s", stderr.String())
	}
	return out.String()
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// ---------------------------------------------------------------------------------------------
// Node: ioredis and @valkey/valkey-glide

func TestClientIORedis(t *testing.T) {
	// ioredis 6 defaults to protocol 3: HELLO 3 first, and on NOPROTO it downgrades itself.
	nodeClientTest(t, startProxy(t, nil), "ioredis.js", "3", map[string]string{
		"lib-name":        `"ioredis"`,
		"set":             `"OK"`,
		"get":             `"v1"`,
		"get-missing":     `null`,
		"incrby":          `5`,
		"hset":            `2`,
		"hget":            `"v2"`,
		"hgetall":         `{"f1":"v1","f2":"v2"}`,
		"pipeline":        `[[null,"OK"],[null,2],[null,1],[null,"2"],[null,null]]`,
		"multi":           `[[null,"OK"],[null,1],[null,2],[null,"x"]]`,
		"watch-conflict":  `null`,
		"after-watch":     `"100"`,
		"subscribe":       `1`,
		"psubscribe":      `2`,
		"publish":         "", // a cluster counts the receiving node's subscribers only
		"message":         `["CH","hello"]`,
		"publish-pattern": "",
		"pmessage":        `["PAT","CHX","world"]`,
		"unsubscribe":     `1`,
		"lock":            `"TOKEN"`,
		"lock-held":       `null`,
		"unlock":          `1`,
		"unlock-again":    `0`,
	})
}

func TestClientGlide(t *testing.T) {
	// GLIDE is configured for RESP2 (ProtocolVersion.RESP2): it sends no HELLO 3. Its
	// standalone client finds the primary with INFO REPLICATION (role:master), else it fails
	// to connect with "No primary node found".
	p := startProxy(t, nil)
	if info, err := p.client(t).Info(ctxT(t), "replication").Result(); err != nil || !strings.Contains(info, "role:master") {
		t.Errorf("INFO REPLICATION through the proxy = %q, %v: GLIDE's standalone client needs role:master in it", info, err)
	}
	got := nodeClientTest(t, p, "glide.js", "", map[string]string{
		"lib-name":     `"GlideJS"`,
		"set":          `"OK"`,
		"get":          `"v1"`,
		"get-missing":  `null`,
		"incrby":       `5`,
		"hset":         `2`,
		"hget":         `"v2"`,
		"hgetall":      `{"f1":"v1","f2":"v2"}`,
		"pipeline":     `["OK",2,1,"2",null]`,
		"transaction":  `["OK",1,2,"x"]`,
		"custom-get":   `"x"`,
		"lock":         `"TOKEN"`,
		"lock-held":    `null`,
		"unlock":       `1`,
		"unlock-again": `0`,
	})
	// GLIDE's pub/sub needs RESP3 push frames: it refuses subscriptions configured with RESP2,
	// and its dynamic subscribe() under RESP2 wedges the connection (against Valkey itself too;
	// see glide.js). The proxy speaks RESP2 only, so that part is logged, not tested.
	if pc := string(got["pubsub-config"]); strings.Contains(pc, "RESP3") {
		t.Logf("GLIDE pub/sub not tested: it requires RESP3, which the proxy does not speak: %s", pc)
	} else {
		t.Errorf("GLIDE accepted pub/sub subscriptions under RESP2 (%s): time to test GLIDE pub/sub through the proxy", pc)
	}
}

// nodeClientTest runs testdata/clients/<script> with node against the proxy (through a
// recorder) and compares the JSON it prints with want, a JSON text per step: CH, CHX, PAT and
// TOKEN in it stand for the script's channel, the pattern-matched channel, the pattern and the
// lock token; "" means logged only. hello, when set, is the protocol of the first command,
// which must be a HELLO. It returns what the script printed.
func nodeClientTest(t *testing.T, p *proxyProc, script, hello string, want map[string]string) map[string]json.RawMessage {
	modules := nodeModules(t)
	rec := startRecorder(t, p.Addr)
	defer rec.check(t, allowNoProto) // also when the script fails: it shows what the client sent
	pre := uniquePrefix(strings.TrimSuffix(script, ".js"))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	scriptPath, err := filepath.Abs(filepath.Join("testdata", "clients", script))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "node", scriptPath, portOf(t, rec.Addr), pre)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if stderr.Len() > 0 {
		t.Logf("node %s stderr:\n%s", script, stderr.String())
	}
	if err != nil {
		t.Fatalf("node %s: %v\nstdout:\n%s", script, err, out)
	}
	// The results are the last line; a client may log to stdout before it (GLIDE's core does).
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > 1 {
		t.Logf("node %s stdout before the results:\n%s", script, strings.Join(lines[:len(lines)-1], "\n"))
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("node %s printed no JSON object: %v\n%s", script, err, out)
	}
	for _, k := range []string{"note-fatal", "note-deadline"} {
		if msg, ok := got[k]; ok {
			t.Fatalf("node %s stopped: %s\nresults so far: %s", script, msg, lines[len(lines)-1])
		}
	}
	var tok string
	if err := json.Unmarshal(got["lock"], &tok); err != nil || !tokenRE.MatchString(tok) {
		t.Errorf("lock = %s, want a token", got["lock"])
	}
	repl := strings.NewReplacer("CHX", pre+"pat.x", "CH", pre+"ch", "PAT", pre+"pat.*", "TOKEN", tok)
	keys := make([]string, 0, len(got)+len(want))
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		g, reported := got[k]
		w, checked := want[k]
		switch {
		case !checked || w == "":
			t.Logf("%s: %s", k, g)
		case !reported:
			t.Errorf("%s: the script reported nothing (it stopped early?)", k)
		case string(g) != repl.Replace(w):
			t.Errorf("%s = %s, want %s", k, g, repl.Replace(w))
		}
	}
	if hello != "" {
		first := rec.firstCommand()
		if len(first) < 2 || !strings.EqualFold(first[0], "hello") || first[1] != hello {
			t.Errorf("first command = %q, want HELLO %s", first, hello)
		}
	}
	return got
}

// nodeModules installs the Node clients pinned in testdata/clients/package-lock.json (npm ci)
// into os.TempDir()/vlp-node-clients/<hash of the lock and the node version>, once, and returns
// its node_modules. Without node or npm, or when the install fails (no registry), the test
// fails under CI=true and is skipped otherwise.
func nodeModules(t *testing.T) string {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") == "true" {
			t.Fatalf("Node clients unavailable (CI=true, so this fails): %s", msg)
		}
		t.Skipf("Node clients unavailable; skipped because CI is not set (it fails under CI=true): %s", msg)
	}
	if _, err := exec.LookPath("node"); err != nil {
		unavailable("node not found: %v", err)
	}
	if _, err := exec.LookPath("npm"); err != nil {
		unavailable("npm not found: %v", err)
	}
	src := filepath.Join("testdata", "clients")
	pkg, err := os.ReadFile(filepath.Join(src, "package.json"))
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	nodeVer, err := exec.Command("node", "--version").Output()
	if err != nil {
		unavailable("node --version: %v", err)
	}
	h := sha256.New()
	for _, b := range [][]byte{pkg, lock, nodeVer, []byte(runtime.GOOS + "/" + runtime.GOARCH)} {
		h.Write(b)
		h.Write([]byte{0})
	}
	base := filepath.Join(os.TempDir(), "vlp-node-clients")
	dir := filepath.Join(base, hex.EncodeToString(h.Sum(nil))[:16])
	modules := filepath.Join(dir, "node_modules")
	if _, err := os.Stat(filepath.Join(dir, ".installed")); err == nil {
		return modules
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(base, "install-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for name, b := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	npm := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--prefix", tmp)
	npm.Dir = tmp
	if out, err := npm.CombinedOutput(); err != nil {
		unavailable("npm ci (registry unreachable?): %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".installed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, ".installed")); serr != nil {
			t.Fatalf("install Node clients into %s: %v", dir, err)
		} // else another run installed it first: use that one
	}
	return modules
}

// ---------------------------------------------------------------------------------------------
// recorder: a relay that logs what a client sends and which replies were errors

// recorder relays TCP connections to target byte for byte and decodes both directions: the
// commands of each connection, and each reply matched with the command it answers (pub/sub
// pushes are told apart from replies). It is safe for concurrent use; it stops at test cleanup.
type recorder struct {
	Addr   string
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*recConn
	open  map[net.Conn]struct{}
}

type recConn struct {
	id      int
	cmds    [][]string // every command, in order
	pending [][]string // commands still awaiting their reply
	subLeft int        // confirmations still due for the head (a SUBSCRIBE of several channels)
	errs    []recError
	shapes  []string // malformed pub/sub replies
}

type recError struct {
	cmd []string
	msg string
}

func startRecorder(t *testing.T, target string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{Addr: ln.Addr().String(), target: target, ln: ln, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *recorder) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		r.mu.Lock()
		rc := &recConn{id: len(r.conns) + 1}
		r.conns = append(r.conns, rc)
		r.open[c], r.open[u] = struct{}{}, struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(c, u, func(v respValue) { r.onCommand(rc, v) })
		go r.pump(u, c, func(v respValue) { r.onReply(rc, v) })
	}
}

// pump copies src to dst, decoding what it forwards before forwarding it (so a command is
// recorded before its reply can come back). A decoding failure stops decoding, not copying.
func (r *recorder) pump(src, dst net.Conn, on func(respValue)) {
	defer r.wg.Done()
	defer func() {
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		_ = src.Close()
	}()
	var buf []byte
	decoding := true
	chunk := make([]byte, 64<<10)
	for {
		n, err := src.Read(chunk)
		if n > 0 {
			if decoding {
				buf = append(buf, chunk[:n]...)
				for len(buf) > 0 {
					v, used, perr := parseRESP(buf)
					if perr == errIncomplete {
						break
					}
					if perr != nil {
						decoding, buf = false, nil
						break
					}
					on(v)
					buf = buf[used:]
				}
				buf = slices.Clip(buf)
			}
			if _, werr := dst.Write(chunk[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *recorder) onCommand(rc *recConn, v respValue) {
	args := v.strings()
	r.mu.Lock()
	defer r.mu.Unlock()
	rc.cmds = append(rc.cmds, args)
	rc.pending = append(rc.pending, args)
}

var pubsubKinds = map[string]int{ // kind → number of elements of a RESP2 push
	"message": 3, "pmessage": 4, "smessage": 3,
	"subscribe": 3, "psubscribe": 3, "ssubscribe": 3,
	"unsubscribe": 3, "punsubscribe": 3, "sunsubscribe": 3,
}

func (r *recorder) onReply(rc *recConn, v respValue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kind := ""
	if v.kind == '*' && len(v.elems) > 0 && v.elems[0].kind == '$' {
		kind = v.elems[0].str
	}
	if n, ok := pubsubKinds[kind]; ok {
		if msg := checkPushShape(v, n); msg != "" {
			rc.shapes = append(rc.shapes, msg)
		}
		if strings.HasSuffix(kind, "message") {
			return // a push, not the reply to a command
		}
		// A confirmation: the head (X)SUBSCRIBE gets one per channel it named, in order.
		if len(rc.pending) > 0 && strings.EqualFold(rc.pending[0][0], kind) {
			head := rc.pending[0]
			if rc.subLeft == 0 {
				rc.subLeft = max(len(head)-1, 1)
			}
			if i := len(head) - rc.subLeft; i < len(head) && len(v.elems) > 1 && v.elems[1].str != head[i] {
				rc.shapes = append(rc.shapes, fmt.Sprintf("%s confirmation names %q, want %q (the command's argument)", kind, v.elems[1].str, head[i]))
			}
			if rc.subLeft--; rc.subLeft == 0 {
				rc.pending = rc.pending[1:]
			}
		}
		return
	}
	var cmd []string
	if len(rc.pending) > 0 {
		cmd, rc.pending = rc.pending[0], rc.pending[1:]
	}
	if v.kind == '-' {
		rc.errs = append(rc.errs, recError{cmd: cmd, msg: v.str})
	}
	if v.kind == '*' && cmd != nil && strings.EqualFold(cmd[0], "exec") {
		for _, e := range v.elems {
			if e.kind == '-' {
				rc.errs = append(rc.errs, recError{cmd: cmd, msg: "inside EXEC: " + e.str})
			}
		}
	}
}

// checkPushShape checks a RESP2 pub/sub reply has Valkey's shape: bulk strings, then (for the
// confirmations) the subscription count as an integer.
func checkPushShape(v respValue, n int) string {
	kind := v.elems[0].str
	if len(v.elems) != n {
		return fmt.Sprintf("%s reply with %d elements, want %d", kind, len(v.elems), n)
	}
	for i, e := range v.elems {
		want := byte('$')
		if i == n-1 && !strings.HasSuffix(kind, "message") {
			want = ':'
		}
		if e.kind != want && !(want == '$' && e.kind == '$' && e.null) {
			return fmt.Sprintf("%s reply element %d is %q, want %q", kind, i, e.kind, want)
		}
	}
	return ""
}

// firstCommand returns the first command of the first connection.
func (r *recorder) firstCommand() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.conns) == 0 || len(r.conns[0].cmds) == 0 {
		return nil
	}
	return r.conns[0].cmds[0]
}

// check logs every connection's first commands (its handshake) and fails the test
// for each error reply that allow does not accept and each malformed pub/sub reply.
func (r *recorder) check(t *testing.T, allow func(cmd []string, msg string) bool) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rc := range r.conns {
		var sb strings.Builder
		for i, c := range rc.cmds {
			if i == 12 {
				fmt.Fprintf(&sb, "\n    ... %d more", len(rc.cmds)-i)
				break
			}
			sb.WriteString("\n    " + showCmd(c))
		}
		t.Logf("connection %d sent %d commands:%s", rc.id, len(rc.cmds), sb.String())
		for _, e := range rc.errs {
			if allow != nil && allow(e.cmd, e.msg) {
				t.Logf("connection %d: %s → -%s (expected)", rc.id, showCmd(e.cmd), e.msg)
				continue
			}
			t.Errorf("connection %d: the proxy answered %s with -%s", rc.id, showCmd(e.cmd), e.msg)
		}
		for _, s := range rc.shapes {
			t.Errorf("connection %d: pub/sub reply shape: %s", rc.id, s)
		}
	}
}

func showCmd(c []string) string {
	if c == nil {
		return "(unknown command)"
	}
	parts := make([]string, 0, len(c))
	for i, a := range c {
		if i == 8 {
			parts = append(parts, fmt.Sprintf("...(%d args)", len(c)))
			break
		}
		if len(a) > 48 {
			a = a[:48] + "..."
		}
		parts = append(parts, strconv.Quote(a))
	}
	return strings.Join(parts, " ")
}

func (r *recorder) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for c := range r.open {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// respValue is one decoded RESP2 value (or an inline command, as an array of bulk strings).
type respValue struct {
	kind  byte // '+', '-', ':', '$', '*'
	str   string
	null  bool
	elems []respValue
}

func (v respValue) strings() []string {
	if v.kind != '*' {
		return []string{v.str}
	}
	out := make([]string, len(v.elems))
	for i, e := range v.elems {
		out[i] = e.str
	}
	return out
}

var errIncomplete = errors.New("incomplete")

// parseRESP decodes one value from the start of b: errIncomplete when b holds only part of it.
// A line not starting with a RESP type byte is an inline command.
func parseRESP(b []byte) (respValue, int, error) {
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) > 1<<20 {
			return respValue{}, 0, errors.New("line too long")
		}
		return respValue{}, 0, errIncomplete
	}
	line := string(b[1:end])
	used := end + 2
	switch b[0] {
	case '+', '-':
		return respValue{kind: b[0], str: line}, used, nil
	case ':':
		return respValue{kind: ':', str: line}, used, nil
	case '$':
		n, err := strconv.Atoi(line)
		if err != nil {
			return respValue{}, 0, err
		}
		if n < 0 {
			return respValue{kind: '$', null: true}, used, nil
		}
		if len(b) < used+n+2 {
			return respValue{}, 0, errIncomplete
		}
		return respValue{kind: '$', str: string(b[used : used+n])}, used + n + 2, nil
	case '*':
		n, err := strconv.Atoi(line)
		if err != nil {
			return respValue{}, 0, err
		}
		v := respValue{kind: '*', null: n < 0}
		for i := 0; i < n; i++ {
			e, k, err := parseRESP(b[used:])
			if err != nil {
				return respValue{}, 0, err
			}
			v.elems = append(v.elems, e)
			used += k
		}
		return v, used, nil
	default: // inline command
		v := respValue{kind: '*'}
		for _, f := range strings.Fields(string(b[:end])) {
			v.elems = append(v.elems, respValue{kind: '$', str: f})
		}
		return v, used, nil
	}
}
