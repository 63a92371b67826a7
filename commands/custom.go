package commands

import (
	"strings"

	"github.com/tidwall/redcon"
)

// lockDocs are the COMMAND DOCS summaries of the lock commands.
var lockDocs = map[string]string{
	"lock":     "Acquires a distributed lock on a resource and returns its token (valkey-lock-proxy).",
	"unlock":   "Releases a lock if the token holds it (valkey-lock-proxy).",
	"renew":    "Resets a held lock's TTL (valkey-lock-proxy).",
	"lockinfo": "Returns a lock's holder token, remaining TTL and waiters (valkey-lock-proxy).",
	"lockid":   "Returns the connection's lock client id (valkey-lock-proxy).",
	"safeset":  "Sets a key only if its lock is free, or held by the given token (valkey-lock-proxy).",
}

// IsLockCommand reports whether name (any case) is one of the proxy's own commands.
func IsLockCommand(name string) bool {
	_, ok := lockDocs[strings.ToLower(name)]
	return ok
}

// AppendLockInfo appends the COMMAND INFO entry of a lock command, shaped like Valkey's.
func AppendLockInfo(b []byte, name string) []byte {
	var s *Spec
	for _, ls := range LockSpecs {
		if ls.Name == strings.ToLower(name) {
			s = ls
		}
	}
	if s == nil {
		return redcon.AppendNull(b)
	}
	b = redcon.AppendArray(b, 10)
	b = redcon.AppendBulkString(b, s.Name)
	b = redcon.AppendInt(b, int64(s.Arity))
	b = redcon.AppendArray(b, len(s.Flags))
	for _, f := range s.Flags {
		b = redcon.AppendString(b, f)
	}
	first := int64(0)
	if s.simple {
		first = 1
	}
	b = redcon.AppendInt(b, first)
	b = redcon.AppendInt(b, first)
	b = redcon.AppendInt(b, first)
	b = redcon.AppendArray(b, 0) // ACL categories
	b = redcon.AppendArray(b, 0) // tips
	if !s.simple {
		b = redcon.AppendArray(b, 0)
	} else {
		b = redcon.AppendArray(b, 1)
		b = redcon.AppendArray(b, 6)
		b = redcon.AppendBulkString(b, "flags")
		b = redcon.AppendArray(b, 1)
		b = redcon.AppendString(b, "RW")
		b = redcon.AppendBulkString(b, "begin_search")
		b = redcon.AppendArray(b, 4)
		b = redcon.AppendBulkString(b, "type")
		b = redcon.AppendBulkString(b, "index")
		b = redcon.AppendBulkString(b, "spec")
		b = redcon.AppendArray(b, 2)
		b = redcon.AppendBulkString(b, "index")
		b = redcon.AppendInt(b, 1)
		b = redcon.AppendBulkString(b, "find_keys")
		b = redcon.AppendArray(b, 4)
		b = redcon.AppendBulkString(b, "type")
		b = redcon.AppendBulkString(b, "range")
		b = redcon.AppendBulkString(b, "spec")
		b = redcon.AppendArray(b, 6)
		b = redcon.AppendBulkString(b, "lastkey")
		b = redcon.AppendInt(b, 0)
		b = redcon.AppendBulkString(b, "keystep")
		b = redcon.AppendInt(b, 1)
		b = redcon.AppendBulkString(b, "limit")
		b = redcon.AppendInt(b, 0)
	}
	return redcon.AppendArray(b, 0) // subcommands
}

// AppendLockDocs appends the COMMAND DOCS name/doc pair of a lock command.
func AppendLockDocs(b []byte, name string) []byte {
	name = strings.ToLower(name)
	b = redcon.AppendBulkString(b, name)
	b = redcon.AppendArray(b, 6)
	b = redcon.AppendBulkString(b, "summary")
	b = redcon.AppendBulkString(b, lockDocs[name])
	b = redcon.AppendBulkString(b, "since")
	b = redcon.AppendBulkString(b, "1.0.0")
	b = redcon.AppendBulkString(b, "group")
	return redcon.AppendBulkString(b, "generic")
}

// LockCommandNames lists the proxy's own commands.
func LockCommandNames() []string {
	out := make([]string, len(LockSpecs))
	for i, s := range LockSpecs {
		out[i] = s.Name
	}
	return out
}
