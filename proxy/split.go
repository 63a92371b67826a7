package proxy

import (
	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// planSplit sends MGET, MSET, DEL, UNLINK, EXISTS and TOUCH as one sub-request per slot when
// their keys span slots, and as they are when they do not.
func (c *client) planSplit(spec *commands.Spec, cmd *resp.Command) {
	args := cmd.Args
	stride := 1
	if spec.Name == "mset" {
		stride = 2
		if (len(args)-1)%2 != 0 {
			c.localError("ERR wrong number of arguments for 'mset' command")
			return
		}
	}
	if !spec.ReadOnly && c.touchesLockKey(args, spec.Keys(args, c.keys[:0])) {
		c.localError(errLockKeys)
		return
	}
	first := cluster.SlotOf(args[1])
	same := true
	for i := 1 + stride; i < len(args); i += stride {
		if cluster.SlotOf(args[i]) != first {
			same = false
			break
		}
	}
	if same {
		c.addCall(cmd, first)
		c.ex.Calls[len(c.ex.Calls)-1].Read = spec.ReadOnly
		return
	}
	// Group keys by slot, in order of first appearance.
	if c.slotIdx == nil {
		c.slotIdx = map[uint16]int{}
	}
	clear(c.slotIdx)
	groups := c.keys[:0] // reused: group index of each key
	var order []uint16
	for i := 1; i < len(args); i += stride {
		sl := cluster.SlotOf(args[i])
		g, ok := c.slotIdx[sl]
		if !ok {
			g = len(order)
			c.slotIdx[sl] = g
			order = append(order, sl)
		}
		groups = append(groups, g)
	}
	c.keys = groups
	firstCall := len(c.ex.Calls)
	pa := len(c.positions)
	for g, sl := range order {
		n := 0
		for _, kg := range groups {
			if kg == g {
				n++
			}
		}
		start := len(c.scratch)
		c.scratch = redcon.AppendArray(c.scratch, 1+n*stride)
		c.scratch = redcon.AppendBulk(c.scratch, args[0])
		for k, kg := range groups {
			if kg != g {
				continue
			}
			ai := 1 + k*stride
			c.scratch = redcon.AppendBulk(c.scratch, args[ai])
			if stride == 2 {
				c.scratch = redcon.AppendBulk(c.scratch, args[ai+1])
			}
			c.positions = append(c.positions, k)
		}
		j := c.ex.Add(c.scratch[start:len(c.scratch):len(c.scratch)], sl)
		c.ex.Calls[j].Read = spec.ReadOnly
	}
	st := step{kind: stepMerge, a: firstCall, b: len(c.ex.Calls), pa: pa, pb: len(c.positions)}
	switch spec.Name {
	case "mset":
		st.merge = mergeOK
	case "mget":
		st.merge = mergeMGet
	default:
		st.merge = mergeSum
	}
	c.steps = append(c.steps, st)
}

// merge combines the replies of a split or fan-out command. The first error wins, verbatim.
func (c *client) merge(out []byte, st *step) []byte {
	calls := c.ex.Calls[st.a:st.b]
	if st.merge == mergeKill {
		return mergeKillReplies(out, calls)
	}
	for i := range calls {
		if calls[i].Err != nil || (len(calls[i].Reply) > 0 && calls[i].Reply[0] == '-') {
			return c.appendCallReply(out, &calls[i])
		}
	}
	switch st.merge {
	case mergeSum:
		var sum int64
		for i := range calls {
			r := calls[i].Reply
			if len(r) < 4 || r[0] != ':' {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
			n, ok := commands.ParseInt(r[1 : len(r)-2])
			if !ok {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
			sum += n
		}
		return appendInt(out, sum)
	case mergeOK:
		return redcon.AppendOK(out)
	case mergeMGet:
		total := st.pb - st.pa
		c.elems = c.elems[:0]
		for i := range calls {
			var ok bool
			if c.elems, ok = cluster.ArrayElems(calls[i].Reply, c.elems); !ok {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
		}
		if len(c.elems) != total {
			return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
		}
		// elems are in part order; positions says where each goes.
		ordered := make([][]byte, total)
		for j, pos := range c.positions[st.pa:st.pb] {
			ordered[pos] = c.elems[j]
		}
		out = redcon.AppendArray(out, total)
		for _, e := range ordered {
			out = append(out, e...)
		}
		return out
	case mergeInfo:
		return c.mergeInfo(out, st, calls)
	case mergeCommand:
		return c.mergeCommand(out, st, calls[0].Reply)
	}
	return c.mergeFanOut(out, st, calls)
}
