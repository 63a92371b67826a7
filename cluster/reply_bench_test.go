package cluster

import (
	"strings"
	"testing"
)

// BenchmarkScanReply finds the end of a bulk reply, the per-reply work of the node reader.
func BenchmarkScanReply(b *testing.B) {
	reply := []byte("$16\r\n" + strings.Repeat("v", 16) + "\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if n, err := ReplyLen(reply); n != len(reply) || err != nil {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkScanArrayReply(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("*16\r\n")
	for range 16 {
		sb.WriteString("$3\r\nabc\r\n")
	}
	reply := []byte(sb.String())
	b.ReportAllocs()
	for b.Loop() {
		if n, _ := ReplyLen(reply); n != len(reply) {
			b.Fatal(n)
		}
	}
}

func BenchmarkSlotOf(b *testing.B) {
	key := []byte("key:000000012345")
	b.ReportAllocs()
	for b.Loop() {
		_ = SlotOf(key)
	}
}
