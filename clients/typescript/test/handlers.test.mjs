// Handlers run by a worker inside the test process, against a real `jobward serve`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import net from "node:net";
import { Cancelled, Client, LeaseLost, RunTimeout, Worker } from "@jobward/client";
import { OPERATE_TOKEN, WORKER_TOKEN, eventually, job, startServer } from "./harness.mjs";

const retry = `retry = { max_attempts = 3, backoff = "100ms", max_backoff = "100ms" }`;
let server;
let client;

before(async () => {
  server = await startServer(
    [
      job("send-report", "ts-ok"),
      job("explode", "ts-fail"),
      job("resume", "ts-retry", retry),
      job("hang", "ts-timeout", `run_timeout = "1s"`),
      job("stoppable", "ts-cancel"),
      job("stoppable-cli", "ts-cancel-cli"),
      job("nobody-handles", "ts-none"),
      job("somebody-handles", "ts-none"),
      job("old-unknown", "ts-old"),
      job("old-known", "ts-old"),
      job("offer-handler", "ts-cmd-offer"),
      `[[job]]\nname = "cmd-offer"\nqueue = "ts-cmd-offer"\ncommand = "echo ran-by=$JOBWARD_WORKER_ID"\n`,
      job("busy", "ts-batch", `overlap = "allow"`),
      job("cut-off", "ts-unreachable"),
    ].join("\n"),
  );
  client = new Client({ server: server.api, token: OPERATE_TOKEN });
});
after(async () => server && (await server.stop()));

/** Runs a worker of `queue` while `body` runs, then stops it and returns its report. */
async function withWorker(options, register, body) {
  const worker = new Worker({
    server: server.api,
    token: WORKER_TOKEN,
    waitMs: 1000,
    handleSignals: false,
    logger: null,
    shutdownGraceMs: 2000,
    ...options,
  });
  register(worker);
  const running = worker.run();
  try {
    await body(worker);
  } finally {
    await worker.stop();
  }
  return running;
}

describe("handlers", () => {
  test("a handler completes a triggered run, with its payload and progress", async () => {
    let seen;
    const t = await client.trigger("send-report", { payload: { to: "ops@example.com" }, idempotencyKey: "k-1" });
    assert.equal(t.created, true);
    const again = await client.trigger("send-report", { payload: { to: "x" }, idempotencyKey: "k-1" });
    assert.equal(again.created, false, "the same idempotency key returns the first execution");
    assert.equal(again.execution.id, t.execution.id);
    const report = await withWorker(
      { queues: ["ts-ok"], workerId: "w-complete" },
      (w) =>
        w.handle("send-report", async (ctx) => {
          seen = { payload: ctx.payload, attempt: ctx.attempt, job: ctx.job, id: ctx.executionId, cp: ctx.lastCheckpoint };
          ctx.progress(0.5, { phase: "upload" });
          await sleep(1000); // heartbeats carry the progress
        }),
      async () => {
        // The next heartbeat carries the progress and phase while it runs.
        await eventually(async () => {
          const e = await client.execution(t.execution.id);
          return e.status === "running" && e.progress === 0.5 && e.phase === "upload";
        }, { what: "progress 0.5 in phase upload", timeoutMs: 5000 });
        const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
        assert.equal(e.status, "completed", JSON.stringify(e));
      },
    );
    assert.deepEqual(seen, { payload: { to: "ops@example.com" }, attempt: 1, job: "send-report", id: t.execution.id, cp: null });
    assert.equal(report.completed, 1);
    assert.equal(report.lost, 0);
  });

  test("a failing handler is failed with its error message and stack as log tail", async () => {
    const t = await client.trigger("explode");
    await withWorker(
      { queues: ["ts-fail"] },
      (w) =>
        w.handle("explode", async (ctx) => {
          ctx.log("about to fail");
          throw new Error("disk full on /var/reports");
        }),
      async () => {
        const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
        assert.equal(e.status, "failed");
        assert.equal(e.reason, "worker_error", JSON.stringify(e));
        assert.match(e.message ?? "", /disk full on \/var\/reports/);
        const log = await client.log(t.execution.id);
        assert.match(log ?? "", /about to fail/);
        assert.match(log ?? "", /Error: disk full on \/var\/reports\n\s+at /, "the stack is in the log tail");
      },
    );
  });

  test("a retry receives the last checkpoint of the failed attempt", async () => {
    const seen = [];
    const t = await client.trigger("resume", { payload: { pages: 10 } });
    await withWorker(
      { queues: ["ts-retry"] },
      (w) =>
        w.handle("resume", async (ctx) => {
          seen.push({ attempt: ctx.attempt, trigger: ctx.trigger, last: ctx.lastCheckpoint });
          if (ctx.attempt === 1) {
            await ctx.checkpoint({ page: 7 });
            ctx.checkpoint({ page: 8 }); // not awaited: flushed before the completion
            throw new Error("crashed after page 8");
          }
          assert.deepEqual(ctx.lastCheckpoint, { page: 8 });
        }),
      async () => {
        await eventually(async () => {
          const page = await client.executions({ job: "resume" });
          return page.executions.find((e) => e.attempt === 2 && e.status === "completed");
        }, { what: "attempt 2 completed" });
      },
    );
    assert.deepEqual(seen, [
      { attempt: 1, trigger: "manual", last: null },
      { attempt: 2, trigger: "retry", last: { page: 8 } },
    ]);
    const first = await client.execution(t.execution.id);
    assert.equal(first.status, "failed");
  });

  test("at the run timeout the signal aborts with RunTimeout and the run is timed_out", async () => {
    let reason;
    const t = await client.trigger("hang");
    await withWorker(
      { queues: ["ts-timeout"] },
      (w) =>
        w.handle("hang", async (ctx) => {
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          reason = ctx.signal.reason;
          assert.throws(() => ctx.progress(0.9), RunTimeout);
          throw reason;
        }),
      async () => {
        const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
        assert.equal(e.status, "timed_out");
        assert.equal(e.reason, "run_timeout", JSON.stringify(e));
      },
    );
    assert.ok(reason instanceof RunTimeout, String(reason));
  });

  test("a cancel aborts the handler's signal with Cancelled and the run is cancelled", async () => {
    let reason;
    let started;
    const startedP = new Promise((r) => (started = r));
    const t = await client.trigger("stoppable");
    await withWorker(
      { queues: ["ts-cancel"] },
      (w) =>
        w.handle("stoppable", async (ctx) => {
          started();
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          reason = ctx.signal.reason;
          await assert.rejects(ctx.checkpoint({ late: true }), Cancelled);
          ctx.signal.throwIfAborted();
        }),
      async () => {
        await startedP;
        const c = await client.cancel(t.execution.id);
        assert.equal(c.result, "requested");
        const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
        assert.equal(e.status, "cancelled");
        assert.equal(e.reason, "cancel_requested", JSON.stringify(e));
      },
    );
    assert.ok(reason instanceof Cancelled, String(reason));
    assert.ok(!(reason instanceof LeaseLost));
  });

  test("a cancel from the CLI (`jobward runs cancel ID`) aborts the handler's signal; the run is cancelled", async () => {
    // `runs cancel` has no --server/--token: it works on the ledger named by --config.
    let reason;
    let started;
    const startedP = new Promise((r) => (started = r));
    const t = await client.trigger("stoppable-cli");
    await withWorker(
      { queues: ["ts-cancel-cli"] },
      (w) =>
        w.handle("stoppable-cli", async (ctx) => {
          started();
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          reason = ctx.signal.reason;
          throw reason;
        }),
      async () => {
        await startedP;
        const { stdout } = await promisify(execFile)(server.bin, ["runs", "cancel", String(t.execution.id), "--config", server.config], {
          timeout: 15_000,
        });
        const e = await client.execution(t.execution.id);
        assert.equal(e.status, "cancelled", `${stdout} ${JSON.stringify(e)}`);
        assert.equal(e.reason, "cancel_requested");
      },
    );
    assert.ok(reason instanceof Cancelled, String(reason));
  });

  test("a handler job no running worker has a handler for stays queued (never claimed, never handed back) until a worker with it comes", async () => {
    const before = await client.job("nobody-handles");
    assert.equal(before.served, "no worker has claimed from queue 'ts-none' in the last 5m");
    assert.deepEqual(before.workers, []);
    const t = await client.trigger("nobody-handles");
    const id = t.execution.id;
    const first = await withWorker(
      { queues: ["ts-none"], workerId: "w-none" },
      (w) => w.handle("somebody-handles", () => "ok"),
      async () => {
        // Work it has a handler for runs meanwhile.
        const k = await client.trigger("somebody-handles");
        const done = await client.waitFor(k.execution.id, { timeoutMs: 10_000 });
        assert.equal(done.status, "completed", JSON.stringify(done));
        assert.equal(done.lease_owner, "w-none");
        await sleep(2500); // a few more claims (waitMs 1000)
        const e = await client.execution(id);
        assert.equal(e.status, "queued", JSON.stringify(e));
        assert.equal(e.attempt, 1);
        assert.equal(e.lease_owner ?? null, null);
        assert.equal(e.started_at ?? null, null);
        const all = await client.executions({ job: "nobody-handles" });
        assert.deepEqual(all.executions.map((x) => x.id), [id], "no other attempt");
        const events = await client.events(id);
        assert.deepEqual(events.map((x) => [x.kind, x.to]), [["transition", "queued"]]);
        const detail = await client.job("nobody-handles");
        assert.equal(detail.served, "1 worker claims from queue 'ts-none' but does not run a handler for 'nobody-handles'");
        assert.deepEqual(detail.workers, []);
        const known = await client.job("somebody-handles");
        assert.match(known.served ?? "", /^served by 1 worker on queue 'ts-none' \(w-none; last claim /);
        assert.equal(known.workers.length, 1);
        const [seen] = known.workers;
        assert.deepEqual([seen.id, seen.queues, seen.handlers, seen.commands], ["w-none", ["ts-none"], ["somebody-handles"], false]);
        // A worker with the handler starts (the first still claims): it runs the same execution.
        let ran;
        const second = await withWorker(
          { queues: ["ts-none"], workerId: "w-has-it" },
          (w) => w.handle("nobody-handles", (ctx) => (ran = ctx.attempt)),
          async () => {
            const e = await client.waitFor(id, { timeoutMs: 10_000 });
            assert.equal(e.status, "completed", JSON.stringify(e));
            assert.equal(e.lease_owner, "w-has-it");
            assert.equal(e.attempt, 1);
            const detail = await client.job("nobody-handles");
            assert.match(detail.served ?? "", /^served by 1 worker on queue 'ts-none' \(w-has-it; last claim /);
            assert.deepEqual(detail.workers.map((x) => x.id), ["w-has-it"]);
          },
        );
        assert.equal(ran, 1);
        assert.equal(second.handedBack, 0);
      },
    );
    assert.equal(first.handedBack, 0);
    const all = await client.executions({ job: "nobody-handles" });
    assert.deepEqual(all.executions.map((x) => x.id), [id]);
  });

  test("without runCommands a command job on the worker's queue is not offered; a worker with it runs it", async () => {
    const t = await client.trigger("cmd-offer");
    const id = t.execution.id;
    const first = await withWorker(
      { queues: ["ts-cmd-offer"], workerId: "w-no-commands" },
      (w) => w.handle("offer-handler", () => "ok"),
      async () => {
        const k = await client.trigger("offer-handler");
        assert.equal((await client.waitFor(k.execution.id, { timeoutMs: 10_000 })).status, "completed");
        await sleep(2500); // a few more claims
        const e = await client.execution(id);
        assert.equal(e.status, "queued", JSON.stringify(e));
        assert.equal(e.lease_owner ?? null, null);
        const events = await client.events(id);
        assert.deepEqual(events.map((x) => [x.kind, x.to]), [["transition", "queued"]]);
        const detail = await client.job("cmd-offer");
        assert.match(detail.served ?? "", /its command/);
        assert.doesNotMatch(detail.served ?? "", /^served by/);
        assert.deepEqual(detail.workers, []);
        const second = await withWorker(
          { queues: ["ts-cmd-offer"], workerId: "w-commands", runCommands: true },
          () => {},
          async () => {
            const e = await client.waitFor(id, { timeoutMs: 10_000 });
            assert.equal(e.status, "completed", JSON.stringify(e));
            assert.equal(e.lease_owner, "w-commands");
            assert.equal(e.attempt, 1);
            assert.match((await client.log(id)) ?? "", /ran-by=w-commands/);
            const detail = await client.job("cmd-offer");
            assert.match(detail.served ?? "", /^served by 1 worker on queue 'ts-cmd-offer' \(w-commands; last claim /);
            assert.deepEqual(detail.workers.map((x) => [x.id, x.handlers, x.commands]), [["w-commands", [], true]]);
          },
        );
        assert.equal(second.handedBack, 0);
      },
    );
    assert.equal(first.handedBack, 0);
  });

  test("a job offered anyway (a server that ignores `handlers`) is handed back, not failed, with a short back-off", async () => {
    const realFetch = globalThis.fetch;
    let claims = 0;
    globalThis.fetch = async (url, init) => {
      if (String(url).endsWith("/api/worker/claim")) {
        const body = JSON.parse(init.body);
        if (body.worker_id === "w-old-server") {
          claims++;
          delete body.handlers;
          delete body.commands;
          init = { ...init, body: JSON.stringify(body) };
        }
      }
      return realFetch(url, init);
    };
    try {
      const t = await client.trigger("old-unknown");
      const report = await withWorker(
        { queues: ["ts-old"], workerId: "w-old-server" },
        (w) => w.handle("old-known", () => "ok"),
        async () => {
          const first = await eventually(async () => {
            const e = await client.execution(t.execution.id);
            return e.status !== "queued" && e.status !== "running" && e;
          }, { what: "attempt 1 ended" });
          assert.equal(first.status, "cancelled", JSON.stringify(first));
          assert.equal(first.reason, "handed_back");
          assert.match(first.message ?? "", /no handler for old-unknown on this worker/);
          const k = await client.trigger("old-known");
          assert.equal((await client.waitFor(k.execution.id, { timeoutMs: 10_000 })).status, "completed");
          await sleep(2000);
        },
      );
      assert.ok(report.handedBack >= 1);
      const all = await client.executions({ job: "old-unknown" });
      assert.ok(all.executions.every((e) => e.status !== "failed" && e.status !== "timed_out"), JSON.stringify(all));
      // Bounced back with a short growing pause (at most 2 s), not at full speed.
      assert.ok(all.executions.length >= 2 && all.executions.length <= 12, `attempts: ${all.executions.length}`);
      for (const e of all.executions) if (e.status === "queued") await client.cancel(e.id);
    } finally {
      globalThis.fetch = realFetch;
    }
  });

  test("one heartbeat call per interval carries every lease the worker holds", async () => {
    const calls = [];
    const realFetch = globalThis.fetch;
    globalThis.fetch = async (url, init) => {
      if (String(url).endsWith("/api/worker/heartbeat")) calls.push({ at: Date.now(), leases: JSON.parse(init.body).leases });
      return realFetch(url, init);
    };
    try {
      const results = await client.triggerMany([{ job: "busy" }, { job: "busy", priority: 5 }, { job: "busy", delay: 0 }]);
      assert.deepEqual(results.map((r) => r.result), ["accepted", "accepted", "accepted"]);
      let running = 0;
      let all;
      const allRunning = new Promise((r) => (all = r));
      await withWorker(
        { queues: ["ts-batch"], concurrency: 3 },
        (w) =>
          w.handle("busy", async (ctx) => {
            if (++running === 3) all();
            await allRunning;
            await sleep(1600);
            ctx.progress(1);
          }),
        async () => {
          await allRunning;
          for (const r of results) {
            const e = await client.waitFor(r.id, { timeoutMs: 10_000 });
            assert.equal(e.status, "completed");
          }
        },
      );
    } finally {
      globalThis.fetch = realFetch;
    }
    const full = calls.filter((c) => c.leases.length === 3);
    // heartbeat_timeout 1s: renewed every ~333 ms, so about 4 calls in 1.6 s, each with all 3 leases.
    assert.ok(full.length >= 3 && full.length <= 8, `heartbeat calls with 3 leases: ${full.length} (${JSON.stringify(calls.map((c) => c.leases.length))})`);
    const gaps = full.slice(1).map((c, i) => c.at - full[i].at);
    assert.ok(gaps.every((g) => g >= 200), `one call per interval, not one per lease: gaps ${gaps}`);
  });

  test("a server unreachable for longer than the lease: the signal aborts with LeaseLost and nothing is reported", async () => {
    // A TCP proxy between the worker and the server that can swallow every connection.
    const target = new URL(server.api);
    let cut = false;
    const sockets = new Set();
    const proxy = net.createServer((c) => {
      sockets.add(c);
      c.on("close", () => sockets.delete(c));
      c.on("error", () => {});
      if (cut) return; // accepted, never answered
      const up = net.connect(Number(target.port), target.hostname);
      up.on("error", () => c.destroy());
      c.on("error", () => up.destroy());
      c.pipe(up).pipe(c);
    });
    await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
    const via = `http://127.0.0.1:${proxy.address().port}`;
    let reason;
    let started;
    const startedP = new Promise((r) => (started = r));
    const t = await client.trigger("cut-off");
    try {
      const report = await withWorker(
        { queues: ["ts-unreachable"], server: via },
        (w) =>
          w.handle("cut-off", async (ctx) => {
            started();
            await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
            reason = ctx.signal.reason;
            return "it finished anyway"; // must not be reported: the lease is gone
          }),
        async () => {
          await startedP;
          await sleep(400);
          cut = true;
          for (const c of sockets) c.destroy();
          const cutAt = Date.now();
          await eventually(() => reason, { what: "the signal aborts", timeoutMs: 5000 });
          const took = Date.now() - cutAt;
          assert.ok(took <= 1000 + 500, `aborted ${took} ms after the server became unreachable (lease 1 s)`);
          const settled = await client.waitFor(t.execution.id, { timeoutMs: 5000 });
          assert.equal(settled.status, "timed_out");
          assert.equal(settled.reason, "heartbeat_timeout");
          cut = false; // reachable again: nothing may be reported for it now
          await sleep(700);
          const events = await client.events(t.execution.id);
          assert.ok(!events.some((e) => e.kind === "refused"), `nothing was sent after the lease: ${JSON.stringify(events)}`);
        },
      );
      assert.equal(report.lost, 1);
      assert.equal(report.completed, 0);
    } finally {
      for (const c of sockets) c.destroy();
      proxy.close();
    }
    assert.ok(reason instanceof LeaseLost, String(reason));
  });
});
