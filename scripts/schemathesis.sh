#!/usr/bin/env bash
# Property-based API testing with schemathesis (from PyPI) against a live jobward server:
# every operation of /api/openapi.json with generated valid and invalid inputs. It must find
# 0 server errors and 0 responses that break the schema.
#
#   scripts/schemathesis.sh [EXTRA SCHEMATHESIS ARGS]
set -uo pipefail
cd "$(dirname "$0")/.."
venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
cargo build --quiet
bin=$(pwd)/target/debug/jobward
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/jobward.toml" <<TOML
[[token]]
name = "ops"
role = "operate"
secret = "schemathesis-operate-0123456789"
[[token]]
name = "root"
role = "admin"
secret = "schemathesis-admin-0123456789"
[[token]]
name = "worker"
role = "worker"
secret = "schemathesis-worker-0123456789"
[server]
db = "sqlite://$work/st.db"
log_dir = "$work/logs"
bind = "127.0.0.1:0"
[concurrency]
k = 2
[[job]]
name = "a"
command = "true"
[[job]]
name = "remote"
queue = "q1"
command = "true"
[[job]]
name = "keyed"
command = "sleep 0.2"
concurrency_key = "k"
every = "2s"
TOML
(cd "$work" && exec "$bin" serve --config jobward.toml > serve.log 2>&1) &
server=$!
for _ in $(seq 1 100); do grep -q "api=" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
api=$(grep -o 'api=[^ ]*' "$work/serve.log" | head -n1 | cut -d= -f2)
echo "jobward at $api"
# A few executions so that reads have something to show.
operate="Authorization: Bearer schemathesis-operate-0123456789"
worker="Authorization: Bearer schemathesis-worker-0123456789"
admin="Authorization: Bearer schemathesis-admin-0123456789"
for _ in 1 2 3; do curl -s -H "$operate" -X POST "$api/api/jobs/a/trigger" > /dev/null; done
# The document needs the read role; fetch it once so the worker run can use it too.
curl -sf -H "$operate" "$api/api/openapi.json" > "$work/openapi.json"
run() {
  SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH=. "$venv/bin/schemathesis" run "$work/openapi.json" --url "$api" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-60}" --seed "${SCHEMATHESIS_SEED:-1}" --request-timeout 40 \
    --report-dir "$work/report" "$@"
}
status=0
echo "== the API, as an admin (everything an operator may, and defining jobs)"
run -H "$admin" --exclude-tag worker "$@" || status=1
echo "== the worker protocol, as a worker"
run -H "$worker" --include-tag worker "$@" || status=1
if grep -qi "panicked" "$work/serve.log"; then echo "the server panicked:" >&2; grep -i panicked "$work/serve.log" >&2; exit 1; fi
exit $status
