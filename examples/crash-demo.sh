#!/usr/bin/env bash
# Crash recovery, unattended: start jobward, start a long job, kill jobward with SIGKILL,
# show what the ledger says while no node runs, restart, and show how the restart settled it.
#
#   examples/crash-demo.sh            (uses target/release/jobward, building it if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${JOBWARD_BIN:-target/release/jobward}
[ -x "$bin" ] || cargo build --release --quiet
bin=$(realpath "$bin")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/jobward.toml" <<TOML
[server]
db = "sqlite://$work/demo.db"
log_dir = "$work/logs"
bind = "127.0.0.1:0"
[[job]]
name = "long-report"
command = "echo 'building a long report...'; sleep 600"
TOML
cd "$work"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "start jobward and trigger a long job"
"$bin" serve > serve1.log 2>&1 &
server=$!
until grep -q "node serving" serve1.log; do sleep 0.1; done
"$bin" jobs trigger long-report
until "$bin" runs list --running | grep -q long-report; do sleep 0.1; done
"$bin" runs list

say "kill -9 jobward (pid $server) while the job runs"
kill -9 "$server"; wait "$server" 2>/dev/null || true
sleep 0.5
echo "surviving job processes: $(pgrep -f 'sleep 600' | tr '\n' ' ')"
say "the ledger still says running: nothing runs jobward to settle it"
"$bin" runs list --running

say "restart jobward: startup recovery runs before any scheduling"
"$bin" serve > serve2.log 2>&1 &
server=$!
until grep -q "node serving" serve2.log; do sleep 0.1; done
grep -E "startup recovery" serve2.log | sed 's/^/  /' || true
"$bin" runs list
"$bin" runs show 1
echo "surviving job processes: $(pgrep -f 'sleep 600' | tr '\n' ' ' || true)"
say "running executions now"
"$bin" runs list --running
"$bin" audit
kill -TERM "$server"; wait "$server" || true
