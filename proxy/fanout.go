package proxy

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/commands"
	"github.com/valkey-lock-proxy/valkey-lock-proxy/proxy/resp"
)

// scanNodeBits is how many low bits of a SCAN cursor the proxy uses for the node index.
const scanNodeBits = 10

// planFanOut sends a cluster-wide command to every primary (or one), merged like one server.
func (c *client) planFanOut(spec *commands.Spec, cmd *resp.Command) {
	name := spec.Name
	switch name {
	case "keys":
		c.toPrimaries(cmd, mergeConcat)
	case "scan":
		c.planScan(cmd)
	case "randomkey":
		c.toPrimaries(cmd, mergeRandom)
	case "script|load":
		c.rememberScript(cmd.Args[2])
		c.toPrimaries(cmd, mergeFirst)
	case "script|exists":
		c.toPrimaries(cmd, mergeAnd)
	case "script|kill", "function|kill":
		c.toPrimaries(cmd, mergeKill)
	case "script|flush", "function|load", "function|delete", "function|flush", "function|restore",
		"flushall", "flushdb":
		c.toPrimaries(cmd, mergeFirst)
	case "config|set", "config|resetstat", "config|rewrite":
		c.toNodes(cmd, c.s.pool.AllNodes(), mergeFirst)
	case "pubsub|channels", "pubsub|shardchannels":
		c.toPrimaries(cmd, mergeUnion)
	case "pubsub|numsub", "pubsub|shardnumsub":
		c.toPrimaries(cmd, mergeNumSub)
	case "pubsub|numpat":
		c.toPrimaries(cmd, mergeSum)
	default:
		// SCRIPT HELP, FUNCTION LIST/DUMP/STATS, CONFIG GET ...: one primary answers.
		c.addCall(cmd, 0)
	}
}

func (c *client) toPrimaries(cmd *resp.Command, m mergeKind) {
	c.toNodes(cmd, c.s.pool.Primaries(), m)
}

func (c *client) toNodes(cmd *resp.Command, nodes []*cluster.Node, m mergeKind) {
	req := c.request(cmd)
	first := len(c.ex.Calls)
	for _, n := range nodes {
		c.ex.AddTo(req, n)
	}
	c.steps = append(c.steps, step{kind: stepMerge, merge: m, a: first, b: len(c.ex.Calls)})
}

// sortedPrimaries orders the primaries by address: SCAN cursors name a node by its index here.
func (c *client) sortedPrimaries() []*cluster.Node {
	ps := append([]*cluster.Node(nil), c.s.pool.Primaries()...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Addr < ps[j].Addr })
	return ps
}

// planScan turns the proxy's cursor (node index in the low bits, the node's own cursor above)
// into a SCAN on that node.
func (c *client) planScan(cmd *resp.Command) {
	cursor, err := strconv.ParseUint(string(cmd.Args[1]), 10, 64)
	if err != nil {
		c.localError("ERR invalid cursor")
		return
	}
	nodes := c.sortedPrimaries()
	idx := int(cursor & (1<<scanNodeBits - 1))
	if idx >= len(nodes) {
		c.localError("ERR invalid cursor")
		return
	}
	args := append([][]byte{cmd.Args[0], strconv.AppendUint(nil, cursor>>scanNodeBits, 10)}, cmd.Args[2:]...)
	start := len(c.scratch)
	c.scratch = appendRequest(c.scratch, args)
	i := c.ex.AddTo(c.scratch[start:len(c.scratch):len(c.scratch)], nodes[idx])
	c.steps = append(c.steps, step{kind: stepMerge, merge: mergeScan, a: i, b: i + 1, pa: idx, pb: len(nodes)})
}

func (c *client) mergeScan(out []byte, st *step, reply []byte) []byte {
	elems, ok := cluster.ArrayElems(reply, nil)
	if !ok || len(elems) != 2 {
		return append(out, reply...)
	}
	next, err := strconv.ParseUint(string(cluster.BulkValue(elems[0])), 10, 64)
	if err != nil || next >= 1<<(64-scanNodeBits) {
		return redcon.AppendError(out, "ERR proxy: a node's SCAN cursor does not fit the proxy's cursor")
	}
	var cursor uint64
	switch {
	case next != 0:
		cursor = next<<scanNodeBits | uint64(st.pa)
	case st.pa+1 < st.pb:
		cursor = uint64(st.pa + 1)
	}
	out = redcon.AppendArray(out, 2)
	out = redcon.AppendBulkString(out, strconv.FormatUint(cursor, 10))
	return append(out, elems[1]...)
}

// mergeFanOut combines the replies of the fan-out merges.
func (c *client) mergeFanOut(out []byte, st *step, calls []cluster.Call) []byte {
	switch st.merge {
	case mergeConcat:
		total := 0
		c.elems = c.elems[:0]
		for i := range calls {
			var ok bool
			if c.elems, ok = cluster.ArrayElems(calls[i].Reply, c.elems); !ok {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
		}
		total = len(c.elems)
		out = redcon.AppendArray(out, total)
		for _, e := range c.elems {
			out = append(out, e...)
		}
		return out
	case mergeFirst:
		return append(out, calls[0].Reply...)
	case mergeRandom:
		var hits [][]byte
		for i := range calls {
			if r := calls[i].Reply; len(r) > 0 && !bytes.Equal(r, []byte("$-1\r\n")) {
				hits = append(hits, r)
			}
		}
		if len(hits) == 0 {
			return redcon.AppendNull(out)
		}
		return append(out, hits[rand.IntN(len(hits))]...)
	case mergeAnd:
		var all [][]int64
		for i := range calls {
			elems, ok := cluster.ArrayElems(calls[i].Reply, nil)
			if !ok {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
			row := make([]int64, len(elems))
			for j, e := range elems {
				row[j], _ = cluster.IntValue(e)
			}
			all = append(all, row)
		}
		out = redcon.AppendArray(out, len(all[0]))
		for j := range all[0] {
			v := int64(1)
			for _, row := range all {
				if j >= len(row) || row[j] == 0 {
					v = 0
				}
			}
			out = redcon.AppendInt(out, v)
		}
		return out
	case mergeScan:
		return c.mergeScan(out, st, calls[0].Reply)
	case mergeUnion:
		seen := map[string]bool{}
		var keep [][]byte
		for i := range calls {
			elems, ok := cluster.ArrayElems(calls[i].Reply, nil)
			if !ok {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
			for _, e := range elems {
				if !seen[string(e)] {
					seen[string(e)] = true
					keep = append(keep, e)
				}
			}
		}
		out = redcon.AppendArray(out, len(keep))
		for _, e := range keep {
			out = append(out, e...)
		}
		return out
	case mergeNumSub:
		var names [][]byte
		var sums []int64
		for i := range calls {
			elems, ok := cluster.ArrayElems(calls[i].Reply, nil)
			if !ok || len(elems)%2 != 0 {
				return redcon.AppendError(out, "ERR proxy: unexpected reply from upstream")
			}
			if names == nil {
				for j := 0; j < len(elems); j += 2 {
					names = append(names, elems[j])
				}
				sums = make([]int64, len(names))
			}
			for j := 1; j < len(elems) && j/2 < len(sums); j += 2 {
				n, _ := cluster.IntValue(elems[j])
				sums[j/2] += n
			}
		}
		out = redcon.AppendArray(out, 2*len(names))
		for j, n := range names {
			out = append(out, n...)
			out = redcon.AppendInt(out, sums[j])
		}
		return out
	}
	return out
}

// mergeKillReplies: a script or function was killed if any primary says OK; else the first
// answer (NOTBUSY, typically).
func mergeKillReplies(out []byte, calls []cluster.Call) []byte {
	for i := range calls {
		if calls[i].Err == nil && bytes.HasPrefix(calls[i].Reply, []byte("+OK")) {
			return append(out, calls[i].Reply...)
		}
	}
	if calls[0].Err != nil {
		return redcon.AppendError(out, errUpstream(calls[0].Err))
	}
	return append(out, calls[0].Reply...)
}

// rememberScript keeps a script's body by SHA1 so that an EVALSHA that meets a node without it
// (after a failover or a SCRIPT FLUSH there) can load it and run again.
func (c *client) rememberScript(body []byte) string {
	sum := sha1.Sum(body)
	sha := hex.EncodeToString(sum[:])
	if !c.s.scripts.Contains(sha) {
		c.s.scripts.Add(sha, string(body))
	}
	return sha
}

// retryEvalSHA loads the script and re-runs every client EVALSHA of the round that met
// NOSCRIPT, when the proxy has seen the script's body.
func (c *client) retryEvalSHA() {
	for i := range c.steps {
		st := &c.steps[i]
		if st.kind != stepCall || !st.evalsha {
			continue
		}
		call := &c.ex.Calls[st.a]
		if call.Err != nil || !isNoScript(call.Reply) {
			continue
		}
		body, ok := c.s.scripts.Get(strings.ToLower(string(st.args[1])))
		if !ok {
			continue
		}
		n := c.s.pool.NodeForSlot(call.Slot)
		if n == nil || c.laterCallTo(n, st.a) {
			// Re-running it now would put it after commands the client pipelined behind it on
			// the same node: answer NOSCRIPT, as Valkey would, and let the client EVAL.
			continue
		}
		ex := cluster.NewExchange()
		ex.AddTo(cluster.AppendCommand(nil, "SCRIPT", "LOAD", body), n)
		ex.AddTo(call.Req, n)
		c.s.pool.Do(ex)
		*call = ex.Calls[1]
	}
}

// laterCallTo reports whether any call after index i of the round goes to node n.
func (c *client) laterCallTo(n *cluster.Node, i int) bool {
	for _, call := range c.ex.Calls[i+1:] {
		if call.Node == n || (call.Node == nil && c.s.pool.NodeForSlot(call.Slot) == n) {
			return true
		}
	}
	return false
}
