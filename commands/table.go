package commands

import (
	"bytes"
	"fmt"
	"strings"
)

// Class says how the proxy handles a command.
type Class uint8

const (
	// Routed commands have keys; all must hash to one slot, then they go to its primary.
	Routed Class = iota
	// Keyless commands go to one primary (the owner of slot 0).
	Keyless
	// Split commands (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) are split per slot and merged.
	Split
	// Local commands are answered by the proxy itself.
	Local
	// Pinned commands need an upstream connection of the client's own.
	Pinned
	// Denied commands are refused by the policy.
	Denied
	// FanOut commands need every primary.
	FanOut
	// Lock commands are the proxy's own: LOCK, UNLOCK, RENEW, LOCKINFO, LOCKID, SAFESET.
	Lock
)

var classNames = [...]string{"routed", "keyless", "split", "local", "pinned", "denied", "fan-out", "lock"}

func (c Class) String() string { return classNames[c] }

// Spec describes one command or subcommand.
type Spec struct {
	// Name is the lower-case name; a subcommand's is "container|sub".
	Name  string
	Arity int
	Flags []string
	Class Class
	// ReadOnly is set for commands flagged readonly upstream.
	ReadOnly bool
	// Blocking is set for commands flagged blocking upstream.
	Blocking bool

	keySpecs []keySpec
	// Fast path: a single index+range spec.
	simple            bool
	first, last, step int
	sortStore         bool

	sub map[string]*Spec
}

type keySpec struct {
	// begin_search
	bsIndex    int
	bsKeyword  string
	bsStart    int
	bsType     byte // 'i' index, 'k' keyword, 'u' unknown
	fkType     byte // 'r' range, 'n' keynum, 'u' unknown
	lastKey    int
	keyStep    int
	limit      int
	keyNumIdx  int
	firstKey   int
	keyNumStep int
}

// Table maps command names to specs.
type Table struct {
	cmds map[string]*Spec
}

// Lookup finds the spec for a request. The error is a reply text (without the leading '-').
func (t *Table) Lookup(args [][]byte) (*Spec, string) {
	var buf [32]byte
	name := args[0]
	s := t.cmds[string(lower(buf[:0], name))]
	if s == nil {
		return nil, unknownCommand(args)
	}
	if s.sub != nil && len(args) > 1 {
		var sb [64]byte
		k := lower(append(append(sb[:0], s.Name...), '|'), args[1])
		sub := s.sub[string(k)]
		if sub == nil {
			return nil, fmt.Sprintf("ERR unknown subcommand '%.128s'. Try %s HELP.",
				sanitize(args[1]), strings.ToUpper(string(name)))
		}
		s = sub
	}
	if (s.Arity > 0 && len(args) != s.Arity) || (s.Arity < 0 && len(args) < -s.Arity) {
		return nil, "ERR wrong number of arguments for '" + s.Name + "' command"
	}
	return s, ""
}

// Get returns the spec for a lower-case name ("object|encoding" for a subcommand), or nil.
func (t *Table) Get(name string) *Spec {
	if i := strings.IndexByte(name, '|'); i >= 0 {
		if c := t.cmds[name[:i]]; c != nil {
			return c.sub[name]
		}
		return nil
	}
	return t.cmds[name]
}

func lower(dst, b []byte) []byte {
	for _, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// sanitize replaces CR and LF with spaces so a text fits on one RESP error line, and ends it at
// a NUL byte as Valkey's C formatting does.
func sanitize(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if bytes.IndexByte(b, '\r') < 0 && bytes.IndexByte(b, '\n') < 0 {
		return string(b)
	}
	out := []byte(string(b))
	for i, c := range out {
		if c == '\r' || c == '\n' {
			out[i] = ' '
		}
	}
	return string(out)
}

// unknownCommand words the error the way Valkey does.
func unknownCommand(args [][]byte) string {
	var sb strings.Builder
	for _, a := range args[1:] {
		if sb.Len() >= 128 {
			break
		}
		room := 128 - sb.Len()
		if len(a) > room {
			a = a[:room]
		}
		sb.WriteByte('\'')
		sb.WriteString(sanitize(a))
		sb.WriteString("' ")
	}
	name := args[0]
	if len(name) > 128 {
		name = name[:128]
	}
	return "ERR unknown command '" + sanitize(name) + "', with args beginning with: " + sb.String()
}

// Keys appends to dst the indexes in args of every key of the command.
func (s *Spec) Keys(args [][]byte, dst []int) []int {
	if s.simple {
		return rangeKeys(dst, len(args), s.first, s.last, s.step, 0)
	}
	for i := range s.keySpecs {
		dst = s.keySpecs[i].keys(args, dst)
	}
	if s.sortStore {
		for i := 2; i+1 < len(args); i++ {
			if bytes.EqualFold(args[i], []byte("store")) {
				dst = append(dst, i+1)
				break
			}
		}
	}
	return dst
}

// rangeKeys appends first..last by step, clipped to the arguments present. A negative last
// counts from the end; limit divides the remaining arguments (XREAD's STREAMS k1 k2 id1 id2).
func rangeKeys(dst []int, argc, first, last, step, limit int) []int {
	if first <= 0 || first >= argc {
		return dst
	}
	switch {
	case last >= 0:
		last = first + last
	case limit > 1:
		last = first + (argc-first)/limit + last
	default:
		last = argc + last
	}
	if step <= 0 {
		step = 1
	}
	for i := first; i <= last && i < argc; i += step {
		dst = append(dst, i)
	}
	return dst
}

func (k *keySpec) keys(args [][]byte, dst []int) []int {
	argc := len(args)
	first := -1
	switch k.bsType {
	case 'i':
		first = k.bsIndex
	case 'k':
		if k.bsStart >= 0 {
			for i := k.bsStart; i < argc; i++ {
				if bytes.EqualFold(args[i], []byte(k.bsKeyword)) {
					first = i + 1
					break
				}
			}
		} else {
			for i := argc + k.bsStart; i > 0; i-- {
				if bytes.EqualFold(args[i], []byte(k.bsKeyword)) {
					first = i + 1
					break
				}
			}
		}
	}
	if first <= 0 || first >= argc {
		return dst
	}
	switch k.fkType {
	case 'r':
		return rangeKeys(dst, argc, first, k.lastKey, k.keyStep, k.limit)
	case 'n':
		idx := first + k.keyNumIdx
		if idx >= argc {
			return dst
		}
		n, ok := ParseInt(args[idx])
		if !ok || n < 0 || n > int64(argc) {
			return dst
		}
		start := first + k.firstKey
		step := max(k.keyNumStep, 1)
		for i, c := start, int64(0); c < n && i < argc; i, c = i+step, c+1 {
			dst = append(dst, i)
		}
	}
	return dst
}

// ParseInt parses an integer argument the way Valkey's string2ll does: an optional '-', no
// '+', no leading zeros, no spaces, and within int64.
func ParseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 || (b[0] == '0' && (len(b) > 1 || neg)) {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	switch {
	case neg && n <= 1<<63:
		return -int64(n-1) - 1, true
	case !neg && n <= 1<<63-1:
		return int64(n), true
	}
	return 0, false
}
