package cluster

import (
	"errors"
)

// maxReplyDepth bounds the nesting of an upstream reply; Valkey's own replies nest a few levels.
const maxReplyDepth = 64

var errBadReply = errors.New("malformed reply from upstream")

// replyScanner finds the boundaries of RESP2 replies in a byte stream without materialising
// them. It is resumable: a reply that arrives in pieces is scanned once, not once per piece.
type replyScanner struct {
	pos   int                // bytes of the current reply already scanned
	depth int                // open array levels, plus the top level
	stack [maxReplyDepth]int // elements still expected at each level
}

// scan looks for the end of the reply that starts at b[0]. It returns the reply's length, or 0
// when b does not hold all of it yet (scan must then be called again with b extended).
func (s *replyScanner) scan(b []byte) (int, error) {
	if s.pos == 0 && s.depth == 0 {
		s.stack[0], s.depth = 1, 1
	}
	for s.depth > 0 {
		top := s.depth - 1
		if s.stack[top] == 0 {
			s.depth--
			continue
		}
		if s.pos >= len(b) {
			return 0, nil
		}
		lineEnd := indexCRLF(b, s.pos+1)
		if lineEnd == -2 {
			return 0, errBadReply
		}
		if lineEnd < 0 {
			return 0, nil
		}
		typ := b[s.pos]
		switch typ {
		case '+', '-', ':':
			s.pos = lineEnd + 2
			s.stack[top]--
		case '$':
			n, ok := atoi(b[s.pos+1 : lineEnd])
			if !ok {
				return 0, errBadReply
			}
			next := lineEnd + 2
			if n >= 0 {
				next += n + 2
				if next > len(b) {
					return 0, nil
				}
			}
			s.pos = next
			s.stack[top]--
		case '*':
			n, ok := atoi(b[s.pos+1 : lineEnd])
			if !ok {
				return 0, errBadReply
			}
			s.pos = lineEnd + 2
			s.stack[top]--
			if n > 0 {
				if s.depth >= maxReplyDepth {
					return 0, errBadReply
				}
				s.stack[s.depth] = n
				s.depth++
			}
		default:
			return 0, errBadReply
		}
	}
	n := s.pos
	s.pos = 0
	return n, nil
}

// indexCRLF returns the index of the first "\r\n" at or after from, -1 when the line is not
// complete yet, or -2 when a '\r' is followed by something else.
func indexCRLF(b []byte, from int) int {
	for i := from; i+1 < len(b); i++ {
		if b[i] == '\r' {
			if b[i+1] != '\n' {
				return -2
			}
			return i
		}
	}
	return -1
}

// atoi parses a RESP length: an optional '-' and up to 18 digits.
func atoi(b []byte) (int, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		return -n, true
	}
	return n, true
}

// ReplyLen returns the length of the complete reply at the start of b, or 0 when b holds only
// part of one.
func ReplyLen(b []byte) (int, error) {
	var s replyScanner
	return s.scan(b)
}

// ArrayElems splits an array reply into its elements' raw bytes, appending them to dst. ok is
// false when reply is not a complete array.
func ArrayElems(reply []byte, dst [][]byte) ([][]byte, bool) {
	if len(reply) < 4 || reply[0] != '*' {
		return dst, false
	}
	end := indexCRLF(reply, 1)
	if end < 0 {
		return dst, false
	}
	n, ok := atoi(reply[1:end])
	if !ok {
		return dst, false
	}
	pos := end + 2
	for range n {
		l, err := ReplyLen(reply[pos:])
		if err != nil || l == 0 {
			return dst, false
		}
		dst = append(dst, reply[pos:pos+l])
		pos += l
	}
	return dst, true
}

// BulkValue returns the payload of a bulk-string reply, or nil.
func BulkValue(reply []byte) []byte {
	if len(reply) < 4 || reply[0] != '$' {
		return nil
	}
	end := indexCRLF(reply, 1)
	if end < 0 {
		return nil
	}
	n, ok := atoi(reply[1:end])
	if !ok || n < 0 || end+2+n > len(reply) {
		return nil
	}
	return reply[end+2 : end+2+n]
}

// IntValue returns the value of an integer reply.
func IntValue(reply []byte) (int64, bool) {
	if len(reply) < 4 || reply[0] != ':' {
		return 0, false
	}
	n, ok := atoi(reply[1 : len(reply)-2])
	return int64(n), ok
}
