package commands

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

func TestLockKeyLayout(t *testing.T) {
	tests := []struct{ resource, want string }{
		{"orders", "lock:{orders}"},
		{"user:1", "lock:{user:1}"},
		{"{t}y", "lock:{t}:{t}y"},
		{"x{tag}z", "lock:{tag}:x{tag}z"},
		{"", "lock:{" + cluster.SlotTag(0) + "}:"},
		{"a}b", "lock:{" + cluster.SlotTag(cluster.SlotOfString("a}b")) + "}:a}b"},
		{"{}x", "lock:{" + cluster.SlotTag(cluster.SlotOfString("{}x")) + "}:{}x"},
		{"x{", "lock:{" + cluster.SlotTag(cluster.SlotOfString("x{")) + "}:x{"},
	}
	for _, tt := range tests {
		if got := string(LockKey(nil, "lock:", []byte(tt.resource))); got != tt.want {
			t.Errorf("LockKey(%q) = %q, want %q", tt.resource, got, tt.want)
		}
	}
}

// TestLockKeySameSlot is SPEC §1's property: slot(lockKey(R)) == slot(R), for thousands of
// random and hostile names.
func TestLockKeySameSlot(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	names := []string{"", "{", "}", "{}", "{}x", "x{", "a}b", "{t}y", "}{", "{{}}", "\x00", strings.Repeat("z", 1<<20)}
	alphabet := []byte("ab{}:\x00\xff\r\n ")
	for range 20000 {
		b := make([]byte, r.IntN(16))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		names = append(names, string(b))
	}
	for _, n := range names {
		key := LockKey(nil, "lock:", []byte(n))
		if cluster.SlotOf(key) != cluster.SlotOfString(n) {
			t.Fatalf("slot(LockKey(%q)) = %d, slot(R) = %d", n, cluster.SlotOf(key), cluster.SlotOfString(n))
		}
		if !IsLockKey(key, "lock:") {
			t.Fatalf("IsLockKey(%q) = false", key)
		}
		fk := FenceKey(nil, "lock:", cluster.SlotOfString(n))
		if cluster.SlotOf(fk) != cluster.SlotOfString(n) || !IsLockKey(fk, "lock:") {
			t.Fatalf("fence key %q of %q is in the wrong slot", fk, n)
		}
	}
	if IsLockKey([]byte("lock:plain"), "lock:") || IsLockKey([]byte("other"), "lock:") {
		t.Fatal("IsLockKey matched a user key")
	}
}
