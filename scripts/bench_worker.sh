#!/usr/bin/env bash
# Measures, against a release server with default settings on SQLite:
#  1. time from a remote worker's SIGKILL to its execution's terminal record (5 runs);
#  2. no-op claim→complete throughput through the worker protocol, one process at
#     concurrency 10 (protocol only, no child process; median of 3 runs);
#  3. the same through `jobward worker --concurrency 10`, each execution running `true`.
# Figures are printed, not asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p jobward
cargo build --release --quiet -p jobward-worker --example noop_worker
bin=$(pwd)/target/release/jobward
noop=$(pwd)/target/release/examples/noop_worker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
count=${COUNT:-3000}
cat > "$work/jobward.toml" <<TOML
[server]
db = "sqlite://$work/bench.db"
log_dir = "$work/logs"
bind = "127.0.0.1:0"
[[job]]
name = "noop"
queue = "fast"
command = "true"
overlap = "allow"
history = { keep_last = 100000 }
[[job]]
name = "spawn"
queue = "spawn"
command = "true"
overlap = "allow"
history = { keep_last = 100000 }
[[job]]
name = "victim"
queue = "victim"
command = "sleep 600"
overlap = "allow"
TOML
(cd "$work" && exec "$bin" serve --config jobward.toml > serve.log 2>&1) &
pids+=($!)
for _ in $(seq 1 100); do grep -q "api=" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
api=$(grep -o 'api=[^ ]*' "$work/serve.log" | head -n1 | cut -d= -f2)
echo "server: $api (defaults: heartbeat_timeout 3s, reaper every 1s)"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "== 1. remote worker SIGKILL -> terminal record"
for i in 1 2 3 4 5; do
  "$bin" worker --server "$api" --queue victim --worker-id "victim-$i" --log-dir "$work/wlogs" > "$work/w$i.log" 2>&1 &
  w=$!; pids+=($w)
  id=$(curl -s -X POST "$api/api/jobs/victim/trigger" | json 'd["execution"]["id"]')
  until [ "$(curl -s "$api/api/executions/$id" | json 'd["status"]')" = running ]; do sleep 0.05; done
  sleep 1.5
  killed=$(python3 -c 'import time; print(time.time())')
  kill -9 "$w"
  until [ "$(curl -s "$api/api/executions/$id" | json 'd["status"]')" = timed_out ]; do sleep 0.02; done
  curl -s "$api/api/executions/$id" | python3 -c "
import json,sys,datetime
d=json.load(sys.stdin)
f=datetime.datetime.fromisoformat(d['finished_at'].replace('Z','+00:00')).timestamp()
print(f'  run $i: {f-$killed:.2f}s ({d[\"reason\"]})')"
done

echo "== 2. protocol only: $count no-op executions, one process, concurrency 10"
for run in 1 2 3; do
  "$noop" "$api" noop fast "$count" 10 2>/dev/null | sed "s/^/  run $run: /"
done

echo "== 3. jobward worker --concurrency 10, each execution runs \`true\`"
spawn_count=${SPAWN_COUNT:-1000}
for run in 1 2 3; do
  "$noop" "$api" spawn spawn "$spawn_count" 0 2>/dev/null
  start=$(python3 -c 'import time; print(time.time())')
  "$bin" worker --server "$api" --queue spawn --concurrency 10 --worker-id "spawn-$run" --log-dir "$work/slogs" > "$work/s$run.log" 2>&1 &
  w=$!; pids+=($w)
  until [ "$(curl -s "$api/api/executions?job=spawn&status=queued,running&limit=1" | json 'len(d["executions"])')" = 0 ]; do sleep 0.05; done
  python3 -c "import time; s=time.time()-$start; print(f'  run $run: $spawn_count executions in {s:.2f}s: {$spawn_count/s:.0f} jobs/s')"
  kill -TERM "$w"; wait "$w" 2>/dev/null || true
done
