# Shared by the benchmark scripts (sourced, not run): a free loopback port, a release server
# started and waited for, and graphile-worker installed once into a cache directory.

# A free port on 127.0.0.1.
bench_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts `$bin serve` with DIR/jobward.toml (whose bind is API's port) in DIR, logging
# warnings only (a line per execution would cost the server more than the ledger does), and
# waits until API/readyz answers. Sets bench_pid (in this shell: do not call it in $(...)).
bench_serve() {
  local dir=$1 api=$2
  (cd "$dir" && JOBWARD_LOG=warn exec "$bin" serve --config jobward.toml > serve.log 2>&1) &
  bench_pid=$!
  for _ in $(seq 1 100); do curl -fsS "$api/readyz" > /dev/null 2>&1 && return; sleep 0.1; done
  echo "the server in $dir did not start:" >&2
  cat "$dir/serve.log" >&2
  exit 1
}

# graphile-worker 0.17.3 from npm, installed once; sets gw to its directory.
bench_graphile() {
  gw=${GRAPHILE_DIR:-$HOME/.cache/jobward-bench/graphile}
  if [ ! -d "$gw/node_modules/graphile-worker" ]; then
    mkdir -p "$gw"
    (cd "$gw" && npm init -y > /dev/null && npm install --silent graphile-worker@0.17.3 > /dev/null)
  fi
}
