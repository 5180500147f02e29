#!/usr/bin/env bash
# Tests the TypeScript SDK (clients/typescript) against a real `jobward serve`:
# npm ci, build (types generated from the committed openapi.json), npm pack, install the
# tarball into a fresh project the way a user does, and run its tests (node --test) there.
#
#   JOBWARD_BIN=target/debug/jobward scripts/test_sdk_typescript.sh
#
# The server binary comes from $JOBWARD_BIN (default target/debug/jobward); this script never
# builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${JOBWARD_BIN:-target/debug/jobward}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "test_sdk_typescript: the jobward binary is missing at $bin: build it (cargo build) or set JOBWARD_BIN" >&2
  exit 2
fi
export JOBWARD_BIN="$bin"
command -v node > /dev/null || { echo "test_sdk_typescript: node (>= 20) is required" >&2; exit 2; }
node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("test_sdk_typescript: node >= 20 is required, not " + process.version); process.exit(2) }'

start=$(date +%s)
sdk="$root/clients/typescript"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$sdk"
echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== npm run build"
npm run --silent build
echo "== npm pack"
tarball=$(npm pack --silent --ignore-scripts --pack-destination "$work" | tail -n1)
tar -tzf "$work/$tarball" | sort | sed 's/^/   /'

echo "== install $tarball into a fresh project"
mkdir -p "$work/project"
cd "$work/project"
printf '{"name":"jobward-sdk-test","private":true,"type":"module"}\n' > package.json
npm install --no-audit --no-fund --loglevel=error "$work/$tarball"
cp -R "$sdk/test" "$work/project/test"
# The installed package type-checks for a TypeScript user.
cat > consumer.ts <<'TS'
import { Client, Worker, JobwardError, LeaseLost, Cancelled, type Context, type ExecutionView, type JobDefinition } from "@jobward/client";
const client = new Client({ server: "http://127.0.0.1:8080", token: "t" });
const worker = new Worker({ server: client.server, queues: ["q"], concurrency: 2, runCommands: false });
worker.handle("send-report", async (ctx: Context) => {
  ctx.progress(0.4, { phase: "upload" });
  await ctx.checkpoint({ page: 7 });
  const e: ExecutionView = await client.execution(ctx.executionId);
  if (ctx.signal.reason instanceof Cancelled || ctx.signal.reason instanceof LeaseLost) throw ctx.signal.reason;
  return e.status;
});
const definition: JobDefinition = { queue: "q", retry: { max_attempts: 3 } };
export const define = async () => (await client.putJob("send-report", definition)).job.source;
export const check = (e: unknown) => e instanceof JobwardError && e.code === "lease_lost" && e.status === 409;
TS
"$sdk/node_modules/.bin/tsc" --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 \
  --types node --typeRoots "$sdk/node_modules/@types" consumer.ts

echo "== node --test (against $JOBWARD_BIN)"
node --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
echo "== the TypeScript SDK passed in $(( $(date +%s) - start )) s"
