package resp

import (
	"bytes"
	"testing"
)

// fuzzLimits are the limit sets every input is parsed under: the defaults, and small ones so
// that the fuzzer reaches every limit with short inputs.
var fuzzLimits = []Limits{
	DefaultLimits,
	{MaxArgs: 8, MaxBulk: 64, MaxInline: 32, MaxQuery: 256, Inline: true},
	{MaxArgs: 3, MaxBulk: 16, MaxInline: 8, MaxQuery: 4096, Inline: false},
}

// splitReader hands data out in chunks whose sizes are read cyclically from splits (a byte b
// gives b+1 bytes), so the fuzzer chooses the split points.
func splitReader(data, splits []byte) *chunkReader {
	i := 0
	return &chunkReader{data: data, next: func() int {
		if len(splits) == 0 {
			return 1
		}
		n := int(splits[i%len(splits)]) + 1
		i++
		return n
	}}
}

// FuzzReader parses data whole and split at fuzzer-chosen points, and checks that the reader
// never panics, never consumes more than it was given, returns only non-empty commands whose Raw
// bytes re-parse to the same arguments, and reaches the same result however the input was split.
func FuzzReader(f *testing.F) {
	// More seeds live in testdata/fuzz/FuzzReader.
	f.Add([]byte("*1\r\n$4\r\nPING\r\n"), []byte{})
	f.Add([]byte("SET k v\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), []byte{3, 0, 7})
	f.Fuzz(func(t *testing.T, data, splits []byte) {
		for li, lim := range fuzzLimits {
			whole := parseWith(wholeReader(data), lim)
			rd := splitReader(data, splits)
			split := parseWith(rd, lim)

			if rd.read > len(data) {
				t.Fatalf("limits %d: read %d bytes of %d", li, rd.read, len(data))
			}
			if !cmdsEqual(whole.cmds, split.cmds) || whole.errText() != split.errText() {
				t.Fatalf("limits %d: result depends on the split points:\nwhole: %q %q\nsplit: %q %q",
					li, whole.cmds, whole.errText(), split.cmds, split.errText())
			}
			for i := range whole.raws {
				if whole.raws[i] != split.raws[i] {
					t.Fatalf("limits %d: Raw %d differs: %q vs %q", li, i, whole.raws[i], split.raws[i])
				}
			}
			if e := split.errText(); len(e) > 5 && e[:5] == "read:" {
				t.Fatalf("limits %d: unexpected read error %v", li, split.err)
			}
			// Bounded memory: the buffer never outgrows the query limit, nor (for these short
			// inputs) a small multiple of the input.
			if maxBuf := max(min(minBuf, lim.MaxQuery), 2*len(data)); whole.maxBuf > maxBuf || split.maxBuf > maxBuf {
				t.Fatalf("limits %d: buffer grew to %d/%d for %d input bytes", li, whole.maxBuf, split.maxBuf, len(data))
			}
			if whole.maxBuf > lim.MaxQuery || split.maxBuf > lim.MaxQuery {
				t.Fatalf("limits %d: buffer %d/%d over MaxQuery %d", li, whole.maxBuf, split.maxBuf, lim.MaxQuery)
			}
			checkCommands(t, data, whole, lim)
		}
	})
}

// checkCommands checks each parsed command against the input it came from.
func checkCommands(t *testing.T, data []byte, p parsed, lim Limits) {
	t.Helper()
	off, rawTotal := 0, 0
	for i, args := range p.cmds {
		if len(args) == 0 {
			t.Fatalf("command %d has no arguments", i)
		}
		// Parse -> encode -> parse gives the same arguments.
		canon := enc(args...)
		again := parseWith(wholeReader([]byte(canon)), lim)
		raw := p.raws[i]
		if raw == "" {
			// Inline: its arguments survive re-encoding unless an argument is over MaxBulk
			// (the inline path is bounded by MaxInline instead).
			if again.errText() == "" && (len(again.cmds) != 1 || !cmdsEqual(again.cmds, [][]string{args})) {
				t.Fatalf("inline command %d %q re-encodes to %q", i, args, again.cmds)
			}
			continue
		}
		if len(args) > lim.MaxArgs {
			t.Fatalf("command %d has %d arguments, over MaxArgs", i, len(args))
		}
		for _, a := range args {
			if len(a) > lim.MaxBulk {
				t.Fatalf("command %d: argument of %d bytes over MaxBulk", i, len(a))
			}
		}
		// Multibulk: Raw is exactly the canonical encoding, taken from the input in order.
		if raw != canon {
			t.Fatalf("command %d: Raw %q, canonical %q", i, raw, canon)
		}
		at := bytes.Index(data[off:], []byte(raw))
		if at < 0 {
			t.Fatalf("command %d: Raw %q is not in the input after offset %d", i, raw, off)
		}
		off += at + len(raw)
		rawTotal += len(raw)
		if again.errText() != "" || len(again.cmds) != 1 || !cmdsEqual(again.cmds, [][]string{args}) || again.raws[0] != raw {
			t.Fatalf("command %d: Raw %q re-parses to %q %q", i, raw, again.cmds, again.errText())
		}
	}
	if rawTotal > len(data) {
		t.Fatalf("Raw bytes %d exceed the input %d", rawTotal, len(data))
	}
}
