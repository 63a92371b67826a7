package resp

import (
	"bytes"
	"errors"
	"io"
)

// Limits bound what one client may send. Zero fields take the defaults of DefaultLimits.
type Limits struct {
	// MaxArgs is the largest multibulk length accepted (Valkey: INT_MAX; default 1,048,576).
	MaxArgs int
	// MaxBulk is the largest single argument in bytes (Valkey's proto-max-bulk-len, 512 MiB).
	MaxBulk int
	// MaxInline is the longest inline request or length line, in bytes (Valkey: 64 KiB).
	MaxInline int
	// MaxQuery is the most bytes one incomplete command may hold in the buffer (1 GiB).
	MaxQuery int
	// Inline allows telnet-style inline commands.
	Inline bool
	// OneAtATime returns a single command per batch, so that limits changed by a command
	// (AUTH lifting the pre-auth limits) apply to the next one, as in Valkey.
	OneAtATime bool
}

// DefaultLimits are at least as strict as Valkey's own.
var DefaultLimits = Limits{
	MaxArgs:   1 << 20,
	MaxBulk:   512 << 20,
	MaxInline: 64 << 10,
	MaxQuery:  1 << 30,
	Inline:    true,
}

func (l Limits) withDefaults() Limits {
	if l.MaxArgs <= 0 {
		l.MaxArgs = DefaultLimits.MaxArgs
	}
	if l.MaxBulk <= 0 {
		l.MaxBulk = DefaultLimits.MaxBulk
	}
	if l.MaxInline <= 0 {
		l.MaxInline = DefaultLimits.MaxInline
	}
	if l.MaxQuery <= 0 {
		l.MaxQuery = DefaultLimits.MaxQuery
	}
	return l
}

// ProtocolError is a request the proxy refuses to parse. The connection must be closed after
// replying "-ERR Protocol error: <Msg>".
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.Msg }

// IsProtocolError reports whether err is a *ProtocolError.
func IsProtocolError(err error) bool {
	var pe *ProtocolError
	return errors.As(err, &pe)
}

// Command is one parsed request. Args[0] is the command name. Raw holds the exact request bytes
// when the client sent canonical multibulk RESP (so it may be forwarded as is); it is nil for
// inline commands.
type Command struct {
	Args [][]byte
	Raw  []byte
}

const (
	minBuf       = 4 << 10
	shrinkAbove  = 64 << 10
	maxPrealloc  = 1024
	maxNumDigits = 19
	// maxBatch caps the commands one ReadBatch returns, so that a large buffer full of tiny
	// pipelined requests does not become an equally large slice of Commands.
	maxBatch = 1024
	// keepArgs is the most batchArgs entries kept between calls.
	keepArgs = 4 * maxPrealloc
)

// Reader parses pipelined requests from one connection.
type Reader struct {
	rd  io.Reader
	lim Limits
	buf []byte
	r   int // start of the first unparsed byte
	w   int // end of data

	// Resumable state of the command being parsed at buf[r:].
	pending   bool  // a multibulk header has been parsed
	argc      int   // declared argument count
	pos       int   // offset from r of the next unparsed element
	argOffs   []int // start,end pairs relative to r, for the args parsed so far
	batch     []Command
	batchArgs [][]byte
}

// NewReader returns a Reader over rd with the given limits.
func NewReader(rd io.Reader, lim Limits) *Reader {
	return &Reader{rd: rd, lim: lim.withDefaults()}
}

// Buffered reports how many bytes have been received but not yet returned as commands.
func (r *Reader) Buffered() int { return r.w - r.r }

// ReadBatch returns the complete commands already received (at most maxBatch of them), reading
// from the connection only when none is complete. The returned slices are valid until the next
// call.
func (r *Reader) ReadBatch() ([]Command, error) {
	r.batch = r.batch[:0]
	r.batchArgs = r.batchArgs[:0]
	if cap(r.batchArgs) > keepArgs {
		r.batchArgs = nil
	}
	if !r.pending && cap(r.argOffs) > 2*maxPrealloc {
		r.argOffs = nil
	}
	if r.r == r.w && !r.pending {
		r.r, r.w = 0, 0
		if cap(r.buf) > shrinkAbove {
			r.buf = nil
		}
	}
	for {
		if err := r.parseAll(); err != nil {
			return r.batch, err
		}
		if len(r.batch) > 0 {
			return r.batch, nil
		}
		if err := r.fill(); err != nil {
			return nil, err
		}
	}
}

// fill makes room and performs one Read.
func (r *Reader) fill() error {
	if r.buf == nil {
		// Never more than MaxQuery: a command larger than that must not fit in one read.
		r.buf = make([]byte, min(minBuf, r.lim.MaxQuery))
	}
	if r.r > 0 {
		n := r.w - r.r
		if len(r.buf) > shrinkAbove && n < len(r.buf)/4 {
			// What a large command needed is given back once it has been handled.
			nb := make([]byte, max(minBuf, 2*n))
			copy(nb, r.buf[r.r:r.w])
			r.buf = nb
		} else {
			copy(r.buf, r.buf[r.r:r.w])
		}
		r.r, r.w = 0, n
	}
	if r.w == len(r.buf) {
		if len(r.buf) >= r.lim.MaxQuery {
			return &ProtocolError{Msg: "query buffer limit exceeded"}
		}
		size := min(len(r.buf)*2, r.lim.MaxQuery)
		nb := make([]byte, size)
		copy(nb, r.buf[:r.w])
		r.buf = nb
	}
	n, err := r.rd.Read(r.buf[r.w:])
	r.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// parseAll appends every complete command in buf[r:w] to the batch.
func (r *Reader) parseAll() error {
	limit := maxBatch
	if r.lim.OneAtATime {
		limit = 1
	}
	for r.r < r.w && len(r.batch) < limit {
		done, err := r.parseOne()
		if err != nil || !done {
			return err
		}
	}
	return nil
}

// parseOne parses at most one command at buf[r:]. It returns done=false when more input is
// needed, keeping its progress for the next call.
func (r *Reader) parseOne() (bool, error) {
	if !r.pending {
		data := r.buf[r.r:r.w]
		if data[0] != '*' {
			return r.parseInline()
		}
		n, next, err := r.parseLength(data, 1, "too big mbulk count string")
		if err != nil || next < 0 {
			return false, err
		}
		if n <= 0 {
			// Like Valkey, an empty or negative multibulk is ignored.
			r.r += next
			return true, nil
		}
		if n > r.lim.MaxArgs {
			return false, &ProtocolError{Msg: "invalid multibulk length"}
		}
		r.pending, r.argc, r.pos = true, n, next
		r.argOffs = r.argOffs[:0]
		if want := 2 * min(n, maxPrealloc); cap(r.argOffs) < want || cap(r.argOffs) > 2*maxPrealloc {
			// Preallocate at most min(n, 1024) like Valkey; drop what a huge command grew.
			r.argOffs = make([]int, 0, want)
		}
	}
	data := r.buf[r.r:r.w]
	for len(r.argOffs) < 2*r.argc {
		if r.pos >= len(data) {
			return false, r.checkIncomplete(len(data))
		}
		if c := data[r.pos]; c != '$' {
			// The byte is quoted raw, as Valkey does (string(rune(c)) would UTF-8 encode it).
			return false, &ProtocolError{Msg: "expected '$', got '" + string(data[r.pos:r.pos+1]) + "'"}
		}
		n, next, err := r.parseLength(data, r.pos+1, "too big bulk count string")
		if err != nil {
			return false, err
		}
		if next < 0 {
			return false, r.checkIncomplete(len(data) - r.pos)
		}
		if n < 0 || n > r.lim.MaxBulk {
			return false, &ProtocolError{Msg: "invalid bulk length"}
		}
		end := next + n
		if end+2 > len(data) {
			return false, r.checkIncomplete(len(data))
		}
		if data[end] != '\r' || data[end+1] != '\n' {
			return false, &ProtocolError{Msg: "invalid bulk terminator"}
		}
		r.argOffs = append(r.argOffs, next, end)
		r.pos = end + 2
	}
	start := len(r.batchArgs)
	for i := 0; i < len(r.argOffs); i += 2 {
		r.batchArgs = append(r.batchArgs, data[r.argOffs[i]:r.argOffs[i+1]:r.argOffs[i+1]])
	}
	r.batch = append(r.batch, Command{Args: r.batchArgs[start:len(r.batchArgs):len(r.batchArgs)], Raw: data[:r.pos:r.pos]})
	r.r += r.pos
	r.pending = false
	return true, nil
}

// checkIncomplete enforces the query buffer limit on a command that needs more bytes.
func (r *Reader) checkIncomplete(have int) error {
	if have >= r.lim.MaxQuery {
		return &ProtocolError{Msg: "query buffer limit exceeded"}
	}
	return nil
}

// parseLength parses the decimal number after data[at-1] ('*' or '$') up to "\r\n". next is the
// offset just past the line, or -1 when the line is not complete yet.
func (r *Reader) parseLength(data []byte, at int, tooBig string) (n, next int, err error) {
	limit := min(len(data), at+r.lim.MaxInline)
	i := bytes.IndexByte(data[at:limit], '\r')
	if i < 0 {
		if limit-at >= r.lim.MaxInline {
			return 0, 0, &ProtocolError{Msg: tooBig}
		}
		return 0, -1, nil
	}
	i += at
	if i+1 >= len(data) {
		return 0, -1, nil
	}
	msg := "invalid multibulk length"
	if data[at-1] == '$' {
		msg = "invalid bulk length"
	}
	if data[i+1] != '\n' {
		return 0, 0, &ProtocolError{Msg: msg}
	}
	v, ok := parseInt(data[at:i])
	if !ok {
		return 0, 0, &ProtocolError{Msg: msg}
	}
	if v > int64(maxInt32) {
		return 0, 0, &ProtocolError{Msg: msg}
	}
	return int(v), i + 2, nil
}

const maxInt32 = 1<<31 - 1

// parseInt parses a canonical base-10 integer: an optional '-', no '+', no leading zeros, at
// most 19 digits, no overflow.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg = true
		b = b[1:]
	}
	if len(b) == 0 || len(b) > maxNumDigits || (b[0] == '0' && (len(b) > 1 || neg)) {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v > 1<<63-1 {
		return 0, false
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

// parseInline parses one telnet-style line.
func (r *Reader) parseInline() (bool, error) {
	data := r.buf[r.r:r.w]
	limit := min(len(data), r.lim.MaxInline)
	nl := bytes.IndexByte(data[:limit], '\n')
	if nl < 0 {
		if len(data) >= r.lim.MaxInline {
			return false, &ProtocolError{Msg: "too big inline request"}
		}
		return false, nil
	}
	if !r.lim.Inline {
		return false, &ProtocolError{Msg: "inline commands are disabled"}
	}
	line := data[:nl]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	start := len(r.batchArgs)
	args, ok := splitArgs(line, r.batchArgs)
	if !ok {
		return false, &ProtocolError{Msg: "unbalanced quotes in request"}
	}
	r.batchArgs = args
	r.r += nl + 1
	if len(args) > start {
		r.batch = append(r.batch, Command{Args: args[start:len(args):len(args)]})
	}
	return true, nil
}

// Feed appends bytes received elsewhere (by a goroutine that watched the connection while the
// owner was busy) as if they had been read. It never moves data already in the buffer, so
// commands returned by the last ReadBatch stay valid.
func (r *Reader) Feed(b []byte) {
	if len(b) == 0 {
		return
	}
	if r.w+len(b) > len(r.buf) {
		nb := make([]byte, max(2*len(r.buf), r.w+len(b), minBuf))
		copy(nb, r.buf[:r.w])
		r.buf = nb
	}
	r.w += copy(r.buf[r.w:], b)
}

// SetLimits replaces the limits, for instance once a client has authenticated.
func (r *Reader) SetLimits(lim Limits) { r.lim = lim.withDefaults() }

// SetSource makes later reads come from rd, keeping what is buffered; a connection handed from
// one owner to another keeps its parser state.
func (r *Reader) SetSource(rd io.Reader) { r.rd = rd }
