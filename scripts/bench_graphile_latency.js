// Trigger→start latency on graphile-worker at a steady rate, for scripts/bench_latency.sh:
// one worker with default settings (it learns of new jobs through LISTEN/NOTIFY), and a
// producer adding one job every 1000/RATE ms for SECONDS seconds. Each job carries the time it
// was added; its task records how long it waited to start (same process, same clock).
//
//   node bench_graphile_latency.js CONNECTION_STRING SCHEMA RATE SECONDS
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

const quiet = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  const [connectionString, schema, rateArg, secondsArg] = process.argv.slice(2);
  const rate = Number(rateArg);
  const seconds = Number(secondsArg);
  const utils = await makeWorkerUtils({ connectionString, schema, logger: quiet });
  await utils.migrate();
  await utils.withPgClient((c) => c.query(`delete from ${schema}._private_jobs`));
  const waits = [];
  const runner = await run({
    preset: { worker: { connectionString, schema, concurrentJobs: 10 } },
    noHandleSignals: true,
    logger: quiet,
    taskList: {
      noop: async (payload) => {
        waits.push(Number(process.hrtime.bigint() - BigInt(payload.t)) / 1e6);
      },
    },
  });
  await new Promise((r) => setTimeout(r, 1000));
  const total = rate * seconds;
  const every = 1000 / rate;
  const started = Date.now();
  for (let i = 0; i < total; i++) {
    const due = started + i * every;
    const now = Date.now();
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
    await utils.addJob("noop", { t: process.hrtime.bigint().toString() });
  }
  const deadline = Date.now() + 10000;
  while (waits.length < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await runner.stop();
  await utils.release();
  const sorted = waits.slice().sort((a, b) => a - b);
  console.log(
    `graphile-worker ${sorted.length}/${total} jobs at ${rate}/s: p50 ${pct(sorted, 50).toFixed(1)} ms p99 ${pct(sorted, 99).toFixed(1)} ms`
  );
}

main().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
