package proxy

import (
	"bytes"
	"strconv"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
)

// planCommand forwards COMMAND to one primary; mergeCommand adds the lock commands to what it
// answers, so clients that read COMMAND (to learn key positions, say) see them too.
func (c *client) planCommand(args [][]byte) {
	start := len(c.scratch)
	c.scratch = appendRequest(c.scratch, args)
	i := c.ex.Add(c.scratch[start:len(c.scratch):len(c.scratch)], 0)
	c.steps = append(c.steps, step{kind: stepMerge, merge: mergeCommand, a: i, b: i + 1, args: args})
}

func (c *client) mergeCommand(out []byte, st *step, reply []byte) []byte {
	args := st.args
	sub := ""
	if len(args) > 1 {
		sub = string(bytes.ToLower(args[1]))
	}
	names := commands.LockCommandNames()
	switch {
	case sub == "" || (sub == "info" && len(args) == 2):
		return c.appendWithExtra(out, reply, len(names), func(b []byte) []byte {
			for _, n := range names {
				b = commands.AppendLockInfo(b, n)
			}
			return b
		})
	case sub == "count":
		if n, ok := cluster.IntValue(reply); ok {
			return appendInt(out, n+int64(len(names)))
		}
	case sub == "list" && len(args) == 2:
		return c.appendWithExtra(out, reply, len(names), func(b []byte) []byte {
			for _, n := range names {
				b = redcon.AppendBulkString(b, n)
			}
			return b
		})
	case sub == "info":
		c.elems = c.elems[:0]
		elems, ok := cluster.ArrayElems(reply, c.elems)
		if !ok || len(elems) != len(args)-2 {
			break
		}
		out = redcon.AppendArray(out, len(elems))
		for i, e := range elems {
			if commands.IsLockCommand(string(args[2+i])) {
				out = commands.AppendLockInfo(out, string(args[2+i]))
			} else {
				out = append(out, e...)
			}
		}
		return out
	case sub == "docs":
		var want []string
		if len(args) == 2 {
			want = names
		}
		for _, a := range args[2:] {
			if commands.IsLockCommand(string(a)) {
				want = append(want, string(a))
			}
		}
		return c.appendWithExtra(out, reply, 2*len(want), func(b []byte) []byte {
			for _, n := range want {
				b = commands.AppendLockDocs(b, n)
			}
			return b
		})
	}
	return append(out, reply...)
}

// appendWithExtra writes an array reply with extra elements added at its end.
func (c *client) appendWithExtra(out, reply []byte, extra int, add func([]byte) []byte) []byte {
	if len(reply) < 4 || reply[0] != '*' || extra == 0 {
		return append(out, reply...)
	}
	end := bytes.Index(reply, []byte("\r\n"))
	n, err := strconv.Atoi(string(reply[1:end]))
	if err != nil || n < 0 {
		return append(out, reply...)
	}
	out = redcon.AppendArray(out, n+extra)
	out = append(out, reply[end+2:]...)
	return add(out)
}
