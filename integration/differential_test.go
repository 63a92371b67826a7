package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The differential test runs one corpus of commands twice from the same empty keys: directly
// against the cluster node that owns the corpus's hash tag, and through the proxy. The raw RESP
// replies must be byte-identical (after the run-specific part of the key names is swapped).
// Commands the proxy deliberately answers differently are not in the corpus; they are listed in
// intentionalDifferences, with the proxy's exact reply asserted.
//
// Every key in the corpus is written "@name": "@" becomes "{tag}:dir:", "{tag}:prx:" or
// "{tag}:pip:" (the same length, so lengths in replies do not change, and the same hash tag, so
// every run uses the same slot and node). The tag is random per test run, so concurrent runs
// against the shared cluster never collide.

// diffCmd is one corpus entry. shape compares only the reply's structure (types, array sizes,
// nils), for replies that hold times or sizes that vary between runs.
type diffCmd struct {
	args  []string
	shape bool
}

// minDiffCommands is the floor for the corpus size, so it cannot silently shrink.
const minDiffCommands = 150

// diffBigValue is a 100 KiB value with CR, LF and NUL bytes inside.
var diffBigValue = func() string {
	var sb strings.Builder
	for i := 0; sb.Len() < 100*1024; i++ {
		fmt.Fprintf(&sb, "%06d\r\n\x00big-value-chunk|", i)
	}
	return sb.String()[:100*1024]
}()

// differentialCorpus returns the corpus; dumpPayload is a DUMP of the string "restored-value".
func differentialCorpus(dumpPayload string) []diffCmd {
	var cs []diffCmd
	add := func(args ...string) { cs = append(cs, diffCmd{args: args}) }
	shape := func(args ...string) { cs = append(cs, diffCmd{args: args, shape: true}) }

	// Connection commands the proxy answers itself, identically.
	add("PING")
	add("PING", "hello\r\nworld")
	add("ECHO", "a\x00b\r\nc")
	add("SELECT", "0")
	add("SELECT", "x")
	add("AUTH", "nopass")
	add("CLIENT", "GETNAME")
	add("CLIENT", "SETNAME", "difftest")
	add("CLIENT", "GETNAME")
	add("CLIENT", "SETNAME", "has space")
	add("CLIENT", "SETINFO", "lib-name", "vlpdiff")
	add("CLIENT", "SETINFO", "lib-ver", "1.0")
	add("CLIENT", "SETINFO", "bogus", "x")
	add("CLIENT", "NO-EVICT", "off")
	add("CLIENT", "NO-TOUCH", "off")
	add("CLIENT", "SETINFO", "LIB-NAME", "vlpdiff2")
	add("CLIENT", "NO-EVICT", "maybe")
	add("CLIENT", "SETNAME")
	add("CLIENT", "GETNAME", "x")
	add("AUTH", "default", "nopass")
	add("AUTH", "a", "b", "c")
	add("PING", "a", "b")
	add("ECHO")
	add("ECHO", "a", "b")
	add("SELECT", "0", "1")
	add("HELLO", "2", "SETNAME", "x", "y")
	add("HELLO", "x")
	add("HELLO", "4")
	// A standalone Valkey 8 and a cluster node both accept READONLY / READWRITE.
	add("READONLY")
	add("READWRITE")

	// Strings.
	add("GET", "@str")
	add("SET", "@str", "hello")
	add("GET", "@str")
	add("SET", "@str", "world", "NX")
	add("SET", "@str", "world", "XX")
	add("SET", "@str", "v2", "GET")
	add("SET", "@nx", "a", "NX", "GET")
	add("SET", "@nx", "b", "NX", "GET")
	add("SET", "@str", "v3", "EX", "1000")
	add("TTL", "@str")
	add("SET", "@str", "v4", "KEEPTTL")
	add("TTL", "@str")
	add("SET", "@str", "v5", "PX", "100000")
	shape("PTTL", "@str")
	add("SET", "@str", "v", "XX", "NX")
	add("SET", "@str", "v", "EX", "10", "PX", "10")
	add("SET", "@str", "v", "EX", "0")
	add("SET", "@str", "v", "EX", "abc")
	add("PERSIST", "@str")
	add("TTL", "@str")
	add("TTL", "@missing")
	add("PTTL", "@missing")
	add("APPEND", "@app", "abc")
	add("APPEND", "@app", "def")
	add("GET", "@app")
	add("SET", "@n", "10")
	add("INCR", "@n")
	add("INCRBY", "@n", "5")
	add("DECR", "@n")
	add("DECRBY", "@n", "3")
	add("INCRBYFLOAT", "@n", "1.5")
	add("INCRBYFLOAT", "@n", "1e3")
	add("INCR", "@str")
	add("INCRBY", "@n", "abc")
	add("INCRBYFLOAT", "@str", "1")
	add("INCR", "@incr")
	add("GETRANGE", "@app", "1", "3")
	add("GETRANGE", "@app", "-2", "-1")
	add("GETRANGE", "@missing", "0", "1")
	add("SETRANGE", "@app", "10", "xyz")
	add("GET", "@app")
	add("STRLEN", "@app")
	add("STRLEN", "@missing")
	add("SETRANGE", "@app", "-1", "x")
	add("GETDEL", "@app")
	add("GETDEL", "@app")
	add("SET", "@gx", "v")
	add("GETEX", "@gx", "EX", "100")
	add("TTL", "@gx")
	add("GETEX", "@gx", "PERSIST")
	add("TTL", "@gx")
	add("GETEX", "@missing")
	add("MSETNX", "@m1", "a", "@m2", "b")
	add("MSETNX", "@m2", "x", "@m3", "y")
	add("MSET", "@m4", "d", "@m5", "e")
	add("MGET", "@m1", "@m2", "@m3", "@m4", "@m5")
	add("SET", "@lcs1", "ohmytext")
	add("SET", "@lcs2", "mynewtext")
	add("LCS", "@lcs1", "@lcs2")
	add("LCS", "@lcs1", "@lcs2", "LEN")
	add("LCS", "@lcs1", "@lcs2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN")
	add("SETNX", "@setnx", "v")
	add("SETNX", "@setnx", "w")
	add("GETSET", "@setnx", "w")
	add("SETEX", "@setex", "100", "v")
	add("PSETEX", "@psetex", "100000", "v")
	add("SET", "@empty", "")
	add("GET", "@empty")
	add("STRLEN", "@empty")
	add("APPEND", "@empty", "")
	add("SET", "@bin", "a\r\nb\x00c\xff")
	add("GET", "@bin")
	add("SET", "@big", diffBigValue)
	add("GET", "@big")
	add("STRLEN", "@big")
	add("APPEND", "@big", "\r\n\x00")
	add("GETRANGE", "@big", "102390", "102410")

	// Lists.
	add("LPOP", "@list")
	add("LPOP", "@list", "2")
	add("RPUSH", "@list", "a", "b", "c", "d")
	add("LPUSH", "@list", "z", "y")
	add("LRANGE", "@list", "0", "-1")
	add("LLEN", "@list")
	add("LPOP", "@list")
	add("LPOP", "@list", "2")
	add("LPOP", "@list", "0")
	add("RPOP", "@list")
	add("RPOP", "@list", "1")
	add("RPUSH", "@list", "a", "b", "a", "c", "a")
	add("LINDEX", "@list", "0")
	add("LINDEX", "@list", "100")
	add("LSET", "@list", "0", "first")
	add("LSET", "@missing", "0", "x")
	add("LSET", "@list", "100", "x")
	add("LINSERT", "@list", "BEFORE", "c", "cc")
	add("LINSERT", "@list", "AFTER", "nope", "x")
	add("LPOS", "@list", "a")
	add("LPOS", "@list", "a", "COUNT", "0")
	add("LPOS", "@list", "a", "RANK", "-1")
	add("LPOS", "@list", "nope")
	add("LPOS", "@list", "nope", "COUNT", "0")
	add("LPOS", "@list", "a", "RANK", "0")
	add("LREM", "@list", "1", "a")
	add("LRANGE", "@list", "0", "-1")
	add("LTRIM", "@list", "0", "2")
	add("LRANGE", "@list", "0", "-1")
	add("LMOVE", "@list", "@list2", "LEFT", "RIGHT")
	add("LMOVE", "@missing", "@list2", "LEFT", "LEFT")
	add("RPOPLPUSH", "@list", "@list2")
	add("LRANGE", "@list2", "0", "-1")
	add("LMPOP", "2", "@missing", "@list2", "LEFT", "COUNT", "2")
	add("LMPOP", "1", "@missing", "RIGHT")
	add("LPUSHX", "@missing", "a")
	add("RPUSHX", "@list", "q")
	add("LRANGE", "@list", "0", "-1")
	add("LRANGE", "@list", "a", "b")

	// Hashes.
	add("HSET", "@h", "f1", "v1", "f2", "v2")
	add("HSET", "@h", "f1", "v1b")
	add("HGET", "@h", "f1")
	add("HGET", "@h", "nope")
	add("HMGET", "@h", "f1", "nope", "f2")
	add("HMGET", "@missing", "a", "b")
	add("HGETALL", "@h")
	add("HGETALL", "@missing")
	add("HDEL", "@h", "f2", "nope")
	add("HEXISTS", "@h", "f1")
	add("HEXISTS", "@h", "f2")
	add("HSET", "@h", "n", "5")
	add("HINCRBY", "@h", "n", "3")
	add("HINCRBYFLOAT", "@h", "n", "0.5")
	add("HINCRBY", "@h", "f1", "1")
	add("HKEYS", "@h")
	add("HVALS", "@h")
	add("HLEN", "@h")
	add("HSETNX", "@h", "f1", "x")
	add("HSETNX", "@h", "f3", "x")
	add("HSTRLEN", "@h", "f1")
	add("HSTRLEN", "@h", "nope")
	add("HSCAN", "@h", "0")
	add("HSCAN", "@h", "0", "MATCH", "f*", "COUNT", "100")
	add("HMSET", "@h", "a", "b")
	add("HSET", "@h1", "only", "v")
	add("HRANDFIELD", "@h1")
	add("HRANDFIELD", "@h1", "1", "WITHVALUES")
	add("HSET", "@he", "", "")
	add("HGET", "@he", "")
	add("HSET", "@hb", "f\r\n", "v\x00\r\n")
	add("HGETALL", "@hb")

	// Sets.
	add("SADD", "@s", "a", "b", "c")
	add("SADD", "@s", "a")
	add("SREM", "@s", "c", "nope")
	add("SMEMBERS", "@s")
	add("SISMEMBER", "@s", "a")
	add("SISMEMBER", "@s", "nope")
	add("SMISMEMBER", "@s", "a", "nope", "b")
	add("SCARD", "@s")
	add("SADD", "@s2", "b", "c", "d")
	add("SINTER", "@s", "@s2")
	add("SUNIONSTORE", "@su", "@s", "@s2")
	add("SCARD", "@su")
	add("SDIFF", "@s", "@s2")
	add("SDIFFSTORE", "@sd", "@s", "@s2")
	add("SINTERSTORE", "@si2", "@s", "@s2")
	add("SINTERCARD", "2", "@s", "@s2")
	add("SINTERCARD", "2", "@s", "@s2", "LIMIT", "1")
	add("SMOVE", "@s", "@s2", "a")
	add("SMOVE", "@s", "@s2", "nope")
	add("SSCAN", "@s2", "0")
	add("SADD", "@si", "3", "1", "2")
	add("SMEMBERS", "@si")
	add("SADD", "@s1", "only")
	add("SRANDMEMBER", "@s1")
	add("SRANDMEMBER", "@s1", "1")
	add("SPOP", "@s1")
	add("SPOP", "@s1")
	add("SRANDMEMBER", "@missing")
	add("SRANDMEMBER", "@missing", "5")
	add("SADD", "@se", "", "\x00", "\r\n")
	add("SMEMBERS", "@se")

	// Sorted sets.
	add("ZADD", "@z", "1", "a", "2", "b", "3", "c")
	add("ZADD", "@z", "INCR", "5", "a")
	add("ZADD", "@z", "NX", "INCR", "1", "a")
	add("ZADD", "@z", "XX", "CH", "10", "b")
	add("ZADD", "@z", "GT", "LT", "1", "a")
	add("ZADD", "@z", "XX", "NX", "1", "a")
	add("ZADD", "@z", "1", "a", "2")
	add("ZADD", "@z", "nan", "a")
	add("ZRANGE", "@z", "0", "-1", "WITHSCORES")
	add("ZRANGEBYSCORE", "@z", "1", "(10")
	add("ZRANGEBYSCORE", "@z", "-inf", "+inf", "WITHSCORES", "LIMIT", "0", "2")
	add("ZREVRANGE", "@z", "0", "1", "WITHSCORES")
	add("ZSCORE", "@z", "a")
	add("ZSCORE", "@z", "nope")
	add("ZMSCORE", "@z", "a", "nope", "c")
	add("ZINCRBY", "@z", "1.5", "c")
	add("ZRANK", "@z", "a")
	add("ZRANK", "@z", "nope")
	add("ZRANK", "@z", "a", "WITHSCORE")
	add("ZREVRANK", "@z", "a")
	add("ZREM", "@z", "nope")
	add("ZCARD", "@z")
	add("ZCOUNT", "@z", "0", "100")
	add("ZPOPMIN", "@z")
	add("ZPOPMAX", "@z", "2")
	add("ZPOPMIN", "@missing")
	add("ZMPOP", "1", "@missing", "MIN")
	add("ZADD", "@z", "1", "x", "2", "y", "3", "w")
	add("ZMPOP", "2", "@missing", "@z", "MAX", "COUNT", "2")
	add("ZADD", "@z2", "1", "x", "5", "q")
	add("ZUNIONSTORE", "@zu", "2", "@z", "@z2", "WEIGHTS", "1", "2")
	add("ZRANGE", "@zu", "0", "-1", "WITHSCORES")
	add("ZINTERSTORE", "@zi", "2", "@z", "@z2", "AGGREGATE", "MAX")
	add("ZRANGE", "@zi", "0", "-1", "WITHSCORES")
	add("ZRANGESTORE", "@zr", "@zu", "0", "1")
	add("ZRANGE", "@zr", "0", "-1", "WITHSCORES")
	add("ZUNION", "2", "@z", "@z2", "WITHSCORES")
	add("ZADD", "@zl", "0", "a", "0", "b", "0", "c", "0", "d")
	add("ZLEXCOUNT", "@zl", "[b", "[c")
	add("ZRANGEBYLEX", "@zl", "-", "(c")
	add("ZREVRANGEBYLEX", "@zl", "+", "-", "LIMIT", "1", "2")
	add("ZRANGE", "@zl", "[c", "[a", "BYLEX", "REV")
	add("ZSCAN", "@zl", "0")
	add("ZADD", "@z1", "1", "only")
	add("ZRANDMEMBER", "@z1")
	add("ZRANDMEMBER", "@z1", "1", "WITHSCORES")
	add("ZADD", "@zf", "0.1", "a", "1e100", "b", "-inf", "c", "3.14159265358979", "d")
	add("ZRANGE", "@zf", "0", "-1", "WITHSCORES")
	add("ZSCORE", "@zf", "b")
	add("ZRANGE", "@z", "a", "b")

	// Streams (explicit IDs only).
	add("XADD", "@x", "1-1", "f", "v")
	add("XADD", "@x", "1-2", "f", "v2", "g", "w")
	add("XADD", "@x", "1-1", "f", "v")
	add("XADD", "@x", "2-*", "f", "v3")
	add("XADD", "@x", "3-1", "bin", "\r\n\x00")
	add("XADD", "@nox", "NOMKSTREAM", "1-1", "f", "v")
	add("XADD", "@x", "MAXLEN", "abc", "4-1", "f", "v")
	add("XLEN", "@x")
	add("XRANGE", "@x", "-", "+")
	add("XRANGE", "@x", "-", "+", "COUNT", "1")
	add("XREVRANGE", "@x", "+", "-", "COUNT", "2")
	add("XRANGE", "@missing", "-", "+")
	add("XREAD", "COUNT", "10", "STREAMS", "@x", "0")
	add("XREAD", "STREAMS", "@x", "@missing", "1-1", "0")
	add("XREAD", "STREAMS", "@x", "$")
	add("XREAD", "STREAMS", "@x", "9-0")
	add("XGROUP", "CREATE", "@x", "g", "0")
	add("XGROUP", "CREATE", "@x", "g", "0")
	add("XGROUP", "CREATE", "@missing", "g", "0")
	add("XGROUP", "CREATE", "@x2", "g", "$", "MKSTREAM")
	add("XREADGROUP", "GROUP", "g", "c1", "COUNT", "2", "STREAMS", "@x", ">")
	add("XREADGROUP", "GROUP", "g", "c1", "STREAMS", "@x", "0")
	add("XREADGROUP", "GROUP", "nog", "c1", "STREAMS", "@x", ">")
	add("XREADGROUP", "GROUP", "g", "c1", "STREAMS", "@x2", ">")
	add("XPENDING", "@x", "g")
	shape("XPENDING", "@x", "g", "-", "+", "10")
	add("XACK", "@x", "g", "1-1")
	add("XACK", "@x", "g", "1-1")
	add("XCLAIM", "@x", "g", "c2", "0", "1-2", "JUSTID")
	add("XCLAIM", "@x", "g", "c2", "0", "1-2")
	add("XREADGROUP", "GROUP", "g", "c1", "STREAMS", "@x", ">")
	add("XAUTOCLAIM", "@x", "g", "c3", "0", "0-0", "COUNT", "10", "JUSTID")
	add("XAUTOCLAIM", "@x", "g", "c3", "0", "0-0", "COUNT", "1")
	add("XPENDING", "@x", "g")
	add("XINFO", "STREAM", "@x")
	add("XINFO", "GROUPS", "@x")
	shape("XINFO", "CONSUMERS", "@x", "g")
	add("XTRIM", "@x", "MAXLEN", "3")
	add("XDEL", "@x", "2-0", "9-9")
	add("XLEN", "@x")
	add("XRANGE", "@x", "-", "+")
	add("XINFO", "STREAM", "@x")
	add("XINFO", "FOO", "@x")

	// Bitmaps.
	add("SETBIT", "@b", "7", "1")
	add("SETBIT", "@b", "7", "0")
	add("SETBIT", "@b", "100", "1")
	add("SETBIT", "@b", "7", "2")
	add("GETBIT", "@b", "100")
	add("GETBIT", "@b", "1000")
	add("GETBIT", "@missing", "0")
	add("BITCOUNT", "@b")
	add("BITCOUNT", "@b", "0", "0")
	add("BITCOUNT", "@b", "0", "127", "BIT")
	add("BITCOUNT", "@b", "0")
	add("BITPOS", "@b", "1")
	add("BITPOS", "@b", "0")
	add("BITPOS", "@missing", "1")
	add("SET", "@b2", "\xff\x0f")
	add("BITOP", "AND", "@bo", "@b", "@b2")
	add("GET", "@bo")
	add("BITOP", "OR", "@bo", "@b", "@b2")
	add("BITOP", "XOR", "@bo", "@b", "@b2")
	add("BITOP", "NOT", "@bo2", "@b2")
	add("GET", "@bo2")
	add("BITFIELD", "@bf", "SET", "u8", "0", "200", "GET", "u8", "0", "INCRBY", "u8", "0", "100", "OVERFLOW", "SAT", "INCRBY", "u8", "0", "100")
	add("BITFIELD_RO", "@bf", "GET", "u4", "0")
	add("BITFIELD", "@bf", "GET", "x8", "0")

	// HyperLogLog.
	add("PFADD", "@hll", "a", "b", "c")
	add("PFADD", "@hll", "a")
	add("PFCOUNT", "@hll")
	add("PFADD", "@hll2", "c", "d")
	add("PFMERGE", "@hllm", "@hll", "@hll2")
	add("PFCOUNT", "@hllm")
	add("PFCOUNT", "@hll", "@hll2")
	add("GET", "@hll")
	add("PFADD", "@str", "x")
	add("PFCOUNT", "@list")

	// Geo.
	add("GEOADD", "@g", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania")
	add("GEOPOS", "@g", "Palermo", "nope")
	add("GEODIST", "@g", "Palermo", "Catania", "km")
	add("GEODIST", "@g", "Palermo", "nope")
	add("GEOHASH", "@g", "Palermo", "Catania", "nope")
	add("GEOSEARCH", "@g", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC", "WITHCOORD", "WITHDIST", "WITHHASH")
	add("GEOSEARCH", "@g", "FROMLONLAT", "15", "37", "ASC")
	add("GEORADIUS", "@g", "15", "37", "200", "km", "ASC")
	add("GEORADIUS", "@g", "15", "37", "200", "km", "STORE", "@gs")
	add("ZRANGE", "@gs", "0", "-1", "WITHSCORES")
	add("GEOSEARCHSTORE", "@gss", "@g", "FROMMEMBER", "Palermo", "BYBOX", "400", "400", "km", "ASC", "STOREDIST")
	add("ZRANGE", "@gss", "0", "-1", "WITHSCORES")
	add("GEORADIUSBYMEMBER", "@g", "Palermo", "100", "km")
	add("GEOADD", "@g", "200", "100", "bad")

	// Scripts and functions.
	add("EVAL", "return 1", "0")
	add("EVAL", "return 'bulk'", "0")
	add("EVAL", "return nil", "0")
	add("EVAL", "return {1,'two',false,{3,'four',{}}}", "0")
	add("EVAL", "return {ok='fine'}", "0")
	add("EVAL", "return {err='My Err'}", "0")
	add("EVAL", "return {err='ERR my err'}", "0")
	add("EVAL", "return redis.error_reply('CUSTOM failed')", "0")
	add("EVAL", "return redis.status_reply('STAT')", "0")
	add("EVAL", "return 3.99", "0")
	add("EVAL", "return {1.5, -2.7, 'x'}", "0")
	add("EVAL", "return true", "0")
	add("EVAL", "return false", "0")
	add("EVAL", "return redis.call('PING')", "0")
	add("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "@ev", "val")
	add("EVAL", "return redis.call('GET', KEYS[1])", "1", "@ev")
	add("EVAL", "return redis.call('INCR', KEYS[1])", "1", "@ev")
	add("EVAL", "return redis.pcall('INCR', KEYS[1])", "1", "@ev")
	add("EVAL", "return {KEYS[1], KEYS[2], ARGV[1], ARGV[2]}", "2", "@ev", "@ev2", "a", "")
	add("EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "@h")
	add("EVAL", "this is not lua", "0")
	add("EVAL", "return 1", "-1")
	add("EVAL", "return 1", "5", "@ev")
	add("EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0")
	add("EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "1", "@ev")
	add("EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "@ev")
	add("EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", "1", "@ev")
	add("FCALL", "nosuchfunc", "0")
	add("FCALL_RO", "nosuchfunc", "1", "@ev")

	// Generic key commands.
	add("TYPE", "@str")
	add("TYPE", "@list")
	add("TYPE", "@h")
	add("TYPE", "@s")
	add("TYPE", "@z")
	add("TYPE", "@x")
	add("TYPE", "@hll")
	add("TYPE", "@missing")
	add("EXISTS", "@str", "@list", "@missing")
	add("EXISTS", "@str", "@str")
	add("DEL", "@m1", "@m2", "@missing")
	add("UNLINK", "@m3", "@m4")
	add("EXPIRE", "@m5", "100")
	add("TTL", "@m5")
	add("PEXPIRE", "@m5", "100000")
	shape("PTTL", "@m5")
	add("EXPIRE", "@m5", "100", "NX")
	add("EXPIRE", "@m5", "100", "XX", "NX")
	add("EXPIRE", "@missing", "100")
	add("EXPIREAT", "@m5", "4102444800")
	shape("TTL", "@m5")
	add("EXPIRETIME", "@m5")
	add("PEXPIRETIME", "@m5")
	add("EXPIRETIME", "@missing")
	add("PERSIST", "@m5")
	add("PERSIST", "@m5")
	add("TTL", "@m5")
	add("RENAME", "@m5", "@m6")
	add("RENAME", "@missing", "@m7")
	add("RENAMENX", "@m6", "@str")
	add("RENAMENX", "@m6", "@m7")
	add("COPY", "@m7", "@m8")
	add("COPY", "@m7", "@m8")
	add("COPY", "@m7", "@m8", "REPLACE")
	add("GET", "@m8")
	add("OBJECT", "ENCODING", "@str")
	add("OBJECT", "ENCODING", "@n")
	add("OBJECT", "ENCODING", "@big")
	add("OBJECT", "ENCODING", "@list")
	add("OBJECT", "ENCODING", "@h")
	add("OBJECT", "ENCODING", "@s")
	add("OBJECT", "ENCODING", "@si")
	add("OBJECT", "ENCODING", "@z")
	add("OBJECT", "ENCODING", "@x")
	add("OBJECT", "ENCODING", "@missing")
	add("OBJECT", "FREQ", "@str")
	add("OBJECT", "REFCOUNT", "@str")
	shape("OBJECT", "IDLETIME", "@str")
	add("OBJECT", "FOO")
	add("OBJECT", "HELP")
	shape("MEMORY", "USAGE", "@str")
	add("DUMP", "@str")
	add("DUMP", "@list")
	add("DUMP", "@missing")
	add("RESTORE", "@rest", "0", dumpPayload)
	add("RESTORE", "@rest", "0", dumpPayload)
	add("RESTORE", "@rest", "0", dumpPayload, "REPLACE")
	add("GET", "@rest")
	add("RESTORE", "@rest2", "0", "garbage")
	add("RPUSH", "@sl", "3", "1", "2")
	add("SORT", "@sl")
	add("SORT", "@sl", "DESC", "LIMIT", "0", "2")
	add("SORT", "@sl", "ALPHA")
	add("MSET", "@w_1", "30", "@w_2", "20", "@w_3", "10", "@o_1", "one", "@o_2", "two", "@o_3", "three")
	add("SORT", "@sl", "BY", "@w_*")
	add("SORT", "@sl", "BY", "@w_*", "GET", "@o_*")
	add("SORT", "@sl", "BY", "@w_*", "GET", "#", "GET", "@o_*")
	add("SORT", "@sl", "BY", "nosort", "GET", "@o_*")
	add("SORT", "@sl", "STORE", "@sorted")
	add("LRANGE", "@sorted", "0", "-1")
	add("SORT_RO", "@sl", "DESC")
	add("SORT", "@str")
	add("RPUSH", "@sla", "b", "a", "c")
	add("SORT", "@sla")
	add("SORT", "@sla", "ALPHA", "LIMIT", "1", "1")
	add("TOUCH", "@str", "@list", "@missing")

	// WRONGTYPE on several types.
	add("GET", "@list")
	add("LPUSH", "@str", "x")
	add("HGET", "@s", "f")
	add("SADD", "@h", "x")
	add("ZADD", "@list", "1", "a")
	add("XADD", "@str", "9-1", "f", "v")
	add("INCR", "@list")
	add("GEOADD", "@list", "1", "2", "m")
	add("LRANGE", "@h", "0", "1")
	add("SMEMBERS", "@z")
	add("XLEN", "@s")
	add("APPEND", "@x", "a")

	// Wrong arity.
	add("GET")
	add("GET", "@str", "@str")
	add("SET", "@str")
	add("HSET", "@h", "f")
	add("ZADD", "@z", "1")
	add("LPUSH", "@list")
	add("SADD", "@s")
	add("XADD", "@x")
	add("INCR")
	add("EXPIRE", "@str")
	add("PFADD")
	add("GEOADD", "@g", "1", "2")
	add("EVAL")
	add("OBJECT")
	add("OBJECT", "ENCODING")
	add("XGROUP", "CREATE", "@x")
	add("MSET", "@m9")
	add("MSET", "@m9", "a", "@m10")
	add("MGET")
	add("DEL")
	add("EXISTS")
	add("UNLINK")
	add("TOUCH")

	// Syntax and argument errors.
	add("LPUSH", "@nolist", "a", "b")
	add("LINSERT", "@nolist", "MIDDLE", "a", "b")
	add("ZRANGE", "@z", "0", "-1", "BYLEX")
	add("GEOSEARCH", "@g", "FROMLONLAT", "15", "37")
	add("GEOSEARCH", "@g", "FROMLONLAT", "15", "37", "ASC", "COUNT", "1")
	add("EXPIRE", "@str", "x")
	add("LINDEX", "@list", "x")
	add("GETRANGE", "@str", "x", "1")
	add("SETBIT", "@b", "-1", "1")
	add("HINCRBYFLOAT", "@h", "n", "abc")
	add("OBJECT", "ENCODING", "@str", "extra")

	// Unknown commands.
	add("FOOBAR")
	add("FOOBAR", "a", "b")
	add("nosuchcmd", "@str", "")
	add("")
	add("FOOBAR", "a\r\nb", "c\x00d")
	add("FOOBAR", strings.Repeat("x", 200), "y")
	add("FOOBAR", strings.Repeat("x", 100), strings.Repeat("y", 100), "z")
	add(strings.Repeat("Q", 150))
	return cs
}

// expand replaces the "@" key placeholder with prefix.
func (d diffCmd) expand(prefix string) []string {
	out := make([]string, len(d.args))
	for i, a := range d.args {
		out[i] = strings.ReplaceAll(a, "@", prefix)
	}
	return out
}

// respShape reduces a raw RESP2 reply to its structure: the type of every element, array and
// bulk nils, array sizes; scalar contents are dropped.
func respShape(raw string) string {
	var sb strings.Builder
	rest := raw
	var walk func()
	walk = func() {
		i := strings.Index(rest, "\r\n")
		if i < 1 {
			sb.WriteString("?")
			rest = ""
			return
		}
		line := rest[:i]
		rest = rest[i+2:]
		switch line[0] {
		case '$':
			n, _ := strconv.Atoi(line[1:])
			if n < 0 {
				sb.WriteString("$-1 ")
				return
			}
			sb.WriteString("$ ")
			if len(rest) >= n+2 {
				rest = rest[n+2:]
			}
		case '*':
			n, _ := strconv.Atoi(line[1:])
			sb.WriteString(line + "[")
			for k := 0; k < n; k++ {
				walk()
			}
			sb.WriteString("] ")
		default:
			sb.WriteString(line[:1] + " ")
		}
	}
	walk()
	return sb.String()
}

// diffKeyPrefixes returns the three run prefixes; they share one random hash tag and length.
func diffKeyPrefixes(t *testing.T) (tag, direct, proxied, piped string) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	tag = "{vlpdiff-" + hex.EncodeToString(b[:]) + "}"
	return tag, tag + ":dir:", tag + ":prx:", tag + ":pip:"
}

// diffOwner returns the address of the primary that owns tag's slot.
func diffOwner(t *testing.T, tag string) string {
	cc := clusterClient(t)
	node, err := cc.MasterForKey(ctxT(t), tag)
	if err != nil {
		t.Fatalf("owner of %s: %v", tag, err)
	}
	return node.Options().Addr
}

// diffCleanup deletes every key with the tag on its owner.
func diffCleanup(t *testing.T, owner, tag string) {
	rc := dialRaw(t, owner)
	cursor := "0"
	var keys []string
	for {
		rc.send(encode("SCAN", cursor, "MATCH", tag+":*", "COUNT", "1000"))
		r, err := rc.reply()
		if err != nil {
			t.Fatalf("cleanup SCAN: %v", err)
		}
		elems := respBulks(r)
		if len(elems) == 0 {
			t.Fatalf("cleanup SCAN: unexpected reply %q", r)
		}
		cursor = elems[0]
		keys = append(keys, elems[1:]...)
		if cursor == "0" {
			break
		}
	}
	for _, k := range keys {
		rc.send(encode("DEL", k))
		if r, err := rc.reply(); err != nil || !strings.HasPrefix(r, ":") {
			t.Fatalf("cleanup DEL %q: %q %v", k, r, err)
		}
	}
}

// respBulks returns every non-nil bulk string in a raw reply, flattened, in order.
func respBulks(raw string) []string {
	var out []string
	rest := raw
	for len(rest) > 0 {
		i := strings.Index(rest, "\r\n")
		if i < 1 {
			break
		}
		line := rest[:i]
		rest = rest[i+2:]
		if line[0] == '$' {
			n, _ := strconv.Atoi(line[1:])
			if n >= 0 && len(rest) >= n+2 {
				out = append(out, rest[:n])
				rest = rest[n+2:]
			}
		}
	}
	return out
}

// dumpOf returns the DUMP payload of a string value, made on the owner with a scratch key.
func dumpOf(t *testing.T, owner, tag, value string) string {
	rc := dialRaw(t, owner)
	key := tag + ":tmp:src"
	rc.send(encode("SET", key, value) + encode("DUMP", key) + encode("DEL", key))
	var rs []string
	for i := 0; i < 3; i++ {
		r, err := rc.reply()
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	b := respBulks(rs[1])
	if rs[0] != "+OK\r\n" || len(b) != 1 {
		t.Fatalf("DUMP setup: %q", rs)
	}
	return b[0]
}

// runDiffCorpus sends every command one at a time and returns the raw replies.
func runDiffCorpus(t *testing.T, addr, prefix string, corpus []diffCmd) []string {
	rc := dialRaw(t, addr)
	out := make([]string, len(corpus))
	for i, d := range corpus {
		rc.send(encode(d.expand(prefix)...))
		r, err := rc.reply()
		if err != nil {
			t.Fatalf("%s: command %d %q: reading reply: %v (got %q)", addr, i, d.args, err, r)
		}
		out[i] = r
	}
	return out
}

// loopServed returns how many commands of the corpus came before the one with which the
// proxy's first client left the event loop (from its debug log).
func loopServed(t *testing.T, p *proxyProc, corpus []diffCmd) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := p.logs.String()
		if i := strings.Index(logs, "client leaves the event loop"); i >= 0 {
			rest := logs[i:]
			j := strings.Index(rest, `"command": "`)
			if j < 0 {
				t.Fatalf("hand-over log line without a command: %q", rest)
			}
			name := rest[j+len(`"command": "`):]
			name = name[:strings.IndexByte(name, '"')]
			for k, d := range corpus {
				if strings.EqualFold(d.args[0], name) {
					return k
				}
			}
			t.Fatalf("the loop handed over at %q, which is not in the corpus", name)
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy never logged a hand-over from its event loop")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runDiffPipeline writes the whole corpus at once, then reads every reply.
func runDiffPipeline(t *testing.T, addr, prefix string, corpus []diffCmd) []string {
	rc := dialRaw(t, addr)
	var all strings.Builder
	for _, d := range corpus {
		all.WriteString(encode(d.expand(prefix)...))
	}
	werr := make(chan error, 1)
	go func() {
		_ = rc.c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		_, err := rc.c.Write([]byte(all.String()))
		werr <- err
	}()
	out := make([]string, len(corpus))
	for i, d := range corpus {
		r, err := rc.reply()
		if err != nil {
			t.Fatalf("pipeline: reply %d (%q): %v (got %q)", i, d.args, err, r)
		}
		out[i] = r
	}
	if err := <-werr; err != nil {
		t.Fatalf("pipeline write: %v", err)
	}
	return out
}

// compareDiff checks got (proxy) against want (direct, already with the proxy's prefix).
func compareDiff(t *testing.T, label string, corpus []diffCmd, want, got []string) {
	t.Helper()
	for i, d := range corpus {
		if d.shape {
			if ws, gs := respShape(want[i]), respShape(got[i]); ws != gs {
				t.Errorf("%s: command %d %q: reply shape differs\n valkey: %q (%s)\n  proxy: %q (%s)",
					label, i, short(d.args), want[i], ws, got[i], gs)
			}
			continue
		}
		if want[i] != got[i] {
			t.Errorf("%s: command %d %q: replies differ\n valkey: %q\n  proxy: %q",
				label, i, short(d.args), shortReply(want[i]), shortReply(got[i]))
		}
	}
}

func short(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if len(a) > 80 {
			a = a[:80] + fmt.Sprintf("...(%d bytes)", len(a))
		}
		out[i] = a
	}
	return out
}

func shortReply(r string) string {
	if len(r) > 300 {
		return r[:300] + fmt.Sprintf("...(%d bytes)", len(r))
	}
	return r
}

// TestDifferentialCorpus compares the proxy with the owning node, byte for byte, one command at
// a time and as one pipeline.
func TestDifferentialCorpus(t *testing.T) {
	tag, dirP, prxP, pipP := diffKeyPrefixes(t)
	owner := diffOwner(t, tag)
	diffCleanup(t, owner, tag)
	t.Cleanup(func() { diffCleanup(t, owner, tag) })
	// Debug logs say where the connection leaves the event loop.
	p := startProxy(t, nil, "--log-level", "debug")

	corpus := differentialCorpus(dumpOf(t, owner, tag, "restored-value"))
	if len(corpus) < minDiffCommands {
		t.Fatalf("corpus has %d commands, want at least %d", len(corpus), minDiffCommands)
	}
	t.Logf("hash tag %s, owner %s, %d commands", tag, owner, len(corpus))

	direct := runDiffCorpus(t, owner, dirP, corpus)
	if os.Getenv("VLP_DIFF_DUMP") != "" {
		for i, d := range corpus {
			t.Logf("%3d %q -> %q", i, short(d.args), shortReply(direct[i]))
		}
	}
	// Guard against a corpus that accidentally talks to the wrong node.
	for i, r := range direct {
		if strings.HasPrefix(r, "-MOVED") || strings.HasPrefix(r, "-ASK") || strings.HasPrefix(r, "-CROSSSLOT") {
			t.Fatalf("direct run: command %d %q got %q: corpus keys must all be in slot of %s", i, corpus[i].args, r, tag)
		}
	}
	swap := func(prefix string) []string {
		out := make([]string, len(direct))
		for i, r := range direct {
			out[i] = strings.ReplaceAll(r, dirP, prefix)
		}
		return out
	}

	t.Run("sequential", func(t *testing.T) {
		got := runDiffCorpus(t, p.Addr, prxP, corpus)
		compareDiff(t, "sequential", corpus, swap(prxP), got)
		// The commands before the first one the event loop hands over were served by the
		// loop, the rest by the connection's goroutine: both paths are compared.
		served := loopServed(t, p, corpus)
		t.Logf("the event loop served the first %d commands of the corpus", served)
		if served < 100 {
			t.Errorf("the event loop served only %d commands before handing the connection over", served)
		}
	})
	t.Run("pipeline", func(t *testing.T) {
		got := runDiffPipeline(t, p.Addr, pipP, corpus)
		compareDiff(t, "pipeline", corpus, swap(pipP), got)
	})
	shapes := 0
	for _, d := range corpus {
		if d.shape {
			shapes++
		}
	}
	t.Logf("compared %d commands (%d byte for byte, %d by shape only), sequentially and as one pipeline",
		len(corpus), len(corpus)-shapes, shapes)
	for _, d := range intentionalDifferences {
		t.Logf("intentional difference: %q: valkey replies %s; proxy replies %q (%s)", d.args, d.valkey, d.proxy, d.why)
	}
}

// intentionalDiff is a command the proxy deliberately answers differently from the cluster
// node. proxy is the proxy's exact reply unless prefix or contains is set, in which case it
// must be a prefix of / contained in the reply. valkey describes what the cluster node replies;
// when valkeyPrefix is set, the node's reply is checked to start with it (only for commands
// harmless to send to the shared cluster; noDirect skips the node). sameAsStandalone
// additionally requires the proxy's reply to equal a standalone Valkey server's.
type intentionalDiff struct {
	args             []string
	valkey           string
	valkeyPrefix     string
	noDirect         bool
	proxy            string
	prefix           bool
	contains         bool
	sameAsStandalone bool
	why              string
}

var intentionalDifferences = []intentionalDiff{
	{
		args: []string{"CLUSTER", "INFO"}, valkey: "the cluster state (bulk string)", valkeyPrefix: "$",
		proxy: "-ERR This instance has cluster support disabled\r\n", sameAsStandalone: true,
		why: "the proxy presents a standalone server",
	},
	{
		args: []string{"CLUSTER", "SLOTS"}, valkey: "the slot map", valkeyPrefix: "*",
		proxy: "-ERR This instance has cluster support disabled\r\n", sameAsStandalone: true,
		why: "the proxy presents a standalone server",
	},
	{
		args: []string{"CLUSTER", "KEYSLOT", "x"}, valkey: ":16287", valkeyPrefix: ":16287\r\n",
		proxy: "-ERR This instance has cluster support disabled\r\n", sameAsStandalone: true,
		why: "the proxy presents a standalone server",
	},
	{
		args: []string{"ASKING"}, valkey: "+OK", valkeyPrefix: "+OK\r\n",
		proxy: "-ERR This instance has cluster support disabled\r\n", sameAsStandalone: true,
		why: "cluster-only command",
	},
	{
		args: []string{"SELECT", "1"}, valkey: "-ERR SELECT is not allowed in cluster mode",
		valkeyPrefix: "-ERR SELECT is not allowed in cluster mode\r\n",
		proxy:        "-ERR DB index is out of range\r\n",
		why:          "the proxy is a standalone server with database 0 only (a default standalone Valkey has 16 and replies +OK)",
	},
	{
		args: []string{"HELLO", "3"}, valkey: "a RESP3 map (switches the connection to RESP3)", noDirect: true,
		proxy: "-NOPROTO unsupported protocol version\r\n",
		why:   "the proxy speaks RESP2 only",
	},
	{
		args: []string{"HELLO", "2"}, valkey: "mode cluster and the node's client id", valkeyPrefix: "*14\r\n",
		proxy: "$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n", contains: true,
		why: "the proxy presents a standalone primary with its own client ids",
	},
	{
		args: []string{"CLIENT", "ID"}, valkey: "the node's client id", valkeyPrefix: ":",
		proxy: ":", prefix: true,
		why: "client ids are the proxy's own",
	},
	{
		args: []string{"CLIENT", "INFO"}, valkey: "the node's client line", valkeyPrefix: "$",
		proxy: "db=0 sub=0 psub=0 ssub=0 multi=-1 resp=2", contains: true,
		why: "the client line describes the proxy connection",
	},
	{
		args: []string{"DBSIZE"}, valkey: "this node's key count", valkeyPrefix: ":",
		proxy: ":", prefix: true,
		why: "the proxy sums the key counts of every primary",
	},
	{
		args: []string{"INFO"}, valkey: "the node's INFO (cluster_enabled:1, ...)", valkeyPrefix: "$",
		proxy: "# Proxy", contains: true,
		why: "INFO holds the proxy's sections, the upstream's server fields and the summed keyspace",
	},
	{
		args: []string{"CONFIG", "GET", "maxmemory"}, valkey: "the node's setting", valkeyPrefix: "*2\r\n",
		proxy: "-ERR command 'config|get' is not allowed by the proxy policy\r\n",
		why:   "CONFIG is denied by the default policy",
	},
	{
		args: []string{"DEBUG", "HELP"}, valkey: "the DEBUG help", noDirect: true,
		proxy: "-ERR command 'debug' is not allowed by the proxy policy\r\n",
		why:   "DEBUG is denied by the default policy",
	},
	{
		args: []string{"CLIENT", "KILL", "ID", "999999999"}, valkey: "-ERR No such client", noDirect: true,
		proxy: "-ERR command 'client|kill' is not allowed by the proxy policy\r\n",
		why:   "CLIENT KILL is denied by the default policy",
	},
	{
		args: []string{"SWAPDB", "0", "1"}, valkey: "an error in cluster mode", noDirect: true,
		proxy: "-ERR command 'swapdb' is not allowed by the proxy policy\r\n",
		why:   "SWAPDB is denied by the default policy",
	},
	{
		args: []string{"KEYS", "{vlpdiff}:*"}, valkey: "this node's matching keys", valkeyPrefix: "*",
		proxy: "*0\r\n",
		why:   "KEYS is merged over every primary (the test's keys are gone by now)",
	},
	{
		args: []string{"SCAN", "0", "MATCH", "{vlpdiff}:*"}, valkey: "this node's cursor and keys", valkeyPrefix: "*2\r\n",
		proxy: "*2\r\n$", prefix: true,
		why: "the proxy's SCAN cursor encodes the node in its low 10 bits",
	},
}

// TestDifferentialIntentional asserts the proxy's reply for every listed intentional difference.
func TestDifferentialIntentional(t *testing.T) {
	p := startProxy(t, nil)
	prx := dialRaw(t, p.Addr)
	var standalone *rawConn
	if standaloneAddr != "" {
		standalone = dialRaw(t, standaloneAddr)
	}
	for i, d := range intentionalDifferences {
		prx.send(encode(d.args...))
		got, err := prx.reply()
		if err != nil {
			t.Fatalf("%q: reading the proxy's reply: %v", d.args, err)
		}
		switch {
		case d.prefix && !strings.HasPrefix(got, d.proxy),
			d.contains && !strings.Contains(got, d.proxy),
			!d.prefix && !d.contains && got != d.proxy:
			t.Errorf("intentional difference %d %q: proxy replied %q, want %q (prefix %v, contains %v)",
				i, d.args, shortReply(got), d.proxy, d.prefix, d.contains)
		}
		if d.sameAsStandalone {
			if standalone == nil {
				t.Logf("%q: no standalone server (VLP_STANDALONE_ADDR) to compare with", d.args)
			} else {
				standalone.send(encode(d.args...))
				want, err := standalone.reply()
				if err != nil {
					t.Fatalf("%q: reading the standalone server's reply: %v", d.args, err)
				}
				if want != got {
					t.Errorf("%q: proxy replied %q, a standalone Valkey replies %q", d.args, got, want)
				}
			}
		}
		if d.noDirect || d.valkeyPrefix == "" {
			continue
		}
		// Each on a fresh connection: some of these change connection state on the node.
		node := dialRaw(t, clusterAddrs[0])
		node.send(encode(d.args...))
		vr, err := node.reply()
		if err != nil {
			t.Fatalf("%q: reading the node's reply: %v", d.args, err)
		}
		if !strings.HasPrefix(vr, d.valkeyPrefix) {
			t.Errorf("%q: the cluster node replied %q, listed as %q", d.args, shortReply(vr), d.valkeyPrefix)
		}
		_ = node.c.Close()
	}
	t.Logf("%d intentional differences checked", len(intentionalDifferences))
}
