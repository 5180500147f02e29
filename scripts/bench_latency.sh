#!/usr/bin/env bash
# Trigger→start latency at a steady 20 jobs/s, side by side in one run:
#   jobward on a fresh SQLite file and on a fresh PostgreSQL schema: one worker long-polling
#   /api/worker/exchange (the `latency` example), triggers sent one by one through the API;
#   graphile-worker 0.17.3 with its defaults (LISTEN/NOTIFY) against the same PostgreSQL,
#   jobs added one by one with addJob.
# Latency is from the moment the trigger (addJob) was sent to the moment the worker holds the
# run, measured in the producing process. ROUNDS (3) interleaved rounds of SECONDS (20) s at
# RATE (20) jobs/s; p50 and p99 of each round. Printed, not asserted.
#
#   scripts/bench_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${JOBWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
rate=${RATE:-20}
seconds=${SECONDS_EACH:-20}
rounds=${ROUNDS:-3}
cargo build --release --quiet -p jobward
cargo build --release --quiet -p jobward-worker --example latency
bin=$(pwd)/target/release/jobward
lat=$(pwd)/target/release/examples/latency
script=$(pwd)/scripts/bench_graphile_latency.js
work=$(mktemp -d)
declare -A server api
cleanup() {
  for p in "${server[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. scripts/bench_lib.sh
bench_graphile
psql_run() { PGOPTIONS="-c client_min_messages=warning" psql -q "$pg" -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }

start_server() {
  local name=$1 url=$2 dir=$work/$1 port
  port=$(bench_port)
  mkdir -p "$dir"
  cat > "$dir/jobward.toml" <<TOML
[server]
db = "$url"
log_dir = "$dir/logs"
bind = "127.0.0.1:$port"
[[job]]
name = "noop"
queue = "fast"
command = "true"
overlap = "allow"
TOML
  api[$name]="http://127.0.0.1:$port"
  bench_serve "$dir" "${api[$name]}"
  server[$name]=$bench_pid
}

psql_run "drop schema if exists jobward_bench_lat cascade; create schema jobward_bench_lat"
start_server sqlite "sqlite://$work/sqlite/bench.db"
start_server postgres "$pg?options=-c%20search_path%3Djobward_bench_lat"
out=()
for r in $(seq 1 "$rounds"); do
  for n in sqlite postgres; do
    out+=("round $r $n: $("$lat" "${api[$n]}" noop fast "$rate" "$seconds")")
  done
  out+=("round $r $(NODE_PATH="$gw/node_modules" node "$script" "$pg" jobward_bench_lat_graphile "$rate" "$seconds")")
done
printf '%s\n' "${out[@]}"
psql_run "drop schema if exists jobward_bench_lat cascade; drop schema if exists jobward_bench_lat_graphile cascade"
