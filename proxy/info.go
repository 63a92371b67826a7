package proxy

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/redcon"

	"github.com/valkey-lock-proxy/valkey-lock-proxy/cluster"
)

type infoSections uint16

const (
	infoServer infoSections = 1 << iota
	infoClients
	infoProxy
	infoKeyspace
	infoReplication
	infoCluster
	infoUpstream // sections passed through from one primary (memory, stats, ...)
	infoDefault  = infoServer | infoClients | infoProxy | infoKeyspace | infoReplication | infoCluster | infoUpstream
)

var (
	reqInfoServer   = cluster.AppendCommand(nil, "INFO", "server")
	reqInfoKeyspace = cluster.AppendCommand(nil, "INFO", "keyspace")
	// defaultUpstream are the sections of a plain INFO that the proxy takes from one primary.
	defaultUpstream = []string{"memory", "persistence", "stats", "cpu", "modules", "errorstats"}
	upstreamInfo    = map[string]bool{"memory": true, "persistence": true, "stats": true, "cpu": true,
		"modules": true, "errorstats": true, "commandstats": true, "latencystats": true}
)

// planInfo answers INFO with the upstream's server fields, the sections a standalone primary
// has (replication, cluster) as one, the keyspace summed over every primary, the proxy's own
// section, and memory/persistence/stats/cpu/... as one primary reports them.
func (c *client) planInfo(args [][]byte) {
	var want infoSections
	var up []string
	if len(args) == 1 {
		want, up = infoDefault, defaultUpstream
	}
	for _, a := range args[1:] {
		switch name := strings.ToLower(string(a)); name {
		case "default":
			want, up = want|infoDefault, append(up, defaultUpstream...)
		case "all", "everything":
			want = want | infoDefault
			up = append(up, defaultUpstream...)
			up = append(up, "commandstats", "latencystats")
		case "server":
			want |= infoServer
		case "clients":
			want |= infoClients
		case "proxy":
			want |= infoProxy
		case "keyspace":
			want |= infoKeyspace
		case "replication":
			want |= infoReplication
		case "cluster":
			want |= infoCluster
		default:
			if upstreamInfo[name] {
				up = append(up, name)
			}
		}
	}
	first := len(c.ex.Calls)
	if want&infoServer != 0 {
		c.ex.Add(reqInfoServer, 0)
	}
	if len(up) > 0 {
		want |= infoUpstream
		start := len(c.scratch)
		c.scratch = cluster.AppendCommand(c.scratch, append([]string{"INFO"}, up...)...)
		c.ex.Add(c.scratch[start:len(c.scratch):len(c.scratch)], 0)
	} else {
		want &^= infoUpstream
	}
	if want&infoKeyspace != 0 {
		for _, n := range c.s.pool.Primaries() {
			c.ex.AddTo(reqInfoKeyspace, n)
		}
	}
	c.steps = append(c.steps, step{kind: stepMerge, merge: mergeInfo, a: first, b: len(c.ex.Calls), info: want})
}

// bulkBody returns the payload of a bulk-string reply.
func bulkBody(r []byte) []byte {
	if len(r) < 4 || r[0] != '$' {
		return nil
	}
	i := bytes.Index(r, []byte("\r\n"))
	if i < 0 || len(r) < i+4 {
		return nil
	}
	return r[i+2 : len(r)-2]
}

func (c *client) mergeInfo(out []byte, st *step, calls []cluster.Call) []byte {
	var sections []string
	i := 0
	if st.info&infoServer != 0 {
		sections = append(sections, c.serverSection(bulkBody(calls[i].Reply)))
		i++
	}
	if st.info&infoClients != 0 {
		sections = append(sections, "# Clients\r\nconnected_clients:"+strconv.FormatInt(c.s.nClients.Load(), 10)+
			"\r\nmaxclients:"+strconv.Itoa(c.s.opts.MaxClients)+"\r\n")
	}
	if st.info&infoUpstream != 0 {
		if body := strings.TrimRight(string(bulkBody(calls[i].Reply)), "\r\n"); body != "" {
			sections = append(sections, body+"\r\n")
		}
		i++
	}
	if st.info&infoReplication != 0 {
		sections = append(sections, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"+
			"master_failover_state:no-failover\r\nmaster_repl_offset:0\r\n")
	}
	if st.info&infoCluster != 0 {
		sections = append(sections, "# Cluster\r\ncluster_enabled:0\r\n")
	}
	if st.info&infoProxy != 0 {
		sections = append(sections, c.proxySection())
	}
	if st.info&infoKeyspace != 0 {
		var keys, expires int64
		for _, call := range calls[i:] {
			k, e := parseKeyspace(bulkBody(call.Reply))
			keys += k
			expires += e
		}
		ks := "# Keyspace\r\n"
		if keys > 0 {
			ks += "db0:keys=" + strconv.FormatInt(keys, 10) + ",expires=" + strconv.FormatInt(expires, 10) + ",avg_ttl=0\r\n"
		}
		sections = append(sections, ks)
	}
	return redcon.AppendBulkString(out, strings.Join(sections, "\r\n"))
}

// serverSection keeps the upstream's server fields but presents a standalone server on the
// proxy's port.
func (c *client) serverSection(up []byte) string {
	var sb strings.Builder
	if len(up) == 0 {
		sb.WriteString("# Server\r\n")
	}
	for _, line := range strings.SplitAfter(string(up), "\r\n") {
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "redis_mode:"):
			line = "redis_mode:standalone\r\n"
		case strings.HasPrefix(line, "server_mode:"):
			line = "server_mode:standalone\r\n"
		case strings.HasPrefix(line, "tcp_port:"):
			if _, port, ok := strings.Cut(c.laddr, "]:"); ok {
				line = "tcp_port:" + port + "\r\n"
			} else if i := strings.LastIndexByte(c.laddr, ':'); i >= 0 {
				line = "tcp_port:" + c.laddr[i+1:] + "\r\n"
			}
		}
		sb.WriteString(line)
	}
	return sb.String()
}

func (c *client) proxySection() string {
	s := c.s
	mode := "cluster"
	if s.pool.Standalone() {
		mode = "standalone"
	}
	var addrs []string
	for _, n := range s.pool.Primaries() {
		addrs = append(addrs, n.Addr)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var sb strings.Builder
	kv := func(k, v string) { sb.WriteString(k + ":" + v + "\r\n") }
	sb.WriteString("# Proxy\r\n")
	kv("proxy_version", s.opts.Version)
	kv("proxy_uptime_in_seconds", strconv.FormatInt(int64(time.Since(s.start).Seconds()), 10))
	kv("proxy_connected_clients", strconv.FormatInt(s.nClients.Load(), 10))
	kv("proxy_total_connections_received", strconv.FormatInt(s.totalConns.Load(), 10))
	kv("proxy_rejected_connections", strconv.FormatInt(s.rejectedConn.Load(), 10))
	kv("proxy_total_commands_processed", strconv.FormatInt(s.totalCmds.Load(), 10))
	kv("proxy_protocol_errors", strconv.FormatInt(s.protoErrors.Load(), 10))
	kv("proxy_event_loops", strconv.Itoa(s.loopCount()))
	kv("proxy_loop_clients", strconv.FormatInt(s.loopClients.Load(), 10))
	kv("proxy_loop_handovers", strconv.FormatInt(s.loopHandovers.Load(), 10))
	kv("proxy_goroutines", strconv.Itoa(runtime.NumGoroutine()))
	kv("proxy_heap_alloc_bytes", strconv.FormatUint(ms.HeapAlloc, 10))
	lm := s.locks
	kv("locks_acquired", strconv.FormatInt(lm.acquired.Load(), 10))
	kv("locks_not_acquired", strconv.FormatInt(lm.notAcquired.Load(), 10))
	kv("locks_released", strconv.FormatInt(lm.released.Load(), 10))
	kv("locks_handed_over", strconv.FormatInt(lm.handedOver.Load(), 10))
	kv("locks_noreplicas", strconv.FormatInt(lm.noReplicas.Load(), 10))
	kv("locks_wait_timeouts", strconv.FormatInt(lm.waitTimeouts.Load(), 10))
	kv("locks_waiting_clients", strconv.FormatInt(lm.waiting.Load(), 10))
	kv("locks_keepalive_lost", strconv.FormatInt(lm.keepaliveLost.Load(), 10))
	kv("upstream_pinned_connections", strconv.Itoa(s.pool.PinnedInUse()))
	lost, dialFailed, redirects := s.pool.Stats()
	kv("upstream_connections_lost", strconv.FormatInt(lost, 10))
	kv("upstream_dial_failures", strconv.FormatInt(dialFailed, 10))
	kv("upstream_redirects_followed", strconv.FormatInt(redirects, 10))
	kv("upstream_mode", mode)
	kv("upstream_primaries", strconv.Itoa(len(addrs)))
	kv("upstream_primary_addrs", strings.Join(addrs, ","))
	return sb.String()
}

// parseKeyspace reads keys= and expires= of db0 from an INFO keyspace body.
func parseKeyspace(body []byte) (keys, expires int64) {
	for _, line := range strings.Split(string(body), "\r\n") {
		rest, ok := strings.CutPrefix(line, "db0:")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "keys":
				keys = n
			case "expires":
				expires = n
			}
		}
	}
	return keys, expires
}
