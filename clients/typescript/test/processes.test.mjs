// Worker processes of the SDK (test/fixtures/worker.mjs), killed, frozen and stopped for real.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { Client } from "@jobward/client";

import { OPERATE_TOKEN, cleanup, eventually, job, startServer, startWorkerProcess } from "./harness.mjs";

let server;
let client;

before(async () => {
  server = await startServer(
    [
      job("work-kill", "ts-kill", `retry = { max_attempts = 2, backoff = "100ms", max_backoff = "100ms" }`),
      job("work-stop", "ts-stop"),
      job("work-term", "ts-term", `overlap = "allow"`),
    ].join("\n"),
  );
  client = new Client({ server: server.api, token: OPERATE_TOKEN });
});
after(async () => server && (await server.stop()));

const LEASE_MS = 1000; // heartbeat_timeout of the test server
const REAPER_MS = 200; // its reaper_interval

describe("worker processes", () => {
  test("a worker SIGKILLed mid-run: timed_out (heartbeat_timeout) within the lease plus a reaper tick, retried and completed by another worker", async () => {
    const t = await client.trigger("work-kill", { payload: { ms: 60_000, retryMs: 200 } });
    const id = t.execution.id;
    const a = startWorkerProcess(server.api, "ts-kill", { JW_JOB: "work-kill", JW_WORKER_ID: "kill-a" });
    let b;
    try {
      await a.waitFor((e) => e.event === "started" && e.id === id, "started");
      // A heartbeat went through (it carries progress).
      await eventually(async () => (await client.execution(id)).progress > 0, { what: "a heartbeat" });
      a.child.kill("SIGKILL");
      await a.exited;
      const killedAt = Date.now();
      const settled = await eventually(
        async () => {
          const e = await client.execution(id);
          return e.status !== "running" && e;
        },
        { intervalMs: 20, what: "the reaper settles it" },
      );
      const took = Date.now() - killedAt;
      assert.equal(settled.status, "timed_out", JSON.stringify(settled));
      assert.equal(settled.reason, "heartbeat_timeout");
      assert.ok(took <= LEASE_MS + REAPER_MS + 600, `settled ${took} ms after the kill`);

      b = startWorkerProcess(server.api, "ts-kill", { JW_JOB: "work-kill", JW_WORKER_ID: "kill-b" });
      const started = await b.waitFor((e) => e.event === "started", "the retry started");
      assert.equal(started.attempt, 2);
      const retry = await client.waitFor(started.id, { timeoutMs: 10_000 });
      assert.equal(retry.status, "completed", JSON.stringify(retry));
      assert.equal(retry.retry_of, id);
      assert.equal(retry.lease_owner ?? "kill-b", "kill-b");
      b.child.kill("SIGTERM");
      assert.deepEqual(await b.exited, { code: 0, signal: null });
      const stopped = b.events.find((e) => e.event === "stopped");
      assert.deepEqual(stopped.report, { completed: 1, lost: 0, handedBack: 0 });
    } finally {
      await cleanup(a, b);
    }
  });

  test("a worker SIGSTOPped past its lease: its late reports are refused, its handler aborts with LeaseLost, the ledger does not change", async () => {
    const t = await client.trigger("work-stop", { payload: { ms: 60_000 } });
    const id = t.execution.id;
    const a = startWorkerProcess(server.api, "ts-stop", { JW_JOB: "work-stop", JW_WORKER_ID: "stop-a" });
    try {
      await a.waitFor((e) => e.event === "started" && e.id === id, "started");
      await eventually(async () => (await client.execution(id)).progress > 0, { what: "a heartbeat" });
      a.child.kill("SIGSTOP");
      const settled = await eventually(
        async () => {
          const e = await client.execution(id);
          return e.status !== "running" && e;
        },
        { intervalMs: 20, what: "the reaper settles it" },
      );
      assert.equal(settled.status, "timed_out", JSON.stringify(settled));
      assert.equal(settled.reason, "heartbeat_timeout");
      const eventsSettled = await client.events(id);
      await sleep(300);
      a.child.kill("SIGCONT");

      const aborted = await a.waitFor((e) => e.event === "aborted" && e.id === id, "the handler's signal aborts");
      assert.equal(aborted.reason, "LeaseLost", JSON.stringify(aborted));
      assert.equal(aborted.ctxThrew, "LeaseLost", "ctx calls throw LeaseLost after the lease was lost");
      // Several heartbeat intervals for any late report to arrive.
      await sleep(1000);

      const now = await client.execution(id);
      for (const k of ["status", "reason", "message", "finished_at", "exit_code", "signal", "attempt", "progress", "phase"]) {
        assert.deepEqual(now[k], settled[k], `${k} changed after the reaper settled it`);
      }
      const events = await client.events(id);
      const late = events.slice(eventsSettled.length);
      assert.ok(late.length >= 1, "the late heartbeat was refused and written to the event log");
      assert.ok(late.every((e) => e.kind === "refused"), `late events: ${JSON.stringify(late)}`);
      const page = await client.executions({ job: "work-stop" });
      assert.equal(page.executions.length, 1, "no retry (max_attempts 1), nothing new");

      a.child.kill("SIGTERM");
      assert.deepEqual(await a.exited, { code: 0, signal: null });
      const stopped = a.events.find((e) => e.event === "stopped");
      assert.deepEqual(stopped.report, { completed: 0, lost: 1, handedBack: 0 });
    } finally {
      await cleanup(a);
    }
  });

  test("SIGTERM: a short run finishes within the grace, a long one is handed back and completed by another worker", async () => {
    const short = await client.trigger("work-term", { payload: { ms: 700 } });
    const long = await client.trigger("work-term", { payload: { ms: 60_000, retryMs: 100 } });
    const a = startWorkerProcess(server.api, "ts-term", { JW_JOB: "work-term", JW_WORKER_ID: "term-a", JW_CONCURRENCY: "2", JW_GRACE_MS: "1500" });
    let b;
    try {
      await a.waitFor((e) => e.event === "started" && e.id === short.execution.id, "short started");
      await a.waitFor((e) => e.event === "started" && e.id === long.execution.id, "long started");
      const termAt = Date.now();
      a.child.kill("SIGTERM");
      assert.deepEqual(await a.exited, { code: 0, signal: null });
      const took = Date.now() - termAt;
      assert.ok(took >= 1400 && took < 4000, `stopped ${took} ms after SIGTERM (grace 1500 ms)`);
      const stopped = a.events.find((e) => e.event === "stopped");
      assert.deepEqual(stopped.report, { completed: 1, lost: 0, handedBack: 1 });
      const aborted = a.events.find((e) => e.event === "aborted" && e.id === long.execution.id);
      assert.equal(aborted?.reason, "HandedBack");
      assert.ok(!a.events.some((e) => e.event === "started" && e.attempt > 1), "no claim after SIGTERM");

      const s = await client.execution(short.execution.id);
      assert.equal(s.status, "completed", JSON.stringify(s));
      const l = await client.execution(long.execution.id);
      assert.equal(l.status, "cancelled", JSON.stringify(l));
      assert.equal(l.reason, "handed_back");

      b = startWorkerProcess(server.api, "ts-term", { JW_JOB: "work-term", JW_WORKER_ID: "term-b" });
      const started = await b.waitFor((e) => e.event === "started", "the handed-back run started again");
      assert.equal(started.attempt, 2);
      const again = await client.waitFor(started.id, { timeoutMs: 10_000 });
      assert.equal(again.status, "completed");
      assert.equal(again.retry_of, long.execution.id);
      assert.equal(again.number, long.execution.number);
    } finally {
      await cleanup(a, b);
    }
  });
});
