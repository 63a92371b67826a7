package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// Auth is client authentication: a password for the default user and named users. Passwords
// are kept only as SHA-256 digests and compared in constant time; they are never logged.
type Auth struct {
	users map[string][32]byte
}

// NewAuth returns nil when no password is set (no authentication).
func NewAuth(defaultPassword string, users map[string]string) *Auth {
	if defaultPassword == "" && len(users) == 0 {
		return nil
	}
	a := &Auth{users: map[string][32]byte{}}
	if defaultPassword != "" {
		a.users["default"] = sha256.Sum256([]byte(defaultPassword))
	}
	for name, pw := range users {
		a.users[name] = sha256.Sum256([]byte(pw))
	}
	return a
}

// check reports whether user/password match; every comparison takes the same time.
func (a *Auth) check(user, password []byte) bool {
	got := sha256.Sum256(password)
	want, ok := a.users[string(user)]
	if !ok {
		// Compare anyway, so a missing user takes as long as a wrong password.
		want = sha256.Sum256([]byte("\x00no such user"))
	}
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1 && ok
}

// PreAuthLimits are what an unauthenticated client may send (Valkey's, after CVE-2021-32675):
// 10 arguments of at most 16 KiB, 1 MiB of buffered input.
var PreAuthLimits = resp.Limits{MaxArgs: 10, MaxBulk: 16 << 10, MaxInline: 16 << 10, MaxQuery: 1 << 20, Inline: true, OneAtATime: true}

const (
	errNoAuth      = "NOAUTH Authentication required."
	errNoAuthHello = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
)

// authGate answers a command of a client that has not authenticated yet. It reports whether
// the command may go on.
func (c *client) authGate(name []byte) bool {
	switch {
	case bytes.EqualFold(name, []byte("auth")), bytes.EqualFold(name, []byte("quit")),
		bytes.EqualFold(name, []byte("reset")):
		return true
	case bytes.EqualFold(name, []byte("hello")):
		return true
	}
	c.localError(errNoAuth)
	return false
}

// authenticate checks AUTH [user] password and lifts the pre-auth limits on success.
func (c *client) authenticate(user, password []byte) bool {
	if !c.s.auth.check(user, password) {
		return false
	}
	if !c.authed {
		c.authed = true
		c.rd.SetLimits(c.s.opts.Limits)
	}
	return true
}

// authCommand answers AUTH when authentication is configured.
func (c *client) authCommand(args [][]byte) {
	switch len(args) {
	case 2:
		c.authReply(c.authenticate([]byte("default"), args[1]))
	case 3:
		c.authReply(c.authenticate(args[1], args[2]))
	default:
		c.local = redcon.AppendError(c.local, errSyntax)
	}
}

func (c *client) authReply(ok bool) {
	if ok {
		c.local = redcon.AppendOK(c.local)
	} else {
		c.local = redcon.AppendError(c.local, errWrongPass)
	}
}
