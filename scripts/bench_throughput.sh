#!/usr/bin/env bash
# No-op claim→complete throughput and bulk enqueue, side by side in one run:
#   jobward through the worker protocol (one `noop_worker` process, no child process) on a
#   fresh SQLite file and on a fresh PostgreSQL schema:
#     batched      bulk enqueue (POST /api/triggers, 1,000 per request), then CONCURRENCY loops
#                  each calling /api/worker/exchange (complete the last batch, claim BATCH more)
#     one-by-one   claim one, complete it (the protocol without batching)
#   graphile-worker 0.17.3 (npm) against the same PostgreSQL: addJobs, then its defaults, and
#   its batching options (local queue 500, batched completion).
# Every system runs once per round and rounds are interleaved (ROUNDS, default 3, of COUNT,
# default 10000, jobs); figures are medians. For jobward it also prints the server's CPU time
# (user+sys) per job, statements and write transactions per job (from /metrics), and event rows
# per execution in the ledger. Printed, not asserted: this machine is shared and noisy, so
# compare the figures of one run with each other.
#
#   scripts/bench_throughput.sh     # PostgreSQL from JOBWARD_BENCH_POSTGRES or the local one
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${JOBWARD_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
count=${COUNT:-10000}
rounds=${ROUNDS:-3}
concurrency=${CONCURRENCY:-10}
batch=${BATCH:-50}
cargo build --release --quiet -p jobward
cargo build --release --quiet -p jobward-worker --example noop_worker
bin=$(pwd)/target/release/jobward
noop=$(pwd)/target/release/examples/noop_worker
script=$(pwd)/scripts/bench_graphile.js
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

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
psql_run() { PGOPTIONS="-c client_min_messages=warning" psql -q "$pg" -v ON_ERROR_STOP=1 -c "$1" > /dev/null; }
psql_val() { psql -qtA "$pg" -c "$1"; }
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -fsS "$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

# One server per backend, named $1, on the store URL $2.
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
history = { keep_last = 10000000 }
TOML
  api[$name]="http://127.0.0.1:$port"
  bench_serve "$dir" "${api[$name]}"
  server[$name]=$bench_pid
}

declare -A results enqueue cpu stmts commits
run_jobward() {
  local name=$1 mode=$2 key="$1 $2" args=()
  [ "$mode" = batched ] && args=(--batch "$batch")
  local a=${api[$name]} pid=${server[$name]}
  local c0 s0 t0
  c0=$(cpu_ticks "$pid"); s0=$(metric "$a" jobward_database_statements_total); t0=$(metric "$a" jobward_database_commits_total)
  local out
  out=$("$noop" "$a" noop fast "$count" "$concurrency" "${args[@]}")
  local c1 s1 t1
  c1=$(cpu_ticks "$pid"); s1=$(metric "$a" jobward_database_statements_total); t1=$(metric "$a" jobward_database_commits_total)
  results[$key]+="$(grep -o '[0-9]* jobs/s' <<<"$out" | cut -d' ' -f1) "
  [ "$mode" = batched ] && enqueue[$name]+="$(grep -o '[0-9]* triggers/s' <<<"$out" | cut -d' ' -f1) "
  cpu[$key]+="$(awk -v d=$((c1 - c0)) -v t="$tck" -v n="$count" 'BEGIN {printf "%.1f", d / t / n * 1e6}') "
  stmts[$key]+="$(awk -v d="$(awk -v a="$s0" -v b="$s1" 'BEGIN{print b-a}')" -v n="$count" 'BEGIN {printf "%.2f", d / n}') "
  commits[$key]+="$(awk -v d="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" -v n="$count" 'BEGIN {printf "%.3f", d / n}') "
}

run_graphile() {
  local mode=$1 out
  out=$(NODE_PATH="$gw/node_modules" node "$script" "$pg" jobward_bench_graphile "$count" "$concurrency" "$mode")
  results["graphile $mode"]+="$(grep -o '[0-9]* jobs/s' <<<"$out" | cut -d' ' -f1) "
  [ "$mode" = batched ] && enqueue[graphile]+="$(grep -o '[0-9]* triggers/s' <<<"$out" | cut -d' ' -f1) "
  return 0
}

psql_run "drop schema if exists jobward_bench cascade; create schema jobward_bench"
start_server sqlite "sqlite://$work/sqlite/bench.db"
start_server postgres "$pg?options=-c%20search_path%3Djobward_bench"

for r in $(seq 1 "$rounds"); do
  echo "round $r of $rounds ($count jobs each, concurrency $concurrency, batch $batch)" >&2
  run_jobward sqlite batched
  run_jobward postgres batched
  run_graphile batched
  run_jobward sqlite one-by-one
  run_jobward postgres one-by-one
  run_graphile default
done

events_sqlite=$(python3 - "$work/sqlite/bench.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
e = c.execute("select count(*) from events").fetchone()[0]
x = c.execute("select count(*) from executions").fetchone()[0]
print(f"{e / x:.2f}")
PY
)
events_pg=$(psql_val "select round(count(*)::numeric / (select count(*) from jobward_bench.executions), 2) from jobward_bench.events")

line() { # label, key
  local k=$2
  printf '%-36s %-30s median %6s jobs/s' "$1" "${results[$k]}" "$(tr ' ' '\n' <<<"${results[$k]}" | grep . | median)"
  if [ -n "${cpu[$k]:-}" ]; then
    printf '  | CPU %s µs/job, %s statements/job, %s commits/job' \
      "$(tr ' ' '\n' <<<"${cpu[$k]}" | grep . | median)" \
      "$(tr ' ' '\n' <<<"${stmts[$k]}" | grep . | median)" \
      "$(tr ' ' '\n' <<<"${commits[$k]}" | grep . | median)"
  fi
  echo
}
echo
echo "claim→complete, $count no-op jobs, concurrency $concurrency ($rounds interleaved rounds):"
line "jobward SQLite, batched (exchange)" "sqlite batched"
line "jobward PostgreSQL, batched" "postgres batched"
line "graphile-worker 0.17.3, batched" "graphile batched"
line "jobward SQLite, one-by-one" "sqlite one-by-one"
line "jobward PostgreSQL, one-by-one" "postgres one-by-one"
line "graphile-worker 0.17.3, defaults" "graphile default"
echo
echo "bulk enqueue of $count (jobward: /api/triggers, 1,000 per request; graphile: one addJobs call):"
for k in sqlite postgres graphile; do
  printf '%-10s %-30s median %6s triggers/s\n' "$k" "${enqueue[$k]}" "$(tr ' ' '\n' <<<"${enqueue[$k]}" | grep . | median)"
done
echo
echo "event rows per execution in the ledger: SQLite $events_sqlite, PostgreSQL $events_pg"
for n in "${!server[@]}"; do kill -TERM "${server[$n]}"; done
wait 2>/dev/null || true
server=()
psql_run "drop schema if exists jobward_bench cascade; drop schema if exists jobward_bench_graphile cascade"
