package commands

import (
	"fmt"
	"strings"

	"github.com/redis/rueidis"
)

// Policy lists command names (lower case; "acl|setuser" for a subcommand) the proxy refuses.
type Policy struct {
	// Allow removes names from the default deny list.
	Allow []string
	// Deny adds names to it.
	Deny []string
}

// DefaultDenied is the deny list of SPEC §4.
var DefaultDenied = []string{
	"monitor", "sync", "psync", "replconf", "debug", "shutdown", "config", "module",
	"acl|setuser", "acl|deluser", "acl|load", "acl|save", "save", "bgsave", "bgrewriteaof",
	"replicaof", "slaveof", "failover", "migrate", "swapdb",
	"client|kill", "client|pause", "client|unpause", "client|reply", "client|tracking",
	"flushall", "flushdb",
}

// localNames are answered by the proxy.
var localNames = []string{
	"ping", "echo", "quit", "reset", "hello", "auth", "select", "client", "readonly",
	"readwrite", "asking", "info", "cluster", "dbsize", "command",
}

var splitNames = []string{"mget", "mset", "del", "unlink", "exists", "touch"}

// pinnedNames need a connection of the client's own (blocking commands are found by flag).
var pinnedNames = []string{
	"multi", "exec", "discard", "watch", "unwatch", "subscribe", "psubscribe", "ssubscribe",
	"unsubscribe", "punsubscribe", "sunsubscribe", "wait", "waitaof",
}

// fanOutNames need every primary.
var fanOutNames = []string{"keys", "scan", "randomkey", "script", "function", "flushall", "flushdb", "config", "pubsub"}

// Load builds the table from the reply to COMMAND (RESP2 shape) and applies the policy.
func Load(reply []rueidis.RedisMessage, pol Policy) (*Table, error) {
	t := &Table{cmds: make(map[string]*Spec, len(reply))}
	for _, m := range reply {
		s, err := parseSpec(m)
		if err != nil {
			return nil, err
		}
		t.cmds[s.Name] = s
	}
	if len(t.cmds) == 0 {
		return nil, fmt.Errorf("COMMAND returned no commands")
	}
	for _, n := range splitNames {
		t.setClass(n, Split)
	}
	for _, n := range pinnedNames {
		t.setClass(n, Pinned)
	}
	for _, n := range fanOutNames {
		t.setClass(n, FanOut)
	}
	for _, s := range t.cmds {
		if s.Blocking {
			s.Class = Pinned
		}
	}
	for _, n := range localNames {
		t.setClass(n, Local)
	}
	deny := map[string]bool{}
	for _, n := range DefaultDenied {
		deny[n] = true
	}
	for _, n := range pol.Deny {
		deny[strings.ToLower(n)] = true
	}
	for _, n := range pol.Allow {
		delete(deny, strings.ToLower(n))
	}
	for n := range deny {
		t.setClass(n, Denied)
	}
	for _, s := range LockSpecs {
		t.cmds[s.Name] = s
	}
	return t, nil
}

// LockSpecs are the proxy's own commands (SPEC §3). Their first argument is the key that
// decides the slot (the resource, or SAFESET's key).
var LockSpecs = []*Spec{
	{Name: "lock", Arity: -2, Class: Lock, Flags: []string{"write", "fast"}, simple: true, first: 1, step: 1},
	{Name: "unlock", Arity: -2, Class: Lock, Flags: []string{"write", "fast"}, simple: true, first: 1, step: 1},
	{Name: "renew", Arity: -3, Class: Lock, Flags: []string{"write", "fast"}, simple: true, first: 1, step: 1},
	{Name: "lockinfo", Arity: 2, Class: Lock, Flags: []string{"readonly", "fast"}, ReadOnly: true, simple: true, first: 1, step: 1},
	{Name: "lockid", Arity: 1, Class: Lock, Flags: []string{"fast"}},
	{Name: "safeset", Arity: -3, Class: Lock, Flags: []string{"write"}, simple: true, first: 1, step: 1},
}

// setClass sets the class of a command and of its subcommands, or of one subcommand.
func (t *Table) setClass(name string, c Class) {
	if s := t.Get(name); s != nil {
		s.Class = c
		for _, sub := range s.sub {
			sub.Class = c
		}
	}
}

func parseSpec(m rueidis.RedisMessage) (*Spec, error) {
	e, err := m.ToArray()
	if err != nil || len(e) < 6 {
		return nil, fmt.Errorf("unexpected COMMAND entry %v", m)
	}
	name, _ := e[0].ToString()
	arity, _ := e[1].AsInt64()
	first, _ := e[3].AsInt64()
	last, _ := e[4].AsInt64()
	step, _ := e[5].AsInt64()
	s := &Spec{Name: strings.ToLower(name), Arity: int(arity)}
	flags, _ := e[2].ToArray()
	for _, f := range flags {
		v, _ := f.ToString()
		s.Flags = append(s.Flags, v)
		switch v {
		case "readonly":
			s.ReadOnly = true
		case "blocking":
			s.Blocking = true
		}
	}
	movable := false
	for _, f := range s.Flags {
		if f == "movablekeys" {
			movable = true
		}
	}
	if len(e) > 8 {
		specs, _ := e[8].ToArray()
		for _, ks := range specs {
			k, incomplete := parseKeySpec(ks)
			if incomplete && (s.Name == "sort" || s.Name == "sort_ro") {
				s.sortStore = true
			}
			s.keySpecs = append(s.keySpecs, k)
		}
	}
	switch {
	case len(s.keySpecs) == 0 && first > 0 && !movable:
		// Servers without key specs: the legacy first/last/step.
		s.simple, s.first, s.last, s.step = true, int(first), relLast(int(first), int(last)), int(step)
	case len(s.keySpecs) == 1 && !s.sortStore && s.keySpecs[0].bsType == 'i' && s.keySpecs[0].fkType == 'r' && s.keySpecs[0].limit <= 1:
		k := s.keySpecs[0]
		s.simple, s.first, s.last, s.step = true, k.bsIndex, k.lastKey, k.keyStep
	}
	if len(e) > 9 {
		subs, _ := e[9].ToArray()
		for _, sm := range subs {
			sub, err := parseSpec(sm)
			if err != nil {
				return nil, err
			}
			if s.sub == nil {
				s.sub = map[string]*Spec{}
			}
			s.sub[sub.Name] = sub
		}
	}
	return s, nil
}

// relLast turns the legacy absolute last-key position into the key-spec form (relative to
// first, or negative from the end).
func relLast(first, last int) int {
	if last < 0 {
		return last
	}
	return last - first
}

// parseKeySpec reads a RESP2 key spec: a flat array of name/value pairs. incomplete is set when
// its begin_search is "unknown" (SORT's STORE, for example).
func parseKeySpec(m rueidis.RedisMessage) (keySpec, bool) {
	k := keySpec{bsType: 'u', fkType: 'u'}
	kv := pairs(m)
	if bs, ok := kv["begin_search"]; ok {
		bsm := pairs(bs)
		typ := strOf(bsm["type"])
		spec := pairs(bsm["spec"])
		switch typ {
		case "index":
			k.bsType = 'i'
			k.bsIndex = intOf(spec["index"])
		case "keyword":
			k.bsType = 'k'
			k.bsKeyword = strOf(spec["keyword"])
			k.bsStart = intOf(spec["startfrom"])
		}
	}
	if fk, ok := kv["find_keys"]; ok {
		fkm := pairs(fk)
		typ := strOf(fkm["type"])
		spec := pairs(fkm["spec"])
		switch typ {
		case "range":
			k.fkType = 'r'
			k.lastKey = intOf(spec["lastkey"])
			k.keyStep = intOf(spec["keystep"])
			k.limit = intOf(spec["limit"])
		case "keynum":
			k.fkType = 'n'
			k.keyNumIdx = intOf(spec["keynumidx"])
			k.firstKey = intOf(spec["firstkey"])
			k.keyNumStep = intOf(spec["keystep"])
		}
	}
	return k, k.bsType == 'u' || k.fkType == 'u'
}

func pairs(m rueidis.RedisMessage) map[string]rueidis.RedisMessage {
	out := map[string]rueidis.RedisMessage{}
	arr, err := m.ToArray()
	if err != nil {
		return out
	}
	for i := 0; i+1 < len(arr); i += 2 {
		k, _ := arr[i].ToString()
		out[k] = arr[i+1]
	}
	return out
}

func intOf(m rueidis.RedisMessage) int {
	v, _ := m.AsInt64()
	return int(v)
}

func strOf(m rueidis.RedisMessage) string {
	v, _ := m.ToString()
	return v
}
