package cluster

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// Call is one command for the upstream.
type Call struct {
	// Req is the command as RESP multibulk bytes; it must stay valid until Do returns.
	Req []byte
	// Slot routes the call to the primary serving it.
	Slot uint16
	// Node, when set, sends the call to that node instead (fan-out); redirects are not followed.
	Node *Node
	// Acks > 0 sends the call on the node's acknowledged-write connection, where a WAIT for
	// that many replicas follows it; Acked is WAIT's answer.
	Acks  int
	Acked int
	// Read marks a read-only call that may go to a replica (Options.ReadFrom).
	Read bool
	// Reply is the raw reply, valid until the Exchange is used again. Nil when Err is set.
	Reply []byte
	// from is the address of the node that sent Reply.
	from string
	// Err is a transport failure or ErrNoSlot.
	Err error
}

// Exchange carries one round of calls for one client goroutine. It is reused across rounds to
// keep the hot path free of allocations; it must not be used by two goroutines at once.
type Exchange struct {
	Calls []Call

	ops       []op
	twins     [][2]*Node // primary, its ack twin for this exchange
	remaining atomic.Int32
	wake      chan struct{}
}

// twinOf returns the acknowledged-write connection chosen for primary n in this exchange.
func (ex *Exchange) twinOf(n *Node) *Node {
	for _, t := range ex.twins {
		if t[0] == n {
			return t[1]
		}
	}
	return nil
}

// NewExchange returns an empty Exchange.
func NewExchange() *Exchange {
	return &Exchange{wake: make(chan struct{}, 1)}
}

// Reset empties the call list.
func (ex *Exchange) Reset() {
	clear(ex.Calls)
	ex.Calls = ex.Calls[:0]
}

// Add appends a call routed by slot and returns its index.
func (ex *Exchange) Add(req []byte, slot uint16) int {
	ex.Calls = append(ex.Calls, Call{Req: req, Slot: slot})
	return len(ex.Calls) - 1
}

// AddTo appends a call for a given node and returns its index.
func (ex *Exchange) AddTo(req []byte, n *Node) int {
	ex.Calls = append(ex.Calls, Call{Req: req, Node: n})
	return len(ex.Calls) - 1
}

// Do sends every call, grouped into one submission per node, waits for all replies and follows
// MOVED, ASK and TRYAGAIN so that none reaches the caller. Calls to one node keep their order.
func (p *Pool) Do(ex *Exchange) {
	// A primary that gets an acknowledged write in this exchange gets all of the exchange's
	// calls on that write's connection, so that they keep their order around it.
	ex.twins = ex.twins[:0]
	for i := range ex.Calls {
		c := &ex.Calls[i]
		if c.Acks == 0 {
			continue
		}
		n := c.Node
		if n == nil {
			n = p.slots[c.Slot].Load()
		}
		if n != nil && ex.twinOf(n) == nil {
			ex.twins = append(ex.twins, [2]*Node{n, p.ackNode(n)})
		}
	}
	nops := 0
	for i := range ex.Calls {
		c := &ex.Calls[i]
		n := c.Node
		if n == nil {
			if c.Read && p.replicaReads {
				n = p.readNode(c.Slot)
			} else {
				n = p.slots[c.Slot].Load()
			}
			if n == nil {
				c.Err = ErrNoSlot
				continue
			}
		}
		if t := ex.twinOf(n); t != nil {
			n = t
		}
		k := 0
		for k < nops && ex.ops[k].node != n {
			k++
		}
		if k == nops {
			if nops == len(ex.ops) {
				ex.ops = append(ex.ops, op{})
			}
			ex.ops[k].reset(n, ex)
			nops++
		}
		ex.ops[k].calls = append(ex.ops[k].calls, i)
		ex.ops[k].needAcks = max(ex.ops[k].needAcks, c.Acks)
	}
	p.run(ex, ex.ops[:nops])
	redirected := false
	for k := range nops {
		o := &ex.ops[k]
		for j, ci := range o.calls {
			c := &ex.Calls[ci]
			if o.err != nil && j >= len(o.ends) {
				c.Err = o.err
				continue
			}
			start := 0
			if j > 0 {
				start = o.ends[j-1]
			}
			c.Reply = o.buf[start:o.ends[j]:o.ends[j]]
			c.Acked = o.acks
			c.from = o.node.Addr
			if c.Node == nil && isRedirect(c.Reply) {
				redirected = true
			}
		}
	}
	if redirected {
		p.followRedirects(ex)
	}
}

// run submits the ops and waits until all have completed.
func (p *Pool) run(ex *Exchange, ops []op) {
	if len(ops) == 0 {
		return
	}
	ex.remaining.Store(int32(len(ops)))
	for k := range ops {
		ops[k].node.submit(&ops[k])
	}
	<-ex.wake
}

func isRedirect(r []byte) bool {
	return len(r) > 4 && r[0] == '-' && (r[1] == 'M' || r[1] == 'A' || r[1] == 'T') &&
		(bytes.HasPrefix(r, []byte("-MOVED ")) || bytes.HasPrefix(r, []byte("-ASK ")) ||
			bytes.HasPrefix(r, []byte("-TRYAGAIN")))
}

// tryAgainText is the only TRYAGAIN Valkey sends; other texts (a script's) are not retried.
const tryAgainText = "TRYAGAIN Multiple keys request during rehashing of slot"

type redirect struct {
	ask, tryAgain bool
	slot          uint16
	addr          string
}

// parseRedirect understands exactly "-MOVED <slot> <host:port>", "-ASK <slot> <host:port>"
// and "-TRYAGAIN ..."; anything else (a script's error text, say) is not a redirect.
func parseRedirect(r []byte, from string) (redirect, bool) {
	line := string(bytes.TrimSuffix(r, []byte("\r\n")))
	if len(line) == 0 || line[0] != '-' {
		return redirect{}, false
	}
	line = line[1:]
	if line == tryAgainText {
		return redirect{tryAgain: true}, true
	}
	f := splitFields(line)
	if len(f) != 3 || (f[0] != "MOVED" && f[0] != "ASK") {
		return redirect{}, false
	}
	slot, err := strconv.Atoi(f[1])
	if err != nil || slot < 0 || slot >= SlotCount {
		return redirect{}, false
	}
	host, port, err := net.SplitHostPort(f[2])
	if err != nil {
		return redirect{}, false
	}
	if pn, err := strconv.Atoi(port); err != nil || pn <= 0 || pn > 65535 {
		return redirect{}, false
	}
	if host == "" {
		host, _, _ = net.SplitHostPort(from)
	}
	return redirect{ask: f[0] == "ASK", slot: uint16(slot), addr: net.JoinHostPort(host, port)}, true
}

func splitFields(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != ' ' {
			i++
		}
		out = append(out, s[:i])
		if i == len(s) {
			break
		}
		s = s[i+1:]
	}
	return out
}

// tryAgainBudget bounds how long a command answered TRYAGAIN is retried: long enough for a
// slot migration to move a batch of keys. maxHops bounds the re-sends of one command whatever
// the redirects say, so that a script returning a redirect-shaped error cannot make the proxy
// run it over and over.
const (
	tryAgainBudget = 5 * time.Second
	maxHops        = 64
)

// followRedirects re-sends, one at a time and in order, every call whose reply was a redirect.
// A redirect is followed only to a primary of the current topology (refreshed once when the
// address is new) and never to the node that sent it; anything else reaches the client as the
// error it is.
func (p *Pool) followRedirects(ex *Exchange) {
	var retry Exchange
	retry.wake = make(chan struct{}, 1)
	retry.ops = make([]op, 1)
	for i := range ex.Calls {
		c := &ex.Calls[i]
		if c.Err != nil || c.Node != nil || !isRedirect(c.Reply) {
			continue
		}
		from := c.from
		backoff := 5 * time.Millisecond
		deadline := time.Now().Add(tryAgainBudget)
		moves := 0
		for hops := 0; hops < maxHops && time.Now().Before(deadline); hops++ {
			rd, ok := parseRedirect(c.Reply, from)
			if !ok {
				break
			}
			var target *Node
			switch {
			case rd.tryAgain:
				// Keys of a multi-key command are split by a migration in progress: wait for it.
				time.Sleep(backoff)
				backoff = min(2*backoff, 100*time.Millisecond)
				target = p.slots[c.Slot].Load()
			default:
				moves++
				if !rd.ask {
					p.requestRefresh()
				}
				if moves > p.opts.MaxRedirects {
					// Nodes that disagree for a moment (at the end of a migration one node
					// already points at the other, which still points back): slow down, and
					// give up after ten more hops.
					time.Sleep(backoff)
					backoff = min(2*backoff, 100*time.Millisecond)
				}
				// Past the hop limit, or pointing back at the node that answered, a redirect
				// is not followed.
				if moves <= p.opts.MaxRedirects+10 {
					if rd.ask {
						// ASK names the node importing the slot, which may own no slot yet
						// (a new shard being filled) and so is missing from CLUSTER SLOTS.
						target = p.askTarget(rd, c.Slot)
					} else if rd.slot == c.Slot {
						target = p.primaryAt(rd.addr)
					}
					if target != nil && target.Addr == from {
						target = nil
					}
				}
			}
			if target == nil {
				break
			}
			if c.Acks > 0 {
				target = p.ackNode(target)
			}
			p.stats.redirects.Add(1)
			retry.Calls = append(retry.Calls[:0], Call{Req: c.Req, Node: target})
			o := &retry.ops[0]
			o.reset(target, &retry)
			o.needAcks = c.Acks
			if rd.ask {
				o.calls = append(o.calls, -1)
			}
			o.calls = append(o.calls, 0)
			p.run(&retry, retry.ops)
			if o.err != nil && len(o.ends) < len(o.calls) {
				c.Reply, c.Err = nil, o.err
				break
			}
			last := len(o.ends) - 1
			start := 0
			if last > 0 {
				start = o.ends[last-1]
			}
			// The reply lives in retry's buffer, which the next attempt reuses: copy it out.
			c.Reply = append([]byte(nil), o.buf[start:o.ends[last]]...)
			c.Acked = o.acks
			from = target.Addr
			if !isRedirect(c.Reply) {
				break
			}
		}
	}
}

// askTarget returns the node an ASK for slot names: a primary of the slot map, or a primary
// CLUSTER NODES lists (one importing its first slot owns none yet). Anything else, or an ASK
// for another slot, is not followed: a script can return an ASK-shaped error naming any
// address, and the proxy must not take its credentials there.
func (p *Pool) askTarget(rd redirect, slot uint16) *Node {
	if rd.slot != slot {
		return nil
	}
	for _, n := range p.Primaries() {
		if n.Addr == rd.addr {
			return n
		}
	}
	if p.isMember(rd.addr) {
		return p.node(rd.addr)
	}
	return nil
}

// isMember reports whether CLUSTER NODES lists a primary at addr. A miss re-reads it, one
// read at a time and at most every membersReread; a hit does not wait for a read.
func (p *Pool) isMember(addr string) bool {
	if m := p.members.Load(); m != nil && (*m)[addr] {
		return true
	}
	if p.standalone {
		return false
	}
	p.membersMu.Lock()
	defer p.membersMu.Unlock()
	if m := p.members.Load(); m != nil && (*m)[addr] {
		return true // read meanwhile
	}
	if time.Since(p.membersRead) < membersReread {
		return false
	}
	p.membersRead = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*controlTry)
	defer cancel()
	out, err := p.Control(ctx, func(c rueidis.Client) rueidis.Completed { return c.B().ClusterNodes().Build() }).ToString()
	if err != nil {
		p.log.Debug("CLUSTER NODES", zap.Error(err))
		return false
	}
	m := clusterNodesPrimaries(out)
	p.members.Store(&m)
	return m[addr]
}

// membersReread bounds how often a miss re-reads CLUSTER NODES.
const membersReread = 250 * time.Millisecond

// clusterNodesPrimaries returns the addresses of the healthy primaries in a CLUSTER NODES
// reply: lines "<id> <ip:port@cport[,hostname]> <flags> ...". A node with a hostname is listed
// under both ip:port and hostname:port, as redirects name it by whichever endpoint type the
// cluster prefers.
func clusterNodesPrimaries(out string) map[string]bool {
	m := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		addr, rest, _ := strings.Cut(f[1], "@")
		flags := strings.Split(f[2], ",")
		bad := slices.ContainsFunc(flags, func(f string) bool {
			return f == "fail" || f == "fail?" || f == "handshake" || f == "noaddr"
		})
		ip, port, err := net.SplitHostPort(addr)
		if !slices.Contains(flags, "master") || bad || err != nil || ip == "" || port == "" {
			continue
		}
		m[addr] = true
		if _, host, ok := strings.Cut(rest, ","); ok && host != "" {
			m[net.JoinHostPort(host, port)] = true
		}
	}
	return m
}

// primaryAt returns the primary listening at addr, refreshing the topology once if none is
// known there (a failover may have promoted a node the proxy has not heard of).
func (p *Pool) primaryAt(addr string) *Node {
	for _, n := range p.Primaries() {
		if n.Addr == addr {
			return n
		}
	}
	p.refreshSync()
	for _, n := range p.Primaries() {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}
