package resp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"runtime"
	"strings"
	"testing"
)

// ---- input splitters ----

// chunkReader hands out data in chunks whose sizes come from next (never 0 bytes with a nil
// error), then io.EOF.
type chunkReader struct {
	data []byte
	next func() int
	read int // bytes handed out so far
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := max(c.next(), 1)
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	c.read += n
	return n, nil
}

func wholeReader(b []byte) *chunkReader {
	return &chunkReader{data: b, next: func() int { return len(b) }}
}

func byteReader(b []byte) *chunkReader {
	return &chunkReader{data: b, next: func() int { return 1 }}
}

func randomReader(b []byte, seed int64) *chunkReader {
	rng := rand.New(rand.NewSource(seed))
	return &chunkReader{data: b, next: func() int { return 1 + rng.Intn(64) }}
}

// scriptReader returns exactly the given chunks, one per Read (a chunk larger than the buffer
// is split), then io.EOF.
type scriptReader struct {
	chunks [][]byte
	// onNext, when set, is called before a Read starts handing out a new chunk, and at EOF.
	onNext func()
	inMid  bool
}

func (s *scriptReader) Read(p []byte) (int, error) {
	for len(s.chunks) > 0 && len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
		s.inMid = false
	}
	if s.onNext != nil && !s.inMid {
		s.onNext()
	}
	s.inMid = true
	if len(s.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	return n, nil
}

// ---- result collection ----

type parsed struct {
	cmds [][]string // args of every command, in order
	raws []string   // Raw of every command ("" for inline)
	err  error      // the error that ended parsing (io.EOF at a clean end)
	// maxBuf is the largest buffer the reader held when ReadBatch returned.
	maxBuf int
}

// errText is "" for a clean EOF, the protocol error's message, or "read: <err>".
func (p parsed) errText() string {
	var pe *ProtocolError
	switch {
	case p.err == nil || errors.Is(p.err, io.EOF):
		return ""
	case errors.As(p.err, &pe):
		return pe.Msg
	default:
		return "read: " + p.err.Error()
	}
}

// parseWith runs ReadBatch until it fails, copying every command out of the reader's buffer.
func parseWith(rd io.Reader, lim Limits) parsed {
	r := NewReader(rd, lim)
	var out parsed
	for i := 0; ; i++ {
		cmds, err := r.ReadBatch()
		out.maxBuf = max(out.maxBuf, cap(r.buf))
		for _, c := range cmds {
			args := make([]string, len(c.Args))
			for j, a := range c.Args {
				args[j] = string(a)
			}
			out.cmds = append(out.cmds, args)
			out.raws = append(out.raws, string(c.Raw))
		}
		if err != nil {
			out.err = err
			return out
		}
		if i > 1<<24 {
			panic("ReadBatch does not terminate")
		}
	}
}

func parseString(s string) parsed { return parseWith(wholeReader([]byte(s)), DefaultLimits) }

func enc(args ...string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&sb, "$%d\r\n%s\r\n", len(a), a)
	}
	return sb.String()
}

func cmdsEqual(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				return false
			}
		}
	}
	return true
}

type readerCase struct {
	name string
	in   string
	want [][]string // commands returned before the end
	err  string     // "" = clean EOF, else the ProtocolError message
}

// check parses tc.in whole, one byte per Read and in random chunks, and expects the same
// outcome from each.
func (tc readerCase) check(t *testing.T, lim Limits) {
	t.Helper()
	in := []byte(tc.in)
	runs := map[string]*chunkReader{
		"whole":  wholeReader(in),
		"bytes":  byteReader(in),
		"random": randomReader(in, int64(len(in))),
	}
	for how, rd := range runs {
		got := parseWith(rd, lim)
		if !cmdsEqual(got.cmds, tc.want) {
			t.Errorf("%s (%s): commands = %q, want %q", tc.name, how, got.cmds, tc.want)
		}
		if got.errText() != tc.err {
			t.Errorf("%s (%s): error = %q (%v), want %q", tc.name, how, got.errText(), got.err, tc.err)
		}
		if got.err != nil && !errors.Is(got.err, io.EOF) && !IsProtocolError(got.err) {
			t.Errorf("%s (%s): unexpected error type %T", tc.name, how, got.err)
		}
	}
}

func cmds(c ...[]string) [][]string { return c }
func args(a ...string) []string     { return a }

var ping = args("PING")

// ---- canonical multibulk ----

func TestReaderMultibulk(t *testing.T) {
	big := strings.Repeat("v", 100_000)
	for _, tc := range []readerCase{
		{"single", enc("PING"), cmds(ping), ""},
		{"set", enc("SET", "k", "v"), cmds(args("SET", "k", "v")), ""},
		{"pipelined", enc("SET", "k", "v") + enc("GET", "k") + enc("PING"),
			cmds(args("SET", "k", "v"), args("GET", "k"), ping), ""},
		{"binary arg", enc("SET", "k\r\n\x00*$", "\r\n"), cmds(args("SET", "k\r\n\x00*$", "\r\n")), ""},
		{"empty args", "*3\r\n$0\r\n\r\n$0\r\n\r\n$1\r\nx\r\n", cmds(args("", "", "x")), ""},
		{"empty command name", "*1\r\n$0\r\n\r\n", cmds(args("")), ""},
		{"big value", enc("SET", "k", big), cmds(args("SET", "k", big)), ""},
		{"incomplete header at EOF", "*2\r\n$3\r\nGET\r\n$1\r", nil, ""},
		{"incomplete after complete", enc("PING") + "*1\r\n$4\r\nPI", cmds(ping), ""},
		{"mixed inline and multibulk", "PING\r\n" + enc("ECHO", "a") + "ECHO b\n",
			cmds(ping, args("ECHO", "a"), args("ECHO", "b")), ""},
		{"max args", "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", cmds(args("a", "b", "c")), ""},
	} {
		tc.check(t, DefaultLimits)
	}
}

func TestReaderSplitAtEveryBoundary(t *testing.T) {
	in := enc("SET", "key", "value") + enc("GET", "key") + "*-1\r\n*0\r\n" + "PING\r\n" + enc("ECHO", "x\r\ny") + "\r\n" + enc("", "")
	want := parseString(in)
	if want.errText() != "" || len(want.cmds) != 5 {
		t.Fatalf("whole parse: %q %v", want.cmds, want.err)
	}
	for i := 0; i <= len(in); i++ {
		for j := i; j <= len(in); j += 7 {
			rd := &scriptReader{chunks: [][]byte{[]byte(in[:i]), []byte(in[i:j]), []byte(in[j:])}}
			got := parseWith(rd, DefaultLimits)
			if !cmdsEqual(got.cmds, want.cmds) || got.errText() != "" {
				t.Fatalf("split at %d,%d: %q %v, want %q", i, j, got.cmds, got.err, want.cmds)
			}
		}
	}
	got := parseWith(byteReader([]byte(in)), DefaultLimits)
	if !cmdsEqual(got.cmds, want.cmds) {
		t.Fatalf("byte at a time: %q", got.cmds)
	}
	for seed := int64(0); seed < 200; seed++ {
		got := parseWith(randomReader([]byte(in), seed), DefaultLimits)
		if !cmdsEqual(got.cmds, want.cmds) || got.errText() != "" {
			t.Fatalf("random chunks (seed %d): %q %v", seed, got.cmds, got.err)
		}
	}
}

func TestReaderRawEqualsInput(t *testing.T) {
	parts := []string{enc("SET", "k", "v"), enc("GET", "k"), enc("ECHO", "\r\n"), enc(""), enc("MSET", "a", "1", "b", strings.Repeat("x", 10000))}
	in := strings.Join(parts, "")
	for _, rd := range []*chunkReader{wholeReader([]byte(in)), byteReader([]byte(in)), randomReader([]byte(in), 1)} {
		got := parseWith(rd, DefaultLimits)
		if len(got.raws) != len(parts) {
			t.Fatalf("got %d commands, want %d", len(got.raws), len(parts))
		}
		for i := range parts {
			if got.raws[i] != parts[i] {
				t.Errorf("Raw[%d] = %q, want %q", i, got.raws[i], parts[i])
			}
		}
	}
	// Inline commands have no Raw.
	got := parseString("SET k v\r\n")
	if len(got.raws) != 1 || got.raws[0] != "" {
		t.Errorf("inline Raw = %q, want empty", got.raws)
	}
}

// ---- inline commands (sdssplitargs, checked against valkey-server 8.0.1) ----

func TestReaderInline(t *testing.T) {
	for _, tc := range []readerCase{
		{"plain", "SET a b\r\n", cmds(args("SET", "a", "b")), ""},
		{"LF only", "SET a b\n", cmds(args("SET", "a", "b")), ""},
		{"extra blanks", "  SET \t a   b  \r\n", cmds(args("SET", "a", "b")), ""},
		{"double quoted", `SET "a b" c` + "\r\n", cmds(args("SET", "a b", "c")), ""},
		{"empty quoted", `SET "" ''` + "\r\n", cmds(args("SET", "", "")), ""},
		{"hex escape", `ECHO "\x41\x4a\x4A"` + "\r\n", cmds(args("ECHO", "AJJ")), ""},
		{"bad hex escape", `ECHO "\xZZ"` + "\r\n", cmds(args("ECHO", "xZZ")), ""},
		{"short hex escape", `ECHO "A\x41\x4"` + "\r\n", cmds(args("ECHO", "AAx4")), ""},
		{"escapes", `ECHO "\n\r\t\b\a\\\"\q"` + "\r\n", cmds(args("ECHO", "\n\r\t\b\a\\\"q")), ""},
		{"binary via hex", `SET k "\x00\xff"` + "\r\n", cmds(args("SET", "k", "\x00\xff")), ""},
		{"single quoted", `ECHO 'a "b" \n'` + "\r\n", cmds(args("ECHO", `a "b" \n`)), ""},
		{"single quote escape", `ECHO 'it\'s'` + "\r\n", cmds(args("ECHO", "it's")), ""},
		{"doubled single quote", `ECHO 'it''s'` + "\r\n", nil, "unbalanced quotes in request"},
		{"quote inside word", `ECHO a"b c"` + "\r\n", cmds(args("ECHO", "ab c")), ""},
		{"quote then word", `ECHO "a"b` + "\r\n", nil, "unbalanced quotes in request"},
		{"single quote then word", `ECHO 'a'b` + "\r\n", nil, "unbalanced quotes in request"},
		{"unterminated double", `ECHO "abc` + "\r\n", nil, "unbalanced quotes in request"},
		{"unterminated single", `ECHO 'abc` + "\r\n", nil, "unbalanced quotes in request"},
		{"trailing backslash", `ECHO "abc\` + "\r\n", nil, "unbalanced quotes in request"},
		{"escaped closing quote", `ECHO "abc\"` + "\r\n", nil, "unbalanced quotes in request"},
		{"protocol.tcl unbalanced number of quotes", `set """test-key""" test-value` + "\r\nping\r\n", nil, "unbalanced quotes in request"},
		// Valkey 8.0 rejects this; newer Valkey (protocol.tcl "Mixing quoted and unquoted
		// strings") accepts it as SET test-key test-value. The reader follows 8.0.
		{"protocol.tcl mixing quoted and unquoted", `set """tes"t-'k'e"y" "test"'-'value` + "\r\n", nil, "unbalanced quotes in request"},
		{"protocol.tcl unbalanced single quotes", "set foo 'b'a'r\r\nping\r\n", nil, "unbalanced quotes in request"},
		{"protocol.tcl unbalanced double quotes", "set foo \"b\"a\"r\r\nping\r\n", nil, "unbalanced quotes in request"},
		{"commands before the bad line are kept", "PING\r\nECHO \"x\r\nPING\r\n", cmds(ping), "unbalanced quotes in request"},
		{"vertical tab and form feed inside a word", "ECHO a\vb c\fd\r\n", cmds(args("ECHO", "a\vb", "c\fd")), ""},
		{"vertical tab after a closing quote", "ECHO \"a\"\vb\r\n", cmds(args("ECHO", "a", "b")), ""},
		{"blank lines", "\r\n\n \r\n\t\v\f\r\nPING\r\n", cmds(ping), ""},
		{"protocol.tcl empty query", "\r\n" + enc("ping"), cmds(args("ping")), ""},
		{"CR splits words", "PING\rECHO\r\n", cmds(args("PING", "ECHO")), ""},
		{"dollar is inline", "$4\r\nPING\r\n", cmds(args("$4"), ping), ""},
		{"colon is inline", ":1\r\n", cmds(args(":1")), ""},
		{"incomplete line at EOF", "PING", nil, ""},
		{"line at the limit", strings.Repeat("a", 64<<10-1) + "\n", cmds(args(strings.Repeat("a", 64<<10-1))), ""},
		{"line over the limit", strings.Repeat("a", 64<<10) + "\n", nil, "too big inline request"},
		{"64 KiB without newline", strings.Repeat("A", 64<<10), nil, "too big inline request"},
		{"1 MiB without newline", strings.Repeat("A", 1<<20), nil, "too big inline request"},
		{"HTTP", "POST / HTTP/1.1\r\nHost: x\r\n\r\n", cmds(args("POST", "/", "HTTP/1.1"), args("Host:", "x")), ""},
	} {
		tc.check(t, DefaultLimits)
	}
}

func TestReaderInlineDisabled(t *testing.T) {
	lim := DefaultLimits
	lim.Inline = false
	readerCase{"inline off", enc("PING") + "PING\r\n", cmds(ping), "inline commands are disabled"}.check(t, lim)
	// The size limit still applies to a line that never ends.
	readerCase{"inline off, no newline", strings.Repeat("A", 64<<10), nil, "too big inline request"}.check(t, lim)
}

// ---- every case of Valkey's tests/unit/protocol.tcl that concerns the request parser ----

func TestReaderProtocolTcl(t *testing.T) {
	const set = "*3\r\n$3\r\nSET\r\n$1\r\nx\r\n"
	for _, tc := range []readerCase{
		{"handle an empty query", "\r\n" + enc("PING"), cmds(ping), ""},
		{"negative multibulk length", "*-10\r\n" + enc("PING"), cmds(ping), ""},
		{"negative multibulk length in pipeline", "*-10\r\n*1\r\n$4\r\nping\r\n", cmds(args("ping")), ""},
		{"zero-length multibulk", "*0\r\nPING\r\n", cmds(ping), ""},
		{"*-1", "*-1\r\nPING\r\n", cmds(ping), ""},
		{"out of range multibulk length", "*3000000000\r\n", nil, "invalid multibulk length"},
		{"old out of range multibulk length", "*20000000\r\n", nil, "invalid multibulk length"},
		{"wrong multibulk payload header", set + "fooz\r\n", nil, "expected '$', got 'f'"},
		{"negative multibulk payload length", set + "$-10\r\n", nil, "invalid bulk length"},
		{"out of range multibulk payload length", set + "$2000000000\r\n", nil, "invalid bulk length"},
		{"non-number multibulk payload length", set + "$blabla\r\n", nil, "invalid bulk length"},
		{"multi bulk request not followed by bulk arguments", "*1\r\nfoo\r\n", nil, "expected '$', got 'f'"},
		{"generic wrong number of args parses", enc("ping", "x", "y", "z"), cmds(args("ping", "x", "y", "z")), ""},
		// Check CRLF when parsing the querybuf (newer Valkey says "invalid CRLF in request" where
		// this reader says "invalid multibulk length" / "invalid bulk length" / "invalid bulk
		// terminator"; Valkey 8.0 does not check the bulk terminator at all).
		{"crlf: multibulk len x\\n", "*3x\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid multibulk length"},
		{"crlf: multibulk len \\rx", "*3\rx$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid multibulk length"},
		{"crlf: multibulk len xx", "*3xx$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid multibulk length"},
		{"crlf: bulk len x\\n", "*3\r\n$3x\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk length"},
		{"crlf: bulk len \\rx", "*3\r\n$3\rxSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk length"},
		{"crlf: bulk len xx", "*3\r\n$3xxSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk length"},
		{"crlf: SET\\rx", "*3\r\n$3\r\nSET\rx$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: SETx\\n", "*3\r\n$3\r\nSETx\n$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: SETxx", "*3\r\n$3\r\nSETxx$3\r\nkey\r\n$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: keyx\\n", "*3\r\n$3\r\nSET\r\n$3\r\nkeyx\n$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: key\\rx", "*3\r\n$3\r\nSET\r\n$3\r\nkey\rx$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: keyxx", "*3\r\n$3\r\nSET\r\n$3\r\nkeyxx$5\r\nvalue\r\n", nil, "invalid bulk terminator"},
		{"crlf: bulk len 5x\\n", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5x\nvalue\r\n", nil, "invalid bulk length"},
		{"crlf: bulk len 5\\rx", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\rxvalue\r\n", nil, "invalid bulk length"},
		{"crlf: bulk len 5xx", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5xxvalue\r\n", nil, "invalid bulk length"},
		{"crlf: valuex\\n", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvaluex\n", nil, "invalid bulk terminator"},
		{"crlf: value\\rx", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\rx", nil, "invalid bulk terminator"},
		{"crlf: valuexx", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvaluexx", nil, "invalid bulk terminator"},
		{"crlf: good", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", cmds(args("SET", "key", "value")), ""},
		// Protocol desync regression tests: each prefix followed by 64 KiB and more of 'A'.
		{"desync \\x00", "\x00" + strings.Repeat("A", 70<<10), nil, "too big inline request"},
		{"desync *\\x00", "*\x00" + strings.Repeat("A", 70<<10), nil, "too big mbulk count string"},
		{"desync $\\x00", "$\x00" + strings.Repeat("A", 70<<10), nil, "too big inline request"},
		{"desync *1 $\\x00", "*1\r\n$\x00" + strings.Repeat("A", 70<<10), nil, "too big bulk count string"},
		{"regression: blocking ops pipelined", enc("BLPOP", "nolist", "0") + enc("BLPOP", "nolist", "0"),
			cmds(args("BLPOP", "nolist", "0"), args("BLPOP", "nolist", "0")), ""},
	} {
		tc.check(t, DefaultLimits)
	}
}

// ---- P4: integer edge cases; P5: request depth 1 ----

func TestReaderIntegerEdgeCases(t *testing.T) {
	for _, tc := range []readerCase{
		{"bulk int64 max", "*1\r\n$9223372036854775807\r\n", nil, "invalid bulk length"},
		{"bulk int64 max + 1", "*1\r\n$9223372036854775808\r\n", nil, "invalid bulk length"},
		{"bulk uint64 max", "*1\r\n$18446744073709551615\r\n", nil, "invalid bulk length"},
		{"bulk int32 max + 1", "*1\r\n$2147483648\r\n", nil, "invalid bulk length"},
		{"bulk over max-bulk", "*1\r\n$536870913\r\n", nil, "invalid bulk length"},
		{"multibulk int64 max + 1", "*9223372036854775808\r\n", nil, "invalid multibulk length"},
		{"multibulk int64 max", "*9223372036854775807\r\n", nil, "invalid multibulk length"},
		{"multibulk 9e18", "*9000000000000000000\r\n", nil, "invalid multibulk length"},
		{"multibulk over max-args", "*1048577\r\n", nil, "invalid multibulk length"},
		{"multibulk 20 digits", "*12345678901234567890\r\n", nil, "invalid multibulk length"},
		{"bulk 20 digits", "*1\r\n$12345678901234567890\r\n", nil, "invalid bulk length"},
		{"multibulk 40 digits", "*" + strings.Repeat("9", 40) + "\r\n", nil, "invalid multibulk length"},
		{"bulk plus sign", "*1\r\n$+5\r\nhello\r\n", nil, "invalid bulk length"},
		{"multibulk plus sign", "*+1\r\n$4\r\nPING\r\n", nil, "invalid multibulk length"},
		{"bulk minus zero", "*1\r\n$-0\r\n\r\n", nil, "invalid bulk length"},
		{"multibulk minus zero", "*-0\r\n", nil, "invalid multibulk length"},
		{"bulk minus one", "*1\r\n$-1\r\n", nil, "invalid bulk length"},
		{"bulk minus only", "*1\r\n$-\r\n", nil, "invalid bulk length"},
		{"bulk empty length", "*1\r\n$\r\n", nil, "invalid bulk length"},
		{"multibulk empty length", "*\r\n", nil, "invalid multibulk length"},
		{"multibulk leading zero", "*01\r\n$4\r\nPING\r\n", nil, "invalid multibulk length"},
		{"bulk leading zero", "*1\r\n$04\r\nPING\r\n", nil, "invalid bulk length"},
		{"bulk space", "*1\r\n$ 4\r\nPING\r\n", nil, "invalid bulk length"},
		{"bulk hex", "*1\r\n$0x4\r\nPING\r\n", nil, "invalid bulk length"},
		// Valkey (string2ll) accepts LLONG_MIN and ignores the request as a negative count; the
		// reader refuses it. Stricter, and harmless.
		{"multibulk int64 min", "*-9223372036854775808\r\n", nil, "invalid multibulk length"},
		{"multibulk int64 min - 1", "*-9223372036854775809\r\n", nil, "invalid multibulk length"},
		{"multibulk int32 min", "*-2147483648\r\nPING\r\n", cmds(ping), ""},
		{"bulk max-bulk exactly waits", "*1\r\n$536870912\r\n", nil, ""},
		{"too big mbulk count string", "*" + strings.Repeat("1", 64<<10), nil, "too big mbulk count string"},
		{"too big bulk count string", "*1\r\n$" + strings.Repeat("1", 64<<10), nil, "too big bulk count string"},
		{"long count line below the limit waits", "*" + strings.Repeat("1", 64<<10-1), nil, ""},
	} {
		tc.check(t, DefaultLimits)
	}
}

func TestReaderNestedRejected(t *testing.T) {
	for _, tc := range []readerCase{
		{"nested array", "*1\r\n*1\r\n$4\r\nPING\r\n", nil, "expected '$', got '*'"},
		{"nested header only", "*1\r\n*1\r\n", nil, "expected '$', got '*'"},
		{"integer item", "*1\r\n:1\r\n", nil, "expected '$', got ':'"},
		{"simple string item", "*1\r\n+OK\r\n", nil, "expected '$', got '+'"},
		{"resp3 null item", "*1\r\n_\r\n", nil, "expected '$', got '_'"},
		{"resp3 map item", "*1\r\n%1\r\n", nil, "expected '$', got '%'"},
		{"nested after a valid arg", "*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n", nil, "expected '$', got '*'"},
		{"rejected before the line ends", "*1\r\n*", nil, "expected '$', got '*'"},
		{"deep nesting", "*1\r\n" + strings.Repeat("*1\r\n", 100000), nil, "expected '$', got '*'"},
		// The offending byte is sent raw, as Valkey does (not UTF-8 encoded).
		{"high byte", "*1\r\n\x80\r\n", nil, "expected '$', got '\x80'"},
		{"CR byte", "*1\r\n\r\n", nil, "expected '$', got '\r'"},
	} {
		tc.check(t, DefaultLimits)
	}
}

// ---- limits ----

func TestReaderLimits(t *testing.T) {
	small := Limits{MaxArgs: 3, MaxBulk: 10, MaxInline: 16, MaxQuery: 64, Inline: true}
	for _, tc := range []readerCase{
		{"args at limit", enc("a", "b", "c"), cmds(args("a", "b", "c")), ""},
		{"args over limit", enc("a", "b", "c", "d"), nil, "invalid multibulk length"},
		{"bulk at limit", enc("0123456789"), cmds(args("0123456789")), ""},
		{"bulk over limit", enc("0123456789a"), nil, "invalid bulk length"},
		{"inline at limit", "0123456789abcde\n", cmds(args("0123456789abcde")), ""},
		{"inline over limit", "0123456789abcdef\n", nil, "too big inline request"},
		{"count line over limit", "*" + strings.Repeat("1", 16), nil, "too big mbulk count string"},
		{"under the query buffer limit", "*3\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$1\r\nx\r\n",
			cmds(args("0123456789", "0123456789", "x")), ""},
	} {
		tc.check(t, small)
	}
	small.MaxArgs = 5
	d := "$10\r\n0123456789\r\n"
	readerCase{"query buffer limit", "*5\r\n" + d + d + d + d, nil, "query buffer limit exceeded"}.check(t, small)
	readerCase{"query buffer limit, big buffer", "*5\r\n" + d + d + d + d + d, nil, "query buffer limit exceeded"}.check(t,
		Limits{MaxArgs: 5, MaxBulk: 10, MaxInline: 16, MaxQuery: 64, Inline: true})
	lim := DefaultLimits
	lim.MaxQuery = 100 << 10
	readerCase{"query buffer limit while the buffer grows", enc("SET", "k", strings.Repeat("x", 200<<10)), nil, "query buffer limit exceeded"}.check(t, lim)

	// Zero fields take the defaults.
	r := NewReader(wholeReader(nil), Limits{Inline: true})
	if r.lim.MaxArgs != DefaultLimits.MaxArgs || r.lim.MaxBulk != DefaultLimits.MaxBulk ||
		r.lim.MaxInline != DefaultLimits.MaxInline || r.lim.MaxQuery != DefaultLimits.MaxQuery {
		t.Errorf("defaults not applied: %+v", r.lim)
	}
}

func TestReaderBigBulkManyReads(t *testing.T) {
	val := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	in := append([]byte(enc("SET", "k", string(val))), enc("GET", "k")...)
	for _, rd := range []*chunkReader{
		{data: in, next: func() int { return 1000 }},
		randomReader(in, 7),
		{data: in, next: func() int { return 1 << 30 }},
	} {
		r := NewReader(rd, DefaultLimits)
		var got [][]string
		reads := 0
		for {
			cs, err := r.ReadBatch()
			reads++
			for _, c := range cs {
				a := make([]string, len(c.Args))
				for i := range c.Args {
					a[i] = string(c.Args[i])
				}
				got = append(got, a)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				break
			}
		}
		if len(got) != 2 || got[0][2] != string(val) || got[1][1] != "k" {
			t.Fatalf("big bulk: got %d commands", len(got))
		}
	}
}

func TestReaderErrorsAfterCompleteCommands(t *testing.T) {
	// Complete commands before a protocol error are returned with it.
	r := NewReader(wholeReader([]byte(enc("PING")+enc("ECHO", "a")+"*1\r\nfoo\r\n")), DefaultLimits)
	cs, err := r.ReadBatch()
	if len(cs) != 2 || !IsProtocolError(err) {
		t.Fatalf("got %d commands, err %v", len(cs), err)
	}
	// A read error is passed through; commands already complete come first.
	boom := errors.New("boom")
	r = NewReader(io.MultiReader(strings.NewReader(enc("PING")+"*1\r\n"), errReader{boom}), DefaultLimits)
	cs, err = r.ReadBatch()
	if len(cs) != 1 || err != nil {
		t.Fatalf("first batch: %d commands, err %v", len(cs), err)
	}
	if _, err = r.ReadBatch(); !errors.Is(err, boom) {
		t.Fatalf("second batch: err %v, want boom", err)
	}
	// A reader that makes no progress does not spin.
	r = NewReader(zeroReader{}, DefaultLimits)
	if _, err = r.ReadBatch(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("zero reader: %v", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestProtocolErrorText(t *testing.T) {
	err := error(&ProtocolError{Msg: "invalid bulk length"})
	if err.Error() != "Protocol error: invalid bulk length" {
		t.Errorf("Error() = %q", err.Error())
	}
	if !IsProtocolError(fmt.Errorf("wrapped: %w", err)) || IsProtocolError(io.EOF) {
		t.Error("IsProtocolError")
	}
}

// ---- memory ----

// allocDuring reports the bytes allocated by f.
func allocDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestReaderDeclaredSizesAllocateNothing(t *testing.T) {
	for _, in := range []string{
		"*1048576\r\n",
		"*1\r\n$536870912\r\n",
		"*1048576\r\n$536870912\r\n",
		"*1048576\r\n$536870912\r\n" + strings.Repeat("x", 1000),
		"*2000000000\r\n",
		"*1\r\n$1073741824\r\n",
	} {
		var err error
		n := allocDuring(func() {
			r := NewReader(wholeReader([]byte(in)), DefaultLimits)
			for err == nil {
				_, err = r.ReadBatch()
			}
		})
		if n >= 1<<20 {
			t.Errorf("%q: allocated %d bytes", in[:min(len(in), 30)], n)
		}
		t.Logf("%q: %d bytes allocated, ended with %v", in[:min(len(in), 30)], n, err)
	}
	// Per command: a declared 1M-arg header costs the same as a small one.
	hdr := []byte("*1048576\r\n")
	allocs := testing.AllocsPerRun(100, func() {
		r := NewReader(wholeReader(hdr), DefaultLimits)
		_, _ = r.ReadBatch()
	})
	if allocs > 10 {
		t.Errorf("*1048576 header: %.0f allocations per run", allocs)
	}
}

// TestReaderBufferShrinks checks that the memory a large command needed is given back once it
// has been handled, also when more requests follow it in the same read.
func TestReaderBufferShrinks(t *testing.T) {
	big := enc("SET", "k", strings.Repeat("x", 4<<20))
	many := "*100000\r\n" + strings.Repeat("$1\r\na\r\n", 100000)
	for _, tc := range []struct {
		name   string
		chunks []string
		n      int
	}{
		{"big bulk alone", []string{big, enc("PING")}, 2},
		{"big bulk then partial command", []string{big + "*1\r\n$4\r\nPI", "NG\r\n"}, 2},
		{"big bulk then pipeline", []string{big + enc("PING") + "*1\r\n", "$4\r\nPING\r\n"}, 3},
		{"big inline pipeline", []string{big + strings.Repeat("PING\n", 10000) + "PI", "NG\n"}, 10002},
		{"many args", []string{many, enc("PING")}, 2},
		{"many args then partial command", []string{many + "*1\r\n$4", "\r\nPING\r\n"}, 2},
		{"many args then partial big command", []string{many + "*2000\r\n$4", "\r\nPING\r\n" + strings.Repeat("$1\r\na\r\n", 1999)}, 2},
	} {
		sr := &scriptReader{}
		for _, c := range tc.chunks {
			sr.chunks = append(sr.chunks, []byte(c))
		}
		r := NewReader(sr, DefaultLimits)
		// held is what the reader keeps while it waits for the network: measured before each
		// new chunk after the first (the big one) and at EOF.
		held, reads := 0, 0
		sr.onNext = func() {
			reads++
			if reads > 1 {
				held = max(held, cap(r.buf)+8*cap(r.argOffs)+24*cap(r.batchArgs)+48*cap(r.batch))
			}
		}
		var n int
		var err error
		for err == nil {
			var cs []Command
			cs, err = r.ReadBatch()
			n += len(cs)
		}
		if n != tc.n || !errors.Is(err, io.EOF) {
			t.Fatalf("%s: %d commands, %v", tc.name, n, err)
		}
		if held > 256<<10 {
			t.Errorf("%s: reader still holds %d bytes (buf %d, argOffs %d, batchArgs %d, batch %d)",
				tc.name, held, cap(r.buf), cap(r.argOffs), cap(r.batchArgs), cap(r.batch))
		}
	}
}

// TestReaderPipelineBatchBounded checks that one ReadBatch does not turn a huge buffered
// pipeline into an unbounded slice of commands.
func TestReaderPipelineBatchBounded(t *testing.T) {
	// A 2 MiB bulk grows the buffer to 4 MiB; the read that completes it also brings ~2 MiB of
	// one-byte inline commands.
	in := enc("SET", "k", strings.Repeat("x", 2<<20)) + strings.Repeat("a\n", 1<<20)
	r := NewReader(wholeReader([]byte(in)), DefaultLimits)
	total, maxBatch := 0, 0
	for {
		cs, err := r.ReadBatch()
		total += len(cs)
		maxBatch = max(maxBatch, len(cs))
		if err != nil {
			break
		}
	}
	if total != 1<<20+1 {
		t.Fatalf("got %d commands, want %d", total, 1<<20+1)
	}
	if maxBatch > 4096 {
		t.Errorf("largest batch: %d commands", maxBatch)
	}
}

// TestReaderFeed checks bytes handed back with Feed: commands already returned stay valid, and
// the fed bytes are parsed before anything more is read, also after a large command.
func TestReaderFeed(t *testing.T) {
	big := enc("SET", "k", strings.Repeat("x", 1<<20))
	for _, first := range []string{enc("GET", "k"), big, big + "*2\r\n$4\r\nECHO\r\n$1\r\n"} {
		r := NewReader(&scriptReader{chunks: [][]byte{[]byte(first), []byte(enc("PING"))}}, DefaultLimits)
		cs, err := r.ReadBatch()
		if err != nil || len(cs) != 1 {
			t.Fatalf("first batch: %d, %v", len(cs), err)
		}
		keep := string(cs[0].Raw)
		r.Feed([]byte("a\r\n" + enc("ECHO", "b")))
		if string(cs[0].Raw) != keep {
			t.Fatal("Feed moved a returned command")
		}
		var got [][]string
		for err == nil {
			cs, err = r.ReadBatch()
			for _, c := range cs {
				a := make([]string, len(c.Args))
				for i := range c.Args {
					a[i] = string(c.Args[i])
				}
				got = append(got, a)
			}
		}
		var want [][]string
		if strings.HasSuffix(first, "$1\r\n") {
			want = cmds(args("ECHO", "a"), args("ECHO", "b"), ping)
		} else {
			// "a\r\n" alone is an inline command.
			want = cmds(args("a"), args("ECHO", "b"), ping)
		}
		if !cmdsEqual(got, want) || !errors.Is(err, io.EOF) {
			t.Errorf("after Feed: %q, %v; want %q", got, err, want)
		}
	}
}
