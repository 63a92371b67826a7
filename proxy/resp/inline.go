package resp

// splitArgs splits an inline request line the way Valkey's sdssplitargs does: arguments are
// separated by blanks, "double quotes" understand \n \r \t \b \a \\ \" and \xHH escapes,
// 'single quotes' understand \', and a closing quote must be followed by a blank or the end.
// Arguments without escapes point into line; the others are fresh copies.
func splitArgs(line []byte, dst [][]byte) ([][]byte, bool) {
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i >= len(line) {
			return dst, true
		}
		var arg []byte
		var ok bool
		switch line[i] {
		case '"':
			arg, i, ok = doubleQuoted(line, i+1)
		case '\'':
			arg, i, ok = singleQuoted(line, i+1)
		default:
			start := i
			for i < len(line) && !endsWord(line[i]) && line[i] != '"' && line[i] != '\'' {
				i++
			}
			arg, ok = line[start:i:i], true
			if i < len(line) && (line[i] == '"' || line[i] == '\'') {
				// A quote inside a bare word starts a quoted part, as in Valkey.
				var rest []byte
				switch line[i] {
				case '"':
					rest, i, ok = doubleQuoted(line, i+1)
				default:
					rest, i, ok = singleQuoted(line, i+1)
				}
				arg = append(append([]byte(nil), arg...), rest...)
			}
		}
		if !ok {
			return dst, false
		}
		dst = append(dst, arg)
	}
}

// endsWord reports whether c ends an unquoted word. As in sdssplitargs this is a narrower set
// than isSpace: '\v' and '\f' are part of a word, though they are skipped between words.
func endsWord(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == 0
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f' || c == 0
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// doubleQuoted parses from just after an opening '"'. It returns the argument and the index just
// past the closing quote.
func doubleQuoted(line []byte, i int) ([]byte, int, bool) {
	out := make([]byte, 0, 16)
	for i < len(line) {
		c := line[i]
		switch {
		case c == '\\' && i+3 < len(line) && line[i+1] == 'x':
			hi, ok1 := hexVal(line[i+2])
			lo, ok2 := hexVal(line[i+3])
			if ok1 && ok2 {
				out = append(out, hi<<4|lo)
				i += 4
				continue
			}
			out = append(out, 'x')
			i += 2
		case c == '\\' && i+1 < len(line):
			switch e := line[i+1]; e {
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'b':
				out = append(out, '\b')
			case 'a':
				out = append(out, '\a')
			default:
				out = append(out, e)
			}
			i += 2
		case c == '"':
			if i+1 < len(line) && !isSpace(line[i+1]) {
				return nil, i, false
			}
			return out, i + 1, true
		default:
			out = append(out, c)
			i++
		}
	}
	return nil, i, false
}

// singleQuoted parses from just after an opening '\”.
func singleQuoted(line []byte, i int) ([]byte, int, bool) {
	out := make([]byte, 0, 16)
	for i < len(line) {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
			out = append(out, '\'')
			i += 2
		case c == '\'':
			if i+1 < len(line) && !isSpace(line[i+1]) {
				return nil, i, false
			}
			return out, i + 1, true
		default:
			out = append(out, c)
			i++
		}
	}
	return nil, i, false
}
