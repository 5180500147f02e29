#!/usr/bin/env bash
# Local `true` jobs against this machine's spawn rate, side by side in one run:
#   spawn rate   `sh -c true` in its own process group, CONCURRENCY threads (the baseline), and
#                the same under jobward's per-execution supervisor (crates/exec spawn_rate)
#   node         a release `jobward serve` on a fresh SQLite file running COUNT executions of
#                `command = "true"` (bulk-enqueued through POST /api/triggers), max_running 64
#   worker       the same server and `jobward worker --concurrency CONCURRENCY` running COUNT
#                executions of a queue job whose command is `true`
# Each figure is COUNT divided by the time from the first trigger to the last terminal record
# (read from the ledger). ROUNDS (3) interleaved rounds; medians. Printed, not asserted.
#
#   scripts/bench_local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-3000}
rounds=${ROUNDS:-3}
concurrency=${CONCURRENCY:-16}
cargo build --release --quiet -p jobward
cargo build --release --quiet -p jobward-exec --example spawn_rate
bin=$(pwd)/target/release/jobward
spawn=$(pwd)/target/release/examples/spawn_rate
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/bench_lib.sh
port=$(bench_port)
api="http://127.0.0.1:$port"
cat > "$work/jobward.toml" <<TOML
[server]
db = "sqlite://$work/bench.db"
log_dir = "$work/logs"
bind = "127.0.0.1:$port"
max_running = 64
[[job]]
name = "local-true"
command = "true"
overlap = "allow"
history = { keep_last = 10000000 }
[[job]]
name = "worker-true"
command = "true"
queue = "q"
overlap = "allow"
history = { keep_last = 10000000 }
TOML
bench_serve "$work" "$api"
pids+=("$bench_pid")
(cd "$work" && JOBWARD_LOG=warn exec "$bin" worker --server "$api" --queue q --concurrency "$concurrency" --log-dir wlogs > worker.log 2>&1) &
pids+=($!)

# Enqueues COUNT executions of job $1 and prints the rate from the first trigger to the last
# terminal record.
run_jobs() {
  python3 - "$api" "$1" "$count" "$work/bench.db" <<'PY'
import json, sqlite3, sys, time, urllib.request
api, job, count, db = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = sqlite3.connect(db)
def done():
    return c.execute("SELECT count(*) FROM executions WHERE job = ? AND finished_at IS NOT NULL", (job,)).fetchone()[0]
before = done()
t = time.monotonic()
left = count
while left:
    n = min(left, 1000)
    body = json.dumps({"triggers": [{"job": job}] * n}).encode()
    req = urllib.request.Request(api + "/api/triggers", body, {"Content-Type": "application/json"})
    r = json.load(urllib.request.urlopen(req))
    assert all(x["result"] == "accepted" for x in r["results"]), r
    left -= n
while done() - before < count:
    time.sleep(0.02)
elapsed = time.monotonic() - t
bad = c.execute("SELECT count(*) FROM executions WHERE job = ? AND state <> 'completed'", (job,)).fetchone()[0]
assert bad == 0, f"{bad} executions of {job} did not complete"
print(f"{count / elapsed:.0f}")
PY
}

declare -A results
for r in $(seq 1 "$rounds"); do
  echo "round $r of $rounds ($count jobs each, concurrency $concurrency)" >&2
  out=$("$spawn" "$count" "$concurrency")
  results[bare]+="$(sed -E 's/.*own group ([0-9]+)\/s.*/\1/' <<<"$out") "
  results[supervised]+="$(sed -E 's/.*with a log ([0-9]+)\/s.*/\1/' <<<"$out") "
  results[node]+="$(run_jobs local-true) "
  results[worker]+="$(run_jobs worker-true) "
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "local \`true\` jobs, $count per round, $rounds interleaved rounds (medians):"
for k in bare supervised node worker; do
  printf '%-58s %-22s median %6s/s\n' "$(case $k in
    bare) echo "sh -c true in its own process group ($concurrency threads)" ;;
    supervised) echo "the same under jobward's supervisor, with a log" ;;
    node) echo "jobward serve, local executions (max_running 64)" ;;
    worker) echo "jobward worker --concurrency $concurrency" ;;
  esac)" "${results[$k]}" "$(median <<<"${results[$k]}")"
done
