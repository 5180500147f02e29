#!/usr/bin/env bash
# False timeouts under load and short freezes: how many executions a given heartbeat timeout
# (lease) settles as `heartbeat_timeout` or `node_lost` when nothing actually failed.
#
# Two nodes on PostgreSQL and two remote workers run a steady stream of short jobs (local and
# remote) for DURATION seconds while one condition holds:
#   cpu     stress-ng --cpu 4 on this machine for the whole run (every core oversubscribed)
#   freeze  every ~8 s a node or a worker is SIGSTOPped for FREEZE seconds, then SIGCONTed
#   idle    nothing (the baseline)
# Nothing is killed and nothing exits, so every heartbeat_timeout or node_lost is false.
# Prints one line per run; figures go to docs/BENCHMARKS.md. Not asserted.
#
#   scripts/bench_false_timeouts.sh [--lease 3s] [--condition cpu|freeze|idle]
#                                   [--freeze 2] [--duration 120]
set -euo pipefail
cd "$(dirname "$0")/.."
lease=3s condition=cpu freeze=2 duration=120
while [ $# -gt 0 ]; do
  case "$1" in
    --lease) lease=$2; shift 2 ;;
    --condition) condition=$2; shift 2 ;;
    --freeze) freeze=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
admin=${JOBWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${JOBWARD_BIN:-target/release/jobward}
[ -x "$bin" ] || cargo build --release --quiet -p jobward
bin=$(realpath "$bin")
db=jobward_false_timeouts
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" > /dev/null
url="${admin%/*}/$db"
cat > "$work/jobward.toml" <<TOML
[server]
db = "$url"
log_dir = "$work/logs"
bind = "127.0.0.1:0"
[defaults]
heartbeat_timeout = "$lease"
[[job]]
name = "tick"
command = "sleep 2"
every = "1s"
overlap = "allow"
[[job]]
name = "local"
command = "sleep 0.5"
overlap = "allow"
[[job]]
name = "remote"
command = "sleep 0.5"
overlap = "allow"
queue = "q"
TOML
# Starts node $1 (in this shell, so its pid is kept) and sets $api to its address.
start_node() {
  (cd "$work" && exec "$bin" serve --config jobward.toml --node-name "$1" > "serve-$1.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q "api=" "$work/serve-$1.log" 2>/dev/null && break; sleep 0.1; done
  api=$(grep -o 'api=[^ ]*' "$work/serve-$1.log" | head -n1 | cut -d= -f2)
  [ -n "$api" ] || { echo "node $1 did not start:" >&2; cat "$work/serve-$1.log" >&2; exit 1; }
}
start_node a; api_a=$api; node_a=${pids[-1]}
start_node b; api_b=$api; node_b=${pids[-1]}
for w in 1 2; do
  api=$api_a; [ $w = 2 ] && api=$api_b
  (cd "$work" && exec "$bin" worker --server "$api" --queue q --worker-id "w$w" --log-dir "wlogs$w" > "worker-$w.log" 2>&1) &
  pids+=($!)
done
worker_1=${pids[2]} worker_2=${pids[3]}
if [ "$condition" = cpu ]; then
  stress-ng --cpu 4 --timeout "${duration}s" --quiet &
  pids+=($!)
fi
end=$((SECONDS + duration))
next_freeze=$((SECONDS + 5))
freezes=0
while [ $SECONDS -lt $end ]; do
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -X POST "$api_a/api/jobs/local/trigger" &
    curl -s -o /dev/null -X POST "$api_b/api/jobs/remote/trigger" &
  done
  wait_curls=$(jobs -p | wc -l)
  sleep 1
  if [ "$condition" = freeze ] && [ $SECONDS -ge $next_freeze ]; then
    victims=("$node_a" "$node_b" "$worker_1" "$worker_2")
    v=${victims[$((RANDOM % 4))]}
    kill -STOP "$v"; sleep "$freeze"; kill -CONT "$v"
    freezes=$((freezes + 1))
    next_freeze=$((SECONDS + 8))
  fi
done
: "$wait_curls"
# Let what runs finish, then count.
sleep 5
q() { psql -tA "$url" -c "$1"; }
total=$(q "SELECT count(*) FROM executions WHERE finished_at IS NOT NULL")
hb=$(q "SELECT count(*) FROM executions WHERE reason = 'heartbeat_timeout'")
lost=$(q "SELECT count(*) FROM executions WHERE reason = 'node_lost'")
refused=$(q "SELECT count(*) FROM events WHERE kind = 'refused'")
rejoined=$({ grep -h -c "rejoined as a new incarnation" "$work"/serve-*.log || true; } | paste -sd+ | bc)
echo "lease=$lease condition=$condition freeze=${freeze}s duration=${duration}s freezes=$freezes executions=$total false_heartbeat_timeouts=$hb false_node_lost=$lost refused_reports=$refused node_rejoins=$rejoined"
psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null 2>&1 || true
