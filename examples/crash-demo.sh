#!/usr/bin/env bash
# Crash recovery, unattended: start jobward, start a long job, kill jobward with SIGKILL,
# show what the ledger says while no node runs, restart, and show how the restart settled it.
#
#   examples/crash-demo.sh      (uses $JOBWARD_BIN, else $CARGO_TARGET_DIR/release/jobward,
#                                default target/release/jobward, building it if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bin=${JOBWARD_BIN:-$target/release/jobward}
[ -x "$bin" ] || cargo build --release --quiet
bin=$(realpath "$bin")
work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then { kill -9 "$server"; wait "$server"; } 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
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
export JOBWARD_CONFIG="$work/jobward.toml"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, or fails the demo.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" > /dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then echo "crash-demo: gave up after ${limit}s waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}
running() { "$bin" runs list --running | grep -q long-report; }

say "start jobward and trigger a long job"
"$bin" serve > serve1.log 2>&1 &
server=$!
wait_for 30 "jobward to serve" grep -q "node serving" serve1.log
"$bin" jobs trigger long-report
wait_for 30 "the job to run" running
"$bin" runs list

say "kill -9 jobward (pid $server) while the job runs"
# (kill and wait together, so that bash's "Killed" job notice goes nowhere)
{ kill -9 "$server"; wait "$server"; } 2>/dev/null || true
server=""
sleep 0.5
echo "surviving job processes: $(pgrep -f 'sleep 600' | tr '\n' ' ' || true)"
say "the ledger still says running: nothing runs jobward to settle it"
"$bin" runs list --running

say "restart jobward: startup recovery runs before any scheduling"
"$bin" serve > serve2.log 2>&1 &
server=$!
wait_for 30 "jobward to serve again" grep -q "node serving" serve2.log
grep -E "startup recovery" serve2.log | sed 's/^/  /' || true
"$bin" runs list
"$bin" runs show 1
echo "surviving job processes: $(pgrep -f 'sleep 600' | tr '\n' ' ' || true)"
say "running executions now"
"$bin" runs list --running
"$bin" audit
kill -TERM "$server"
end=$((SECONDS + 30))
while kill -0 "$server" 2>/dev/null; do
  if [ "$SECONDS" -ge "$end" ]; then echo "crash-demo: jobward did not stop within 30s" >&2; exit 1; fi
  sleep 0.1
done
wait "$server" 2>/dev/null || true
server=""
