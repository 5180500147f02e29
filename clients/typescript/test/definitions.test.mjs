// Jobs defined at run time through the API (role "admin"): putJob, patchJob, deleteJob, and the
// operate calls that come with them (backfill, reschedule), against a real `jobward serve`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client, JobwardError, Worker } from "@jobward/client";
import { ADMIN_TOKEN, ADMIN_TOKEN_NAME, OPERATE_TOKEN, WORKER_TOKEN, job, startServer } from "./harness.mjs";

let server;
let admin;
let client;

before(async () => {
  // No `[server] api_commands`: the API may define handler jobs only. One job of the file.
  server = await startServer(job("file-job", "ts-defs-file"));
  admin = new Client({ server: server.api, token: ADMIN_TOKEN });
  client = new Client({ server: server.api, token: OPERATE_TOKEN });
});
after(async () => server && (await server.stop()));

describe("job definitions", () => {
  test("a handler job defined with putJob is run by a worker's handler, recorded, and deleted", async () => {
    const put = await admin.putJob("api-report", { queue: "ts-defs", retry: { max_attempts: 2 } });
    assert.equal(put.created, true);
    assert.equal(put.job.name, "api-report");
    assert.equal(put.job.source, "api");
    assert.equal(put.job.command, "");
    assert.equal(put.definition.queue, "ts-defs");
    assert.equal(put.definition.retry?.max_attempts, 2);

    let seen;
    const worker = new Worker({
      server: server.api,
      token: WORKER_TOKEN,
      queues: ["ts-defs"],
      waitMs: 1000,
      handleSignals: false,
      logger: null,
      workerId: "ts-defs-worker",
    });
    worker.handle("api-report", async (ctx) => {
      seen = { job: ctx.job, payload: ctx.payload, maxAttempts: ctx.maxAttempts };
    });
    const running = worker.run();
    let done;
    try {
      const t = await client.trigger("api-report", { payload: { to: "ops@example.com" } });
      done = await client.waitFor(t.execution.id, { timeoutMs: 15_000 });
    } finally {
      await worker.stop();
    }
    const report = await running;
    assert.equal(done.status, "completed", JSON.stringify(done));
    assert.equal(done.lease_owner, "ts-defs-worker");
    assert.deepEqual(seen, { job: "api-report", payload: { to: "ops@example.com" }, maxAttempts: 2 });
    assert.equal(report.completed, 1);

    const detail = await client.job("api-report");
    assert.equal(detail.job.source, "api");
    assert.equal(detail.definition.queue, "ts-defs");
    const created = (detail.changes ?? []).filter((c) => c.action === "created");
    assert.equal(created.length, 1, JSON.stringify(detail.changes));
    assert.equal(created[0].actor, `api:${ADMIN_TOKEN_NAME}`);
    assert.equal(created[0].before ?? null, null);
    assert.equal(created[0].after?.queue, "ts-defs");
    assert.ok(!Number.isNaN(Date.parse(created[0].at)));

    const deleted = await admin.deleteJob("api-report");
    assert.deepEqual(deleted, { name: "api-report", cancelled: [] });
    const gone = await client.job("api-report");
    assert.equal(gone.job.defined, false);
    assert.equal(gone.changes?.[0]?.action, "deleted");
    assert.equal(gone.changes?.[0]?.actor, `api:${ADMIN_TOKEN_NAME}`);
    const refused = await client.trigger("api-report").catch((e) => e);
    assert.ok(refused instanceof JobwardError, String(refused));
  });

  test("putJob with a command is forbidden without [server] api_commands; other refusals", async () => {
    const forbidden = await admin.putJob("api-command", { command: "echo hi", queue: "ts-defs" }).catch((e) => e);
    assert.ok(forbidden instanceof JobwardError, String(forbidden));
    assert.equal(forbidden.code, "forbidden");
    assert.equal(forbidden.status, 403);
    assert.match(forbidden.message, /api_commands/);
    const missing = await client.job("api-command").catch((e) => e);
    assert.equal(missing.code, "not_found", "a refused definition creates nothing");

    // Defining jobs needs the admin role.
    const operate = await client.putJob("api-x", { queue: "ts-defs" }).catch((e) => e);
    assert.equal(operate.code, "forbidden");
    assert.equal(operate.status, 403);
    // The configuration file's jobs are not the API's to change.
    const fileJob = await admin.putJob("file-job", { queue: "ts-defs" }).catch((e) => e);
    assert.equal(fileJob.code, "conflict");
    assert.equal(fileJob.status, 409);
    // A definition with neither a command nor a queue is refused.
    const neither = await admin.putJob("api-nothing", {}).catch((e) => e);
    assert.equal(neither.status, 400);
  });

  test("patchJob, backfill, reschedule and deleteJob with cancel", async () => {
    // Fires on January 1st only: the scheduler leaves it alone during the test.
    const put = await admin.putJob("api-yearly", { queue: "ts-defs-yearly", schedule: "0 0 1 1 *", overlap: "allow" });
    assert.equal(put.created, true);
    const again = await admin.putJob("api-yearly", {
      queue: "ts-defs-yearly",
      schedule: "0 0 1 1 *",
      overlap: "allow",
      priority: 3,
    });
    assert.equal(again.created, false, "a second PUT replaces");
    assert.equal(again.job.priority, 3);

    const patched = await admin.patchJob("api-yearly", { priority: 7, run_timeout: "5m" });
    assert.equal(patched.created, false);
    assert.equal(patched.definition.priority, 7);
    assert.equal(patched.definition.run_timeout, "5m");
    assert.equal(patched.definition.schedule, "0 0 1 1 *", "fields left out of a patch stay");
    const reset = await admin.patchJob("api-yearly", { priority: null });
    assert.equal(reset.definition.priority, 0, "null resets a field to its default");

    const from = new Date("2024-01-01T00:00:00Z");
    const bf = await client.backfill("api-yearly", from, "2025-06-01T00:00:00Z");
    assert.equal(bf.created.length, 2, JSON.stringify(bf)); // 2024-01-01 and 2025-01-01
    assert.equal(bf.already, 0);
    const bf2 = await client.backfill("api-yearly", from, "2025-06-01T00:00:00Z");
    assert.deepEqual(bf2, { created: [], already: 2 });
    const [first, second] = bf.created;
    const e1 = await client.execution(first);
    assert.equal(e1.status, "queued");
    assert.equal(e1.trigger, "backfill");

    const before = Date.now();
    const moved = await client.reschedule(first, { delay: "10m" });
    assert.equal(moved.id, first);
    assert.equal(moved.status, "queued");
    const at = Date.parse(moved.run_at ?? "");
    assert.ok(at >= before + 600_000 - 2000 && at <= Date.now() + 600_000 + 2000, `run_at ${moved.run_at}`);
    const when = new Date(Date.now() + 3_600_000);
    const moved2 = await client.reschedule(second, { runAt: when });
    assert.ok(Math.abs(Date.parse(moved2.run_at ?? "") - when.getTime()) < 1000, `run_at ${moved2.run_at}`);

    const busy = await admin.deleteJob("api-yearly").catch((e) => e);
    assert.equal(busy.code, "conflict", "live executions keep the job unless cancel: true");
    assert.equal(busy.status, 409);
    const deleted = await admin.deleteJob("api-yearly", { cancel: true });
    assert.deepEqual([...deleted.cancelled].sort((a, b) => a - b), [first, second]);
    assert.equal((await client.execution(first)).status, "cancelled");

    const actions = ((await client.job("api-yearly")).changes ?? []).map((c) => c.action);
    assert.deepEqual(actions, ["deleted", "changed", "changed", "replaced", "created"]);
  });
});
