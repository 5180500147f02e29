#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of jobward's parsers and HTTP bodies.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 30)
#   FUZZ_TARGETS="cron config" scripts/fuzz.sh 600
#   FUZZ_TARGET_DIR=/var/cache/jobward-fuzz scripts/fuzz.sh 30     (reuse a build)
#
# Builds every target in fuzz/ (its own cargo project, not a member of the workspace), replays
# the saved crashing inputs in fuzz/regressions/<target>/, then runs each target for
# SECONDS_PER_TARGET, one after the other. Prints per target the executions run and any crash;
# exits non-zero on any crash, hang or failed replay. Crashing inputs land in
# fuzz/artifacts/<target>/, the corpus grown by the run in fuzz/corpus-work/<target>/ (both
# git-ignored); the committed seeds in fuzz/corpus/<target>/ are only read.
#
# Stable Rust works: targets are built without a sanitizer (`-s none`, which needs no
# nightly flag); the code fuzzed is safe Rust, so panics, overflow checks (`-a`), the
# targets' own assertions and libFuzzer's timeout are what find bugs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
SECS=${1:-30}
case $SECS in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
TARGETS=${FUZZ_TARGETS:-cron duration config api_bodies}
# Never the workspace's target dir: the fuzz build has its own flags and would thrash it.
# FUZZ_TARGET_DIR may point elsewhere (e.g. a cache kept between CI runs on one machine).
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$FUZZ/target}
export CARGO_TERM_COLOR=never
TRIPLE=x86_64-unknown-linux-gnu
BUILD_FLAGS=(-O -a -s none --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

start=$SECONDS
echo "== building fuzz targets: $TARGETS"
if [ -z "${FUZZ_TARGETS:-}" ]; then
  (cd "$FUZZ" && cargo fuzz build "${BUILD_FLAGS[@]}")
else
  (cd "$FUZZ" && for t in $TARGETS; do cargo fuzz build "${BUILD_FLAGS[@]}" "$t"; done)
fi
echo "== built in $((SECONDS - start))s"

failed=0
mkdir -p "$FUZZ/logs"
for t in $TARGETS; do
  bin=$CARGO_TARGET_DIR/$TRIPLE/release/$t
  log=$FUZZ/logs/$t.log
  mkdir -p "$FUZZ/corpus-work/$t" "$FUZZ/artifacts/$t" "$FUZZ/corpus/$t"

  # 1. Every input that once crashed must pass now.
  shopt -s nullglob
  saved=("$FUZZ/regressions/$t"/*)
  shopt -u nullglob
  if [ ${#saved[@]} -gt 0 ]; then
    if "$bin" -timeout=30 "${saved[@]}" >"$FUZZ/logs/$t.regressions.log" 2>&1; then
      echo "$t: ${#saved[@]} saved regression input(s) pass"
    else
      echo "$t: FAILED replaying fuzz/regressions/$t (log: fuzz/logs/$t.regressions.log)"
      grep -m1 -A1 "panicked at" "$FUZZ/logs/$t.regressions.log" ||
        grep -m1 "ERROR: libFuzzer" "$FUZZ/logs/$t.regressions.log" || true
      failed=1
    fi
  fi

  # 2. Fuzz: new inputs go to corpus-work, the committed seeds are read only.
  set +e
  "$bin" "$FUZZ/corpus-work/$t" "$FUZZ/corpus/$t" \
    -max_total_time="$SECS" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix="$FUZZ/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  corpus=$(find "$FUZZ/corpus-work/$t" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    echo "$t: ${execs:-?} executions in ${SECS}s (${rate:-?}/s), corpus-work ${corpus} inputs, no crash"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    echo "$t: CRASH after ${execs:-?} executions (exit $rc); input: ${artifact:-see log}; log: fuzz/logs/$t.log"
    grep -m1 -A1 "panicked at" "$log" || grep -m1 "ERROR: libFuzzer" "$log" || tail -n 20 "$log"
    echo "   reproduce: (cd fuzz && cargo fuzz run ${BUILD_FLAGS[*]} $t ${artifact:-ARTIFACT})"
  fi
done
echo "== fuzzing done in $((SECONDS - start))s"
exit $failed
