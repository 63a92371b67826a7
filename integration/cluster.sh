#!/usr/bin/env bash
# Local Valkey Cluster for the integration tests, the benchmark and `make run`.
#
#   integration/cluster.sh start    start 3 primaries + 3 replicas (and one standalone server)
#   integration/cluster.sh stop     stop the processes this script started, remove the state dir
#   integration/cluster.sh status   print the nodes; exit non-zero unless the cluster is healthy
#   integration/cluster.sh env      print VLP_CLUSTER_ADDRS=... and VLP_STANDALONE_ADDR=... lines
#
# Environment:
#   VLP_CLUSTER_BASE_PORT  first cluster port (default 7101); the nodes use BASE..BASE+5 and the
#                          cluster bus ports BASE+10000..BASE+10005
#   VLP_STANDALONE_PORT    port of the standalone (non-cluster) server (default BASE+98);
#                          0 or "none" = no standalone server
#   VLP_CLUSTER_DIR        state dir (default /tmp/vlp-cluster-BASE): per-node dirs, logs, pids
#   VLP_CLUSTER_WAIT       seconds to wait for the cluster to become healthy (default 30)
#   VLP_CLUSTER_KEEP_ON_FAILURE=1  leave the processes and logs of a failed start in place
#   VLP_VALKEY_EXTRA_ARGS  extra valkey-server arguments for every node (word-split)
#
# Only processes whose pids this script recorded are ever signalled; nothing is killed by name.
# Processes are started with --daemonize yes, so they outlive this script until `stop`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOST=127.0.0.1
BASE_PORT="${VLP_CLUSTER_BASE_PORT:-7101}"
NODES=6
STATE_DIR="${VLP_CLUSTER_DIR:-/tmp/vlp-cluster-$BASE_PORT}"
WAIT_SECS="${VLP_CLUSTER_WAIT:-30}"
MARKER=".vlp-cluster-state"

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$BASE_PORT" && [ "$BASE_PORT" -ge 1 ] && [ "$BASE_PORT" -le 55530 ] ||
  die "VLP_CLUSTER_BASE_PORT must be a port number <= 55530 (bus ports are +10000), got '$BASE_PORT'"
is_uint "$WAIT_SECS" || die "VLP_CLUSTER_WAIT must be a number of seconds, got '$WAIT_SECS'"

case "$STATE_DIR" in
  /*) ;;
  *) STATE_DIR="$PWD/$STATE_DIR" ;;
esac
STATE_DIR="${STATE_DIR%/}"
[ -n "$STATE_DIR" ] && [ "$STATE_DIR" != "/" ] || die "refusing to use '/' as the state dir"

CLUSTER_PORTS=()
for ((i = 0; i < NODES; i++)); do CLUSTER_PORTS+=($((BASE_PORT + i))); done

# The standalone port asked for: VLP_STANDALONE_PORT, else BASE+98; "" means none.
wanted_standalone_port() {
  local p="${VLP_STANDALONE_PORT-}"
  [ -n "$p" ] || p=$((BASE_PORT + 98))
  case "$p" in
    0 | none | off | no) echo "" ;;
    *)
      is_uint "$p" && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] ||
        die "VLP_STANDALONE_PORT must be a port number (or 0 for none), got '$p'"
      echo "$p"
      ;;
  esac
}

# The standalone port in use: the one recorded by `start` (so that `env`, `status` and
# `stop` agree with what runs), else the one asked for.
standalone_port() {
  if [ -f "$STATE_DIR/standalone.port" ]; then
    local p
    p="$(cat "$STATE_DIR/standalone.port")"
    [ "$p" = 0 ] && p=""
    echo "$p"
  else
    wanted_standalone_port
  fi
}

# valkey-cli with a hard bound, so a wedged node cannot hang the script.
vcli() {
  local port="$1"
  shift
  timeout 5 valkey-cli -h "$HOST" -p "$port" "$@" 2>/dev/null | tr -d '\r'
}

field() { # field NAME <<< "INFO-style text"
  sed -n "s/^$1:\(.*\)$/\1/p" | head -n 1
}

node_dir() { echo "$STATE_DIR/$1"; }

# True while the process exists and is not a zombie (daemonized servers are reparented to
# pid 1, which may be slow to reap them).
proc_alive() {
  local st
  [ -r "/proc/$1/stat" ] || return 1
  st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# A recorded pid is ours only if it is still a valkey-server serving that port (guards
# against pid reuse after a crash or reboot). Valkey sets its process title to
# "valkey-server 127.0.0.1:PORT [cluster]".
pid_is_ours() {
  local pid="$1" port="$2" cmd
  is_uint "$pid" || return 1
  proc_alive "$pid" || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *valkey-server* && "$cmd" == *":$port"* ]]
}

# Prints "port pid" for every recorded process (pids file plus any pidfiles, so that a
# process that daemonized before its pid was recorded is still found).
recorded_pids() {
  [ -d "$STATE_DIR" ] || return 0
  {
    [ -f "$STATE_DIR/pids" ] && cat "$STATE_DIR/pids"
    local f port
    for f in "$STATE_DIR"/*/valkey.pid; do
      [ -f "$f" ] || continue
      port="$(basename "$(dirname "$f")")"
      echo "$port $(tr -dc '0-9' <"$f")"
    done
  } | awk 'NF == 2 && $2 != "" {print $1, $2}' | sort -u
}

port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

print_log_tails() {
  local port f
  for port in "${CLUSTER_PORTS[@]}" $(standalone_port); do
    f="$(node_dir "$port")/valkey.log"
    [ -f "$f" ] || continue
    echo "----- tail of $f -----" >&2
    tail -n 20 "$f" >&2 || true
  done
}

# ---------------------------------------------------------------------------------------
# health

HEALTH_REASON=""

cluster_healthy() {
  HEALTH_REASON=""
  local port info nodes repl role masters=0 replicas=0
  for port in "${CLUSTER_PORTS[@]}"; do
    info="$(vcli "$port" CLUSTER INFO || true)"
    if [ -z "$info" ] || ! grep -q '^cluster_state:' <<<"$info"; then
      HEALTH_REASON="node $port: not answering CLUSTER INFO"
      return 1
    fi
    [ "$(field cluster_state <<<"$info")" = "ok" ] ||
      { HEALTH_REASON="node $port: cluster_state:$(field cluster_state <<<"$info")"; return 1; }
    [ "$(field cluster_known_nodes <<<"$info")" = "$NODES" ] ||
      { HEALTH_REASON="node $port: knows $(field cluster_known_nodes <<<"$info") nodes, want $NODES"; return 1; }
    [ "$(field cluster_slots_assigned <<<"$info")" = "16384" ] ||
      { HEALTH_REASON="node $port: $(field cluster_slots_assigned <<<"$info") slots assigned"; return 1; }
    [ "$(field cluster_slots_ok <<<"$info")" = "16384" ] ||
      { HEALTH_REASON="node $port: $(field cluster_slots_ok <<<"$info") slots ok"; return 1; }
    [ "$(field cluster_size <<<"$info")" = "3" ] ||
      { HEALTH_REASON="node $port: cluster_size:$(field cluster_size <<<"$info"), want 3"; return 1; }
    nodes="$(vcli "$port" CLUSTER NODES || true)"
    [ "$(grep -c . <<<"$nodes")" = "$NODES" ] ||
      { HEALTH_REASON="node $port: CLUSTER NODES lists $(grep -c . <<<"$nodes") nodes"; return 1; }
    if ! awk '{
        n = split($3, f, ",")
        for (i = 1; i <= n; i++)
          if (f[i] == "fail" || f[i] == "fail?" || f[i] == "handshake" || f[i] == "noaddr") bad = 1
        if ($8 != "connected") bad = 1
      } END { exit bad }' <<<"$nodes"; then
      HEALTH_REASON="node $port: CLUSTER NODES shows a failing, handshaking or disconnected node"
      return 1
    fi
    repl="$(vcli "$port" INFO replication || true)"
    role="$(field role <<<"$repl")"
    case "$role" in
      master) masters=$((masters + 1)) ;;
      slave)
        replicas=$((replicas + 1))
        [ "$(field master_link_status <<<"$repl")" = "up" ] ||
          { HEALTH_REASON="replica $port: master_link_status:$(field master_link_status <<<"$repl")"; return 1; }
        ;;
      *) HEALTH_REASON="node $port: unknown role '$role'"; return 1 ;;
    esac
  done
  [ "$masters" = 3 ] && [ "$replicas" = 3 ] ||
    { HEALTH_REASON="$masters primaries and $replicas replicas, want 3 and 3"; return 1; }
  return 0
}

standalone_healthy() {
  local sp
  sp="$(standalone_port)"
  [ -n "$sp" ] || return 0
  [ "$(vcli "$sp" PING || true)" = "PONG" ] ||
    { HEALTH_REASON="standalone $sp: not answering PING"; return 1; }
  [ "$(vcli "$sp" INFO cluster | field cluster_enabled)" = "0" ] ||
    { HEALTH_REASON="standalone $sp: is not a standalone server"; return 1; }
}

all_recorded_alive() {
  local port pid n=0
  while read -r port pid; do
    pid_is_ours "$pid" "$port" || return 1
    n=$((n + 1))
  done < <(recorded_pids)
  [ "$n" -gt 0 ]
}

healthy() {
  [ -f "$STATE_DIR/$MARKER" ] && [ -f "$STATE_DIR/created" ] || { HEALTH_REASON="not started"; return 1; }
  all_recorded_alive || { HEALTH_REASON="a recorded process is not running"; return 1; }
  cluster_healthy && standalone_healthy
}

# ---------------------------------------------------------------------------------------
# stop

do_stop() {
  if [ ! -d "$STATE_DIR" ]; then
    return 0
  fi
  if [ ! -f "$STATE_DIR/$MARKER" ]; then
    die "$STATE_DIR exists but was not created by cluster.sh (no $MARKER); not touching it"
  fi
  local port pid live=() pids
  while read -r port pid; do
    if pid_is_ours "$pid" "$port"; then
      live+=("$pid")
    fi
  done < <(recorded_pids)
  if [ "${#live[@]}" -gt 0 ]; then
    log "stopping ${#live[@]} valkey-server process(es): ${live[*]}"
    kill -TERM "${live[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while :; do
      pids=()
      for pid in "${live[@]}"; do
        proc_alive "$pid" && pids+=("$pid")
      done
      [ "${#pids[@]}" -eq 0 ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "still running after SIGTERM, sending SIGKILL: ${pids[*]}"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        local kdeadline=$((SECONDS + 5))
        while [ "$SECONDS" -lt "$kdeadline" ]; do
          local any=0
          for pid in "${pids[@]}"; do proc_alive "$pid" && any=1; done
          [ "$any" = 0 ] && break
          sleep 0.1
        done
        break
      fi
      sleep 0.1
    done
  fi
  rm -rf -- "$STATE_DIR"
}

cmd_stop() {
  if [ ! -d "$STATE_DIR" ]; then
    log "not running (no $STATE_DIR)"
    return 0
  fi
  do_stop
  log "stopped; removed $STATE_DIR"
}

# ---------------------------------------------------------------------------------------
# start

start_node() { # start_node PORT cluster|standalone
  local port="$1" kind="$2" dir pidfile pid deadline
  dir="$(node_dir "$port")"
  mkdir -p "$dir"
  pidfile="$dir/valkey.pid"
  local args=(
    --port "$port"
    --bind "$HOST"
    --protected-mode no
    --daemonize yes
    --save ""
    --appendonly no
    --dir "$dir"
    --logfile "$dir/valkey.log"
    --pidfile "$pidfile"
    --enable-debug-command local
  )
  if [ "$kind" = cluster ]; then
    args+=(--cluster-enabled yes --cluster-node-timeout 3000 --cluster-config-file "nodes-$port.conf")
  fi
  # shellcheck disable=SC2206 # word splitting is intended
  [ -n "${VLP_VALKEY_EXTRA_ARGS:-}" ] && args+=($VLP_VALKEY_EXTRA_ARGS)
  # 9>&-: the daemon must not inherit the flock fd (it would hold the lock forever).
  if ! valkey-server "${args[@]}" >"$dir/startup.out" 2>&1 9>&-; then
    cat "$dir/startup.out" >&2 || true
    return 1
  fi
  deadline=$((SECONDS + 10))
  while :; do
    if [ -s "$pidfile" ]; then
      pid="$(tr -dc '0-9' <"$pidfile")"
      if [ -n "$pid" ] && proc_alive "$pid"; then
        echo "$port $pid" >>"$STATE_DIR/pids"
        break
      fi
    fi
    [ "$SECONDS" -lt "$deadline" ] || { log "node $port: no pid file after 10 s"; return 1; }
    sleep 0.1
  done
  deadline=$((SECONDS + 10))
  until [ "$(vcli "$port" PING || true)" = "PONG" ]; do
    proc_alive "$pid" || { log "node $port (pid $pid) exited during startup"; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { log "node $port: no PONG after 10 s"; return 1; }
    sleep 0.1
  done
}

start_failed() {
  log "ERROR: start failed: $*"
  print_log_tails
  if [ "${VLP_CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    log "VLP_CLUSTER_KEEP_ON_FAILURE=1: leaving processes and $STATE_DIR in place"
  else
    log "cleaning up the partial start"
    do_stop || true
  fi
  log "ERROR: start failed: $* (node logs above)"
  exit 1
}

cmd_start() {
  "$SCRIPT_DIR/install-valkey.sh" 9>&- || die "integration/install-valkey.sh failed"
  command -v valkey-server >/dev/null && command -v valkey-cli >/dev/null ||
    die "valkey-server/valkey-cli still not found after install-valkey.sh"

  local sp
  if [ -d "$STATE_DIR" ]; then
    [ -f "$STATE_DIR/$MARKER" ] ||
      die "$STATE_DIR exists but was not created by cluster.sh; remove it or set VLP_CLUSTER_DIR"
    sp="$(standalone_port)"
    if [ "$sp" = "$(wanted_standalone_port)" ]; then
      if healthy; then
        log "already running and healthy ($STATE_DIR)"
        return 0
      fi
      # All processes up but not converged (yet): give it a moment before restarting.
      if [ -f "$STATE_DIR/created" ] && all_recorded_alive; then
        local deadline=$((SECONDS + 10))
        while [ "$SECONDS" -lt "$deadline" ]; do
          sleep 0.5
          if healthy; then
            log "already running and healthy ($STATE_DIR)"
            return 0
          fi
        done
      fi
      log "stale or unhealthy state in $STATE_DIR ($HEALTH_REASON); restarting cleanly"
    else
      local want; want="$(wanted_standalone_port)"
      log "running with standalone port '${sp:-none}' but '${want:-none}' is wanted; restarting"
    fi
    do_stop
  fi

  sp="$(standalone_port)"
  local port busy=()
  for port in "${CLUSTER_PORTS[@]}"; do
    port_in_use "$port" && busy+=("$port")
    port_in_use $((port + 10000)) && busy+=("$((port + 10000)) (cluster bus of $port)")
  done
  if [ -n "$sp" ] && port_in_use "$sp"; then busy+=("$sp (standalone)"); fi
  if [ "${#busy[@]}" -gt 0 ]; then
    die "ports already in use by processes this script did not start: ${busy[*]}; stop them or set VLP_CLUSTER_BASE_PORT / VLP_STANDALONE_PORT"
  fi

  mkdir -p "$STATE_DIR"
  touch "$STATE_DIR/$MARKER"
  : >"$STATE_DIR/pids"
  echo "${sp:-0}" >"$STATE_DIR/standalone.port"

  trap 'start_failed "interrupted"' INT TERM

  log "starting $NODES cluster nodes on $HOST:${CLUSTER_PORTS[0]}-${CLUSTER_PORTS[$((NODES - 1))]} (state in $STATE_DIR)"
  for port in "${CLUSTER_PORTS[@]}"; do
    start_node "$port" cluster || start_failed "node $port did not start"
  done
  if [ -n "$sp" ]; then
    log "starting standalone server on $HOST:$sp"
    start_node "$sp" standalone || start_failed "standalone server $sp did not start"
  fi

  local addrs=()
  for port in "${CLUSTER_PORTS[@]}"; do addrs+=("$HOST:$port"); done
  log "creating the cluster (3 primaries + 3 replicas)"
  if ! timeout 60 valkey-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$STATE_DIR/create.out" 2>&1; then
    cat "$STATE_DIR/create.out" >&2 || true
    start_failed "valkey-cli --cluster create failed"
  fi

  log "waiting up to ${WAIT_SECS}s for the cluster to become healthy"
  local deadline=$((SECONDS + WAIT_SECS))
  until cluster_healthy && standalone_healthy; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      cat "$STATE_DIR/create.out" >&2 || true
      start_failed "cluster not healthy after ${WAIT_SECS}s: $HEALTH_REASON"
    fi
    sleep 0.25
  done
  touch "$STATE_DIR/created"
  trap - INT TERM
  log "cluster is up and healthy"
  cmd_status >&2 || true
}

# ---------------------------------------------------------------------------------------
# status / env

cmd_status() {
  if [ ! -f "$STATE_DIR/$MARKER" ]; then
    echo "not running (no state in $STATE_DIR)"
    return 1
  fi
  local port pid alive repl role state
  declare -A pid_of=()
  while read -r port pid; do pid_of[$port]="$pid"; done < <(recorded_pids)
  echo "state dir: $STATE_DIR"
  printf '%-7s %-10s %-8s %-10s %-9s %s\n' PORT PID PROCESS ROLE STATE INFO
  for port in "${CLUSTER_PORTS[@]}"; do
    pid="${pid_of[$port]:-?}"
    if pid_is_ours "$pid" "$port"; then alive=up; else alive=DOWN; fi
    repl="$(vcli "$port" INFO replication || true)"
    role="$(field role <<<"$repl")"
    local info extra
    info="$(vcli "$port" CLUSTER INFO || true)"
    if [ -z "$role" ]; then
      extra="not answering"
    elif [ "$role" = slave ]; then
      extra="replica of $(field master_port <<<"$repl") link:$(field master_link_status <<<"$repl")"
      role=replica
    else
      extra="slots:$(vcli "$port" CLUSTER NODES | awk '$3 ~ /myself/ {s=""; for (i = 9; i <= NF; i++) s = s (s == "" ? "" : ",") $i; print s}' || true)"
      [ "$role" = master ] && role=primary
    fi
    state="$(field cluster_state <<<"$info")"
    printf '%-7s %-10s %-8s %-10s %-9s %s\n' "$port" "$pid" "$alive" "${role:-?}" "${state:-?}" "$extra"
  done
  local sp
  sp="$(standalone_port)"
  if [ -n "$sp" ]; then
    pid="${pid_of[$sp]:-?}"
    if pid_is_ours "$pid" "$sp"; then alive=up; else alive=DOWN; fi
    printf '%-7s %-10s %-8s %-10s %-9s %s\n' "$sp" "$pid" "$alive" standalone - \
      "ping:$(vcli "$sp" PING || true)"
  fi
  if healthy; then
    echo "healthy"
    return 0
  fi
  echo "NOT healthy: $HEALTH_REASON"
  return 1
}

cmd_env() {
  local list="" port sp
  for port in "${CLUSTER_PORTS[@]}"; do list+="${list:+,}$HOST:$port"; done
  echo "VLP_CLUSTER_ADDRS=$list"
  sp="$(standalone_port)"
  if [ -n "$sp" ]; then echo "VLP_STANDALONE_ADDR=$HOST:$sp"; fi
}

# ---------------------------------------------------------------------------------------

# One start/stop at a time per state dir (concurrent `make test` runs, a Ctrl-C'd start...).
with_lock() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR.lock"
    flock -w 180 9 || die "timed out waiting for $STATE_DIR.lock (another cluster.sh running?)"
  fi
  "$@"
}

# restart-node PORT: start a node of the running cluster again (after a test killed it), with
# its data directory and nodes.conf, so that it rejoins (as a replica, if it was failed over).
cmd_restart_node() {
  local port="${1:-}"
  [[ "$port" =~ ^[0-9]+$ ]] || die "usage: $0 restart-node PORT"
  [ -d "$(node_dir "$port")" ] || die "no node directory for port $port in $STATE_DIR"
  if [ "$(vcli "$port" PING 2>/dev/null || true)" = "PONG" ]; then
    log "node $port is running"
    return 0
  fi
  start_node "$port" cluster || die "node $port did not start again"
  log "node $port started again"
}

case "${1:-}" in
  start) with_lock cmd_start ;;
  stop) with_lock cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  restart-node) with_lock cmd_restart_node "${2:-}" ;;
  *)
    echo "usage: $0 start|stop|status|env|restart-node PORT" >&2
    exit 2
    ;;
esac
