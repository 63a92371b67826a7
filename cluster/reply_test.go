package cluster

import (
	"strings"
	"testing"
)

func TestReplyLen(t *testing.T) {
	tests := []struct {
		in   string
		want int // -1: error
	}{
		{"+OK\r\n", 5},
		{"-ERR x\r\n", 8},
		{":12\r\n", 5},
		{"$3\r\nfoo\r\n", 9},
		{"$-1\r\n", 5},
		{"*-1\r\n", 5},
		{"*0\r\n", 4},
		{"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", 19},
		{"*2\r\n*-1\r\n*2\r\n$1\r\na\r\n$-1\r\n", 25},
		{"+OK\r\n+NEXT\r\n", 5},
		{"$3\r\nfo", 0},
		{"*2\r\n$1\r\na\r\n", 0},
		{"+OK", 0},
		{"+OK\r", 0},
		{"", 0},
		{"?x\r\n", -1},
		{"$x\r\n", -1},
		{"+OK\rx", -1},
		{strings.Repeat("*1\r\n", maxReplyDepth+1) + ":1\r\n", -1},
	}
	for _, tt := range tests {
		got, err := ReplyLen([]byte(tt.in))
		if tt.want == -1 {
			if err == nil {
				t.Errorf("ReplyLen(%q) = %d, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ReplyLen(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

// TestScannerResumes feeds a reply one byte at a time and checks the scanner finds its end
// exactly once, at the right place.
func TestScannerResumes(t *testing.T) {
	in := "*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n"
	var s replyScanner
	for i := 1; i <= len(in); i++ {
		n, err := s.scan([]byte(in[:i]))
		if err != nil {
			t.Fatal(err)
		}
		if i < len(in) && n != 0 {
			t.Fatalf("complete after %d of %d bytes", i, len(in))
		}
		if i == len(in) && n != len(in) {
			t.Fatalf("got %d, want %d", n, len(in))
		}
	}
}

func TestArrayElems(t *testing.T) {
	elems, ok := ArrayElems([]byte("*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:2\r\n"), nil)
	if !ok || len(elems) != 3 || string(elems[0]) != "$1\r\na\r\n" || string(elems[1]) != "$-1\r\n" || string(elems[2]) != "*1\r\n:2\r\n" {
		t.Fatalf("ArrayElems = %q, %v", elems, ok)
	}
	if _, ok := ArrayElems([]byte("$1\r\na\r\n"), nil); ok {
		t.Fatal("a bulk string is not an array")
	}
	if _, ok := ArrayElems([]byte("*2\r\n$1\r\na\r\n"), nil); ok {
		t.Fatal("an incomplete array is not complete")
	}
}

func TestParseRedirect(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		want redirect
	}{
		{"-MOVED 3999 127.0.0.1:6381\r\n", true, redirect{slot: 3999, addr: "127.0.0.1:6381"}},
		{"-ASK 3999 127.0.0.1:6381\r\n", true, redirect{ask: true, slot: 3999, addr: "127.0.0.1:6381"}},
		{"-MOVED 12 :7000\r\n", true, redirect{slot: 12, addr: "10.0.0.9:7000"}},
		{"-TRYAGAIN Multiple keys request during rehashing of slot\r\n", true, redirect{tryAgain: true}},
		{"-MOVED\r\n", false, redirect{}},
		{"-ASK\r\n", false, redirect{}},
		{"-MOVED 1 x\r\n", false, redirect{}},
		{"-MOVED 99999 127.0.0.1:1\r\n", false, redirect{}},
		{"-MOVED -1 127.0.0.1:1\r\n", false, redirect{}},
		{"-MOVED 1 127.0.0.1:0\r\n", false, redirect{}},
		{"-MOVED 1 127.0.0.1:1 extra\r\n", false, redirect{}},
		{"-ERR MOVED 1 127.0.0.1:1\r\n", false, redirect{}},
		{"+MOVED 1 127.0.0.1:1\r\n", false, redirect{}},
		{"-TRYAGAINX\r\n", false, redirect{}},
		{"-TRYAGAIN x\r\n", false, redirect{}},
		{"-TRYAGAIN\r\n", false, redirect{}},
	}
	for _, tt := range tests {
		got, ok := parseRedirect([]byte(tt.in), "10.0.0.9:6379")
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseRedirect(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
