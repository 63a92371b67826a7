package cluster

import "testing"

func TestSlotOf(t *testing.T) {
	tests := []struct {
		key  string
		slot uint16
	}{
		// Values from CLUSTER KEYSLOT on Valkey 8.
		{"", 0},
		{"foo", 12182},
		{"bar", 5061},
		{"123456789", 12739},
		{"{user1000}.following", 3443},
		{"{user1000}.followers", 3443},
		{"foo{}{bar}", 8363},
		{"foo{{bar}}zap", 4015},
		{"foo{bar}{zap}", 5061},
		{"{}", 15257},
	}
	for _, tt := range tests {
		if got := SlotOfString(tt.key); got != tt.slot {
			t.Errorf("SlotOf(%q) = %d, want %d", tt.key, got, tt.slot)
		}
	}
}

func TestHashTag(t *testing.T) {
	tests := []struct{ key, tag string }{
		{"abc", "abc"},
		{"{t}x", "t"},
		{"x{t}", "t"},
		{"{}x", "{}x"},
		{"x{", "x{"},
		{"a}b{c}", "c"},
		{"{a{b}c}", "a{b"},
	}
	for _, tt := range tests {
		if got := string(HashTag([]byte(tt.key))); got != tt.tag {
			t.Errorf("HashTag(%q) = %q, want %q", tt.key, got, tt.tag)
		}
	}
}

func TestSlotTagCoversEverySlot(t *testing.T) {
	longest := 0
	for s := range SlotCount {
		tag := SlotTag(uint16(s))
		if tag == "" {
			t.Fatalf("slot %d has no tag", s)
		}
		if got := SlotOfString("{" + tag + "}"); got != uint16(s) {
			t.Fatalf("SlotTag(%d) = %q hashes to %d", s, tag, got)
		}
		longest = max(longest, len(tag))
	}
	if longest > 4 {
		t.Errorf("longest tag has %d bytes", longest)
	}
}
