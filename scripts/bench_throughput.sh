#!/usr/bin/env bash
# No-op claim→complete throughput, measured in one run so the figures compare:
#   jobward through the worker protocol (one `noop_worker` process, no child processes) on a
#   fresh SQLite file and on a fresh PostgreSQL schema, at concurrency 10 and 50;
#   graphile-worker 0.17.3 (npm) against the same PostgreSQL, default settings and with its
#   batching options (local queue 500, batched completion), at concurrency 10 and 50.
# Each figure is the median of 3 runs of COUNT jobs (default 3000). Printed, not asserted.
#
#   scripts/bench_throughput.sh            # PostgreSQL from JOBWARD_BENCH_POSTGRES or the local one
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${JOBWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
count=${COUNT:-3000}
cargo build --release --quiet -p jobward
cargo build --release --quiet -p jobward-worker --example noop_worker
bin=$(pwd)/target/release/jobward
noop=$(pwd)/target/release/examples/noop_worker
script=$(pwd)/scripts/bench_graphile.js
work=$(mktemp -d)
server=""
api=""
cleanup() { [ -n "$server" ] && kill -9 "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

gw=${GRAPHILE_DIR:-$work/gw}
if [ ! -d "$gw/node_modules/graphile-worker" ]; then
  mkdir -p "$gw"
  (cd "$gw" && npm init -y > /dev/null && npm install --silent graphile-worker@0.17.3 > /dev/null)
fi

median() { sort -n | sed -n 2p; }
psql_run() { PGOPTIONS="-c client_min_messages=warning" psql -q "$pg" -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }

# One server per backend, on the store URL $1; sets $server and $api.
start_server() {
  cat > "$work/jobward.toml" <<TOML
[server]
db = "$1"
log_dir = "$work/logs"
bind = "127.0.0.1:0"
[[job]]
name = "noop"
queue = "fast"
command = "true"
overlap = "allow"
history = { keep_last = 1000000 }
TOML
  : > "$work/serve.log"
  (cd "$work" && exec "$bin" serve --config jobward.toml > serve.log 2>&1) &
  server=$!
  for _ in $(seq 1 100); do grep -q "api=" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
  api=$(grep -o 'api=[^ ]*' "$work/serve.log" | head -n1 | cut -d= -f2)
}
stop_server() { kill -TERM "$server"; wait "$server" 2>/dev/null || true; server=""; }

results=()
jobward_backend() {
  local name=$1 url=$2
  start_server "$url"
  for c in 10 50; do
    local runs=()
    for run in 1 2 3; do
      runs+=("$("$noop" "$api" noop fast "$count" "$c" 2>/dev/null | grep -o '[0-9]* jobs/s' | cut -d' ' -f1)")
    done
    local m; m=$(printf '%s\n' "${runs[@]}" | median)
    echo "jobward, $name, concurrency $c: ${runs[*]} -> median $m jobs/s"
    results+=("jobward $name c=$c: $m")
  done
  stop_server
}

jobward_backend sqlite "sqlite://$work/bench.db"
psql_run "drop schema if exists jobward_bench cascade; create schema jobward_bench"
jobward_backend postgres "$pg?options=-c%20search_path%3Djobward_bench"
psql_run "drop schema if exists jobward_bench cascade"

for mode in default batched; do
  for c in 10 50; do
    runs=()
    for run in 1 2 3; do
      runs+=("$(NODE_PATH="$gw/node_modules" node "$script" "$pg" jobward_bench_graphile "$count" "$c" "$mode" | grep -o '[0-9]* jobs/s' | cut -d' ' -f1)")
    done
    m=$(printf '%s\n' "${runs[@]}" | median)
    echo "graphile-worker 0.17.3, $mode, concurrency $c: ${runs[*]} -> median $m jobs/s"
    results+=("graphile $mode c=$c: $m")
  done
done
psql_run "drop schema if exists jobward_bench_graphile cascade"
printf '%s\n' "${results[@]}"
