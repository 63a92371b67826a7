package commands

import (
	"bytes"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"strings"
	"time"
)

// Lua scripts of the lock commands, each opening with a comment on its KEYS, ARGV and replies.
var (
	//go:embed scripts/lock.lua
	lockLua string
	//go:embed scripts/unlock.lua
	unlockLua string
	//go:embed scripts/renew.lua
	renewLua string
	//go:embed scripts/info.lua
	infoLua string
	//go:embed scripts/safeset.lua
	safesetLua string
)

// Script is an embedded Lua script: Body is what is sent (the file without its comment lines),
// SHA its SHA1.
type Script struct {
	Name string
	Body string
	SHA  string
}

func newScript(name, file string) *Script {
	var b strings.Builder
	for _, line := range strings.Split(file, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "--") {
			b.WriteString(t)
			b.WriteByte('\n')
		}
	}
	body := b.String()
	sum := sha1.Sum([]byte(body))
	return &Script{Name: name, Body: body, SHA: hex.EncodeToString(sum[:])}
}

// The lock scripts.
var (
	ScriptLock    = newScript("lock", lockLua)
	ScriptUnlock  = newScript("unlock", unlockLua)
	ScriptRenew   = newScript("renew", renewLua)
	ScriptInfo    = newScript("info", infoLua)
	ScriptSafeSet = newScript("safeset", safesetLua)
	// Scripts lists them all, for loading on every primary.
	Scripts = []*Script{ScriptLock, ScriptUnlock, ScriptRenew, ScriptInfo, ScriptSafeSet}
)

// LockLimits bound the lock commands' arguments.
type LockLimits struct {
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	MaxWait    time.Duration
}

// Errors of the lock commands (reply texts without the leading '-').
const (
	ErrSyntax     = "ERR syntax error"
	ErrNotInteger = "ERR value is not an integer or out of range"
	ErrToken      = "ERR invalid token: 1 to 64 printable ASCII characters without spaces"
)

func errExpire(cmd string) string { return "ERR invalid expire time in '" + cmd + "' command" }
func errWait(cmd string) string   { return "ERR invalid wait time in '" + cmd + "' command" }

// LockRequest is a parsed LOCK.
type LockRequest struct {
	Resource  []byte
	TTL       time.Duration
	Wait      time.Duration
	KeepAlive bool
	Fence     bool
	Token     []byte // nil: generate one
}

// ParseLock parses LOCK resource [EX s | PX ms] [WAIT ms] [KEEPALIVE] [FENCE] [TOKEN t].
// args[0] is the command name. The error is a reply text.
func ParseLock(args [][]byte, lim LockLimits) (LockRequest, string) {
	r := LockRequest{Resource: args[1], TTL: lim.DefaultTTL}
	var seenTTL, seenWait bool
	for i := 2; i < len(args); i++ {
		opt := args[i]
		switch {
		case eq(opt, "ex") || eq(opt, "px"):
			if seenTTL || i+1 >= len(args) {
				return r, ErrSyntax
			}
			seenTTL = true
			i++
			ttl, e := parseTTL(args[i], eq(opt, "ex"), lim.MaxTTL, "lock")
			if e != "" {
				return r, e
			}
			r.TTL = ttl
		case eq(opt, "wait"):
			if seenWait || i+1 >= len(args) {
				return r, ErrSyntax
			}
			seenWait = true
			i++
			n, ok := ParseInt(args[i])
			if !ok {
				return r, ErrNotInteger
			}
			if n < 0 || n > lim.MaxWait.Milliseconds() {
				return r, errWait("lock")
			}
			r.Wait = time.Duration(n) * time.Millisecond
		case eq(opt, "keepalive"):
			if r.KeepAlive {
				return r, ErrSyntax
			}
			r.KeepAlive = true
		case eq(opt, "fence"):
			if r.Fence {
				return r, ErrSyntax
			}
			r.Fence = true
		case eq(opt, "token"):
			var e string
			if r.Token, i, e = tokenOption(args, i, r.Token); e != "" {
				return r, e
			}
		default:
			return r, ErrSyntax
		}
	}
	return r, ""
}

// parseTTL reads an EX (seconds) or PX (milliseconds) value: positive and at most max.
func parseTTL(b []byte, seconds bool, max time.Duration, cmd string) (time.Duration, string) {
	n, ok := ParseInt(b)
	if !ok {
		return 0, ErrNotInteger
	}
	unit := time.Millisecond
	if seconds {
		unit = time.Second
	}
	if n <= 0 || n > int64(max/unit) {
		return 0, errExpire(cmd)
	}
	return time.Duration(n) * unit, ""
}

// tokenOption reads the value of a TOKEN option at args[i]: once only, and a valid token. It
// returns the token and the index of its value.
func tokenOption(args [][]byte, i int, seen []byte) ([]byte, int, string) {
	if seen != nil || i+1 >= len(args) {
		return seen, i, ErrSyntax
	}
	if !ValidToken(args[i+1]) {
		return seen, i, ErrToken
	}
	return args[i+1], i + 1, ""
}

// ValidToken reports whether t is 1 to 64 printable ASCII characters without spaces.
func ValidToken(t []byte) bool {
	if len(t) == 0 || len(t) > 64 {
		return false
	}
	for _, c := range t {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// UnlockRequest is a parsed UNLOCK.
type UnlockRequest struct {
	Resource []byte
	Token    []byte // nil: this connection's latest token for Resource
}

// ParseUnlock parses UNLOCK resource [token].
func ParseUnlock(args [][]byte) (UnlockRequest, string) {
	switch len(args) {
	case 2:
		return UnlockRequest{Resource: args[1]}, ""
	case 3:
		return UnlockRequest{Resource: args[1], Token: args[2]}, ""
	}
	return UnlockRequest{}, "ERR wrong number of arguments for 'unlock' command"
}

// RenewRequest is a parsed RENEW.
type RenewRequest struct {
	Resource []byte
	Token    []byte
	TTL      time.Duration
}

// ParseRenew parses RENEW resource token [EX s | PX ms].
func ParseRenew(args [][]byte, lim LockLimits) (RenewRequest, string) {
	r := RenewRequest{Resource: args[1], Token: args[2], TTL: lim.DefaultTTL}
	switch len(args) {
	case 3:
		return r, ""
	case 5:
		if !eq(args[3], "ex") && !eq(args[3], "px") {
			return r, ErrSyntax
		}
		ttl, e := parseTTL(args[4], eq(args[3], "ex"), lim.MaxTTL, "renew")
		r.TTL = ttl
		return r, e
	}
	// Arity -3: more arguments are options, and options it does not know are a syntax error.
	return r, ErrSyntax
}

// SafeSetRequest is a parsed SAFESET.
type SafeSetRequest struct {
	Key   []byte
	Value []byte
	// Expiry holds the SET options: nothing, EX n, PX n or KEEPTTL.
	Expiry [][]byte
	Token  []byte // nil: set only when nobody holds the lock
}

var keepTTL = [][]byte{[]byte("KEEPTTL")}

// ParseSafeSet parses SAFESET key value [seconds | * | EX s | PX ms | KEEPTTL] [TOKEN t].
func ParseSafeSet(args [][]byte, lim LockLimits) (SafeSetRequest, string) {
	r := SafeSetRequest{Key: args[1], Value: args[2]}
	seenExpiry := false
	for i := 3; i < len(args); i++ {
		a := args[i]
		switch {
		case eq(a, "token"):
			var e string
			if r.Token, i, e = tokenOption(args, i, r.Token); e != "" {
				return r, e
			}
		case seenExpiry:
			return r, ErrSyntax
		case eq(a, "ex") || eq(a, "px"):
			if i+1 >= len(args) {
				return r, ErrSyntax
			}
			i++
			if _, e := parseTTL(args[i], eq(a, "ex"), 1<<62, "safeset"); e != "" {
				return r, e
			}
			seenExpiry = true
			r.Expiry = [][]byte{a, args[i]}
		case eq(a, "keepttl") || string(a) == "*":
			seenExpiry = true
			r.Expiry = keepTTL
		case r.Token == nil && i == 3 && isDigits(a):
			// The seed's bare TTL in seconds.
			if _, e := parseTTL(a, true, 1<<62, "safeset"); e != "" {
				return r, e
			}
			seenExpiry = true
			r.Expiry = [][]byte{[]byte("EX"), a}
		default:
			return r, ErrSyntax
		}
	}
	return r, ""
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i, c := range b {
		if (c < '0' || c > '9') && !(i == 0 && c == '-' && len(b) > 1) {
			return false
		}
	}
	return true
}

func eq(b []byte, lowerWord string) bool {
	return len(b) == len(lowerWord) && bytes.EqualFold(b, []byte(lowerWord))
}
