package commands

import (
	"bytes"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

// LockKey appends to dst the key of the lock on resource (SPEC §1): it always hashes to the
// same slot as resource itself.
//
//   - no '{' and no '}':           prefix{R}
//   - a valid hash tag {T}:        prefix{T}:R
//   - anything else ("", "a}b"):   prefix{S}:R, S = cluster.SlotTag(slot(R))
func LockKey(dst []byte, prefix string, resource []byte) []byte {
	dst = append(dst, prefix...)
	if bytes.IndexByte(resource, '{') < 0 && bytes.IndexByte(resource, '}') < 0 && len(resource) > 0 {
		dst = append(dst, '{')
		dst = append(dst, resource...)
		return append(dst, '}')
	}
	tag := cluster.HashTag(resource)
	if len(tag) == len(resource) {
		// No valid tag: pin with the slot's fixed tag.
		dst = append(dst, '{')
		dst = append(dst, cluster.SlotTag(cluster.SlotOf(resource))...)
		dst = append(dst, '}', ':')
		return append(dst, resource...)
	}
	dst = append(dst, '{')
	dst = append(dst, tag...)
	dst = append(dst, '}', ':')
	return append(dst, resource...)
}

// FenceKey appends to dst the fence counter key for slot: one per slot, never one per resource.
func FenceKey(dst []byte, prefix string, slot uint16) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, "fence:{"...)
	dst = append(dst, cluster.SlotTag(slot)...)
	return append(dst, '}')
}

// IsLockKey reports whether key is a lock or fence key under prefix.
func IsLockKey(key []byte, prefix string) bool {
	if len(key) <= len(prefix) || string(key[:len(prefix)]) != prefix {
		return false
	}
	rest := key[len(prefix):]
	return rest[0] == '{' || bytes.HasPrefix(rest, []byte("fence:{"))
}
