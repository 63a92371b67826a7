package commands

import (
	"strings"
	"testing"
	"time"
)

var testLimits = LockLimits{DefaultTTL: 10 * time.Second, MaxTTL: time.Hour, MaxWait: time.Minute}

func split(s string) [][]byte {
	var out [][]byte
	for _, f := range strings.Fields(s) {
		out = append(out, []byte(f))
	}
	return out
}

func TestParseLock(t *testing.T) {
	tests := []struct {
		in   string
		want LockRequest
		err  string
	}{
		{in: "LOCK r", want: LockRequest{TTL: 10 * time.Second}},
		{in: "lock r px 250 wait 100 keepalive fence token t-1", want: LockRequest{TTL: 250 * time.Millisecond, Wait: 100 * time.Millisecond, KeepAlive: true, Fence: true, Token: []byte("t-1")}},
		{in: "LOCK r EX 5", want: LockRequest{TTL: 5 * time.Second}},
		{in: "LOCK r EX 3600", want: LockRequest{TTL: time.Hour}},
		{in: "LOCK r WAIT 0", want: LockRequest{TTL: 10 * time.Second}},
		{in: "LOCK r EX 3601", err: "ERR invalid expire time in 'lock' command"},
		{in: "LOCK r EX 0", err: "ERR invalid expire time in 'lock' command"},
		{in: "LOCK r PX -5", err: "ERR invalid expire time in 'lock' command"},
		{in: "LOCK r PX 1.5", err: ErrNotInteger},
		{in: "LOCK r EX x", err: ErrNotInteger},
		{in: "LOCK r EX 99999999999999999999", err: ErrNotInteger},
		{in: "LOCK r WAIT -1", err: "ERR invalid wait time in 'lock' command"},
		{in: "LOCK r WAIT 60001", err: "ERR invalid wait time in 'lock' command"},
		{in: "LOCK r WAIT abc", err: ErrNotInteger},
		{in: "LOCK r EX 1 PX 1", err: ErrSyntax},
		{in: "LOCK r EX 1 EX 1", err: ErrSyntax},
		{in: "LOCK r WAIT 1 WAIT 1", err: ErrSyntax},
		{in: "LOCK r FENCE FENCE", err: ErrSyntax},
		{in: "LOCK r KEEPALIVE KEEPALIVE", err: ErrSyntax},
		{in: "LOCK r TOKEN a TOKEN b", err: ErrSyntax},
		{in: "LOCK r EX", err: ErrSyntax},
		{in: "LOCK r WAIT", err: ErrSyntax},
		{in: "LOCK r TOKEN", err: ErrSyntax},
		{in: "LOCK r BOGUS", err: ErrSyntax},
		{in: "LOCK r TOKEN " + strings.Repeat("x", 65), err: ErrToken},
	}
	for _, tt := range tests {
		got, err := ParseLock(split(tt.in), testLimits)
		if err != tt.err {
			t.Errorf("%q: error %q, want %q", tt.in, err, tt.err)
			continue
		}
		if err != "" {
			continue
		}
		if got.TTL != tt.want.TTL || got.Wait != tt.want.Wait || got.KeepAlive != tt.want.KeepAlive ||
			got.Fence != tt.want.Fence || string(got.Token) != string(tt.want.Token) || string(got.Resource) != "r" {
			t.Errorf("%q = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if _, e := ParseLock([][]byte{[]byte("LOCK"), []byte("r"), []byte("TOKEN"), []byte("a b")}, testLimits); e != ErrToken {
		t.Errorf("a token with a space: %q", e)
	}
}

func TestParseSafeSet(t *testing.T) {
	tests := []struct {
		in     string
		expiry string
		token  string
		err    string
	}{
		{in: "SAFESET k v"},
		{in: "SAFESET k v 3600", expiry: "EX 3600"},
		{in: "SAFESET k v *", expiry: "KEEPTTL"},
		{in: "SAFESET k v KEEPTTL", expiry: "KEEPTTL"},
		{in: "SAFESET k v ex 5", expiry: "ex 5"},
		{in: "SAFESET k v PX 5 TOKEN t", expiry: "PX 5", token: "t"},
		{in: "SAFESET k v TOKEN t", token: "t"},
		{in: "SAFESET k v 0", err: "ERR invalid expire time in 'safeset' command"},
		{in: "SAFESET k v -3", err: "ERR invalid expire time in 'safeset' command"},
		{in: "SAFESET k v EX x", err: ErrNotInteger},
		{in: "SAFESET k v 5 6", err: ErrSyntax},
		{in: "SAFESET k v EX 5 KEEPTTL", err: ErrSyntax},
		{in: "SAFESET k v TOKEN", err: ErrSyntax},
		{in: "SAFESET k v TOKEN a TOKEN b", err: ErrSyntax},
		{in: "SAFESET k v nonsense", err: ErrSyntax},
		{in: "SAFESET k v EX", err: ErrSyntax},
	}
	for _, tt := range tests {
		got, err := ParseSafeSet(split(tt.in), testLimits)
		if err != tt.err {
			t.Errorf("%q: error %q, want %q", tt.in, err, tt.err)
			continue
		}
		if err != "" {
			continue
		}
		var exp []string
		for _, e := range got.Expiry {
			exp = append(exp, string(e))
		}
		if strings.Join(exp, " ") != tt.expiry || string(got.Token) != tt.token {
			t.Errorf("%q = expiry %q token %q, want %q %q", tt.in, exp, got.Token, tt.expiry, tt.token)
		}
	}
}

func TestParseRenewUnlock(t *testing.T) {
	if r, e := ParseRenew(split("RENEW r t PX 500"), testLimits); e != "" || r.TTL != 500*time.Millisecond {
		t.Errorf("RENEW PX: %+v %q", r, e)
	}
	if r, e := ParseRenew(split("RENEW r t"), testLimits); e != "" || r.TTL != 10*time.Second {
		t.Errorf("RENEW default: %+v %q", r, e)
	}
	for in, want := range map[string]string{
		"RENEW r t EX":      ErrSyntax,
		"RENEW r t XX 5":    ErrSyntax,
		"RENEW r t EX 0":    "ERR invalid expire time in 'renew' command",
		"RENEW r t EX 1 2":  ErrSyntax,
		"UNLOCK r t extra":  "ERR wrong number of arguments for 'unlock' command",
		"RENEW r t PX nope": ErrNotInteger,
	} {
		var e string
		if strings.HasPrefix(in, "UNLOCK") {
			_, e = ParseUnlock(split(in))
		} else {
			_, e = ParseRenew(split(in), testLimits)
		}
		if e != want {
			t.Errorf("%q: %q, want %q", in, e, want)
		}
	}
}

// FuzzLockArgs feeds arbitrary argument lists to every lock parser: none may panic, and each
// either parses or gives a Valkey-style error.
func FuzzLockArgs(f *testing.F) {
	for _, s := range []string{
		"LOCK\x00r\x00PX\x00100\x00WAIT\x005\x00FENCE",
		"LOCK\x00r\x00TOKEN",
		"SAFESET\x00k\x00v\x00*\x00TOKEN\x00t",
		"SAFESET\x00k\x00v\x003600",
		"RENEW\x00r\x00t\x00EX\x00-1",
		"UNLOCK\x00r",
		"LOCK\x00\x00EX\x009223372036854775807",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		parts := strings.Split(in, "\x00")
		args := make([][]byte, 0, len(parts)+2)
		for _, p := range parts {
			args = append(args, []byte(p))
		}
		for len(args) < 3 {
			args = append(args, []byte("x"))
		}
		check := func(e string) {
			if e != "" && !strings.HasPrefix(e, "ERR ") {
				t.Fatalf("error %q is not Valkey-style", e)
			}
		}
		if r, e := ParseLock(args, testLimits); e == "" {
			if r.TTL <= 0 || r.TTL > testLimits.MaxTTL || r.Wait < 0 || r.Wait > testLimits.MaxWait {
				t.Fatalf("accepted out-of-range values: %+v", r)
			}
			if r.Token != nil && !ValidToken(r.Token) {
				t.Fatalf("accepted token %q", r.Token)
			}
		} else {
			check(e)
		}
		_, e := ParseSafeSet(args, testLimits)
		check(e)
		_, e = ParseRenew(args, testLimits)
		check(e)
		_, e = ParseUnlock(args)
		check(e)
		_ = LockKey(nil, "lock:", args[1])
	})
}
