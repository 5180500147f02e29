// Reference workload for scripts/bench_throughput.sh: the same no-op claim→complete run on
// graphile-worker, against the same PostgreSQL, so the figures of one run are comparable.
//
//   node bench_graphile.js CONNECTION_STRING SCHEMA COUNT CONCURRENCY [batched]
//
// Queues COUNT jobs with one addJobs call, then times one worker process (concurrency
// CONCURRENCY, a task that does nothing) until the jobs table is empty. "batched" turns on
// graphile-worker's local queue (size 500, as in its performance docs) and batched completion.
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

// Per-job INFO lines would dominate a no-op workload; only errors are printed.
const quiet = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});

async function main() {
  const [connectionString, schema, countArg, concurrencyArg, mode] = process.argv.slice(2);
  const count = Number(countArg);
  const concurrency = Number(concurrencyArg);
  if (!connectionString || !schema || !(count > 0) || !(concurrency > 0)) {
    throw new Error("usage: bench_graphile.js CONNECTION_STRING SCHEMA COUNT CONCURRENCY [batched]");
  }
  const utils = await makeWorkerUtils({ connectionString, schema, logger: quiet });
  await utils.migrate();
  await utils.withPgClient((c) => c.query(`delete from ${schema}._private_jobs`));
  const specs = Array.from({ length: count }, () => ({ identifier: "noop", payload: {} }));
  const enqueueStarted = process.hrtime.bigint();
  await utils.addJobs(specs);
  const enqueueSecs = Number(process.hrtime.bigint() - enqueueStarted) / 1e9;
  console.log(`enqueued ${count} (addJobs) in ${enqueueSecs.toFixed(2)}s: ${Math.round(count / enqueueSecs)} triggers/s`);
  const remaining = () =>
    utils.withPgClient(async (c) => Number((await c.query(`select count(*) from ${schema}._private_jobs`)).rows[0].count));

  const worker = { connectionString, schema, concurrentJobs: concurrency, maxPoolSize: Math.max(10, concurrency + 2) };
  if (mode === "batched") {
    worker.localQueue = { size: 500 };
    worker.completeJobBatchDelay = 0;
    worker.failJobBatchDelay = 0;
  }
  const started = process.hrtime.bigint();
  const runner = await run({
    preset: { worker },
    noHandleSignals: true,
    logger: quiet,
    taskList: { noop: async () => {} },
  });
  while ((await remaining()) > 0) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  await utils.release();
  console.log(`${count} jobs in ${secs.toFixed(2)}s at concurrency ${concurrency}: ${Math.round(count / secs)} jobs/s`);
}

main().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
