package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
)

// runLocal answers the commands the proxy owns.
func (c *client) runLocal(spec *commands.Spec, args [][]byte) {
	start := len(c.local)
	switch spec.Name {
	case "ping":
		if len(args) > 2 {
			c.local = redcon.AppendError(c.local, "ERR wrong number of arguments for 'ping' command")
		} else if len(args) > 1 {
			c.local = redcon.AppendBulk(c.local, args[1])
		} else {
			c.local = redcon.AppendString(c.local, "PONG")
		}
	case "echo":
		c.local = redcon.AppendBulk(c.local, args[1])
	case "quit":
		c.local = redcon.AppendOK(c.local)
		c.quitting = true
	case "reset":
		c.endTx(false)
		c.mu.Lock()
		c.name, c.libName, c.libVer = "", "", ""
		c.mu.Unlock()
		c.local = redcon.AppendString(c.local, "RESET")
	case "hello":
		c.hello(args)
	case "auth":
		if c.s.auth != nil {
			c.authCommand(args)
		} else {
			c.auth(args)
		}
	case "select":
		switch n, ok := commands.ParseInt(args[1]); {
		case !ok:
			c.local = redcon.AppendError(c.local, errNotInteger)
		case n != 0:
			c.local = redcon.AppendError(c.local, errDBIndex)
		default:
			c.local = redcon.AppendOK(c.local)
		}
	case "readonly", "readwrite":
		// A standalone Valkey accepts both; reads are routed by the proxy's own policy.
		c.local = redcon.AppendOK(c.local)
	case "asking", "cluster":
		c.local = redcon.AppendError(c.local, errClusterDisabled)
	case "dbsize":
		c.planFanOutSum(args)
		return
	case "info":
		c.planInfo(args)
		return
	case "command", "command|count", "command|info", "command|docs", "command|list":
		c.planCommand(args)
		return
	default:
		if strings.HasPrefix(spec.Name, "client|") {
			c.clientCommand(spec.Name[len("client|"):], args)
		} else if strings.HasPrefix(spec.Name, "command|") {
			// GETKEYS, HELP ...: the upstream answers.
			c.planCommand(args)
			return
		} else if strings.HasPrefix(spec.Name, "cluster|") {
			c.local = redcon.AppendError(c.local, errClusterDisabled)
		} else {
			c.local = redcon.AppendError(c.local, errNotSupported(spec.Name))
		}
	}
	c.localReply(start)
}

// auth answers AUTH the way a Valkey whose default user has no password does: AUTH <password>
// is an error, AUTH default <anything> succeeds, any other user is refused.
func (c *client) auth(args [][]byte) {
	switch {
	case len(args) > 3:
		c.local = redcon.AppendError(c.local, errSyntax)
	case len(args) == 2:
		c.local = redcon.AppendError(c.local, errNoAuthSet)
	case string(args[1]) == "default":
		c.local = redcon.AppendOK(c.local)
	default:
		c.local = redcon.AppendError(c.local, errWrongPass)
	}
}

// hello answers HELLO [protover [AUTH user pass] [SETNAME name]] with a RESP2 reply.
func (c *client) hello(args [][]byte) {
	if len(args) > 1 {
		v, ok := commands.ParseInt(args[1])
		if !ok {
			c.local = redcon.AppendError(c.local, errHelloProto)
			return
		}
		if v != 2 {
			c.local = redcon.AppendError(c.local, errNoProto)
			return
		}
		name, setName := "", false
		for i := 2; i < len(args); i++ {
			switch {
			case bytes.EqualFold(args[i], []byte("setname")) && i+1 < len(args):
				name, setName = string(args[i+1]), true
				i++
			case bytes.EqualFold(args[i], []byte("auth")) && i+2 < len(args):
				if c.s.auth == nil {
					if string(args[i+1]) != "default" {
						c.local = redcon.AppendError(c.local, errWrongPass)
						return
					}
				} else if !c.authenticate(args[i+1], args[i+2]) {
					c.local = redcon.AppendError(c.local, errWrongPass)
					return
				}
				i += 2
			default:
				c.local = redcon.AppendError(c.local, "ERR Syntax error in HELLO option '"+string(args[i])+"'")
				return
			}
		}
		if c.s.auth != nil && !c.authed {
			c.local = redcon.AppendError(c.local, errNoAuthHello)
			return
		}
		if setName {
			if !validName(name) {
				c.local = redcon.AppendError(c.local, errClientName)
				return
			}
			c.mu.Lock()
			c.name = name
			c.mu.Unlock()
		}
	}
	c.local = redcon.AppendArray(c.local, 14)
	c.local = redcon.AppendBulkString(c.local, "server")
	c.local = redcon.AppendBulkString(c.local, "valkey")
	c.local = redcon.AppendBulkString(c.local, "version")
	c.local = redcon.AppendBulkString(c.local, c.s.upstreamVersion)
	c.local = redcon.AppendBulkString(c.local, "proto")
	c.local = redcon.AppendInt(c.local, 2)
	c.local = redcon.AppendBulkString(c.local, "id")
	c.local = redcon.AppendInt(c.local, c.id)
	c.local = redcon.AppendBulkString(c.local, "mode")
	c.local = redcon.AppendBulkString(c.local, "standalone")
	c.local = redcon.AppendBulkString(c.local, "role")
	c.local = redcon.AppendBulkString(c.local, "master")
	c.local = redcon.AppendBulkString(c.local, "modules")
	c.local = redcon.AppendArray(c.local, 0)
}

// validName is Valkey's rule for client names and library attributes: printable, no spaces.
func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

func (c *client) clientCommand(sub string, args [][]byte) {
	switch sub {
	case "id":
		c.local = redcon.AppendInt(c.local, c.id)
	case "setname":
		name := string(args[2])
		if !validName(name) {
			c.local = redcon.AppendError(c.local, errClientName)
			return
		}
		c.mu.Lock()
		c.name = name
		c.mu.Unlock()
		c.local = redcon.AppendOK(c.local)
	case "getname":
		c.mu.Lock()
		name := c.name
		c.mu.Unlock()
		if name == "" {
			c.local = redcon.AppendNull(c.local)
		} else {
			c.local = redcon.AppendBulkString(c.local, name)
		}
	case "setinfo":
		attr := strings.ToLower(string(args[2]))
		val := string(args[3])
		if attr != "lib-name" && attr != "lib-ver" {
			c.local = redcon.AppendError(c.local, "ERR Unrecognized option '"+string(args[2])+"'")
			return
		}
		if !validName(val) {
			c.local = redcon.AppendError(c.local, "ERR "+attr+" cannot contain spaces, newlines or special characters.")
			return
		}
		c.mu.Lock()
		if attr == "lib-name" {
			c.libName = val
		} else {
			c.libVer = val
		}
		c.mu.Unlock()
		c.local = redcon.AppendOK(c.local)
	case "no-evict", "no-touch":
		switch strings.ToLower(string(args[2])) {
		case "on", "off":
			c.local = redcon.AppendOK(c.local)
		default:
			c.local = redcon.AppendError(c.local, errSyntax)
		}
	case "info":
		c.local = redcon.AppendBulkString(c.local, c.infoLine(time.Now()))
	case "list":
		var sb strings.Builder
		now := time.Now()
		for _, o := range c.s.clientList() {
			sb.WriteString(o.infoLine(now))
		}
		c.local = redcon.AppendBulkString(c.local, sb.String())
	case "help":
		c.local = redcon.AppendArray(c.local, 1)
		c.local = redcon.AppendString(c.local, "CLIENT ID | SETNAME | GETNAME | SETINFO | INFO | LIST | NO-EVICT | NO-TOUCH (answered by valkey-lock-proxy)")
	default:
		c.local = redcon.AppendError(c.local, "ERR CLIENT "+strings.ToUpper(sub)+" is not supported by the proxy")
	}
}

// infoLine is this client's line in CLIENT LIST / CLIENT INFO.
func (c *client) infoLine(now time.Time) string {
	c.mu.Lock()
	name, libName, libVer := c.name, c.libName, c.libVer
	c.mu.Unlock()
	age := int64(now.Sub(c.created).Seconds())
	idle := (now.UnixNano() - c.lastCmd.Load()) / int64(time.Second)
	return fmt.Sprintf("id=%d addr=%s laddr=%s name=%s age=%d idle=%d flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 resp=2 lib-name=%s lib-ver=%s\n",
		c.id, c.raddr, c.laddr, name, age, max(idle, 0), libName, libVer)
}

// planFanOutSum sends the command to every primary and adds up the integer replies (DBSIZE).
func (c *client) planFanOutSum(args [][]byte) {
	start := len(c.scratch)
	c.scratch = appendRequest(c.scratch, args)
	req := c.scratch[start:len(c.scratch):len(c.scratch)]
	first := len(c.ex.Calls)
	for _, n := range c.s.pool.Primaries() {
		c.ex.AddTo(req, n)
	}
	c.steps = append(c.steps, step{kind: stepMerge, merge: mergeSum, a: first, b: len(c.ex.Calls)})
}
