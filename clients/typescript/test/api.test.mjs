// The API client against a real server: errors, bulk triggers, pages, and the OpenAPI drift check.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Client, JobwardError, LeaseLost, Worker } from "@jobward/client";
import { OPERATE_TOKEN, READ_TOKEN, WORKER_TOKEN, job, startServer } from "./harness.mjs";

let server;
let client;

before(async () => {
  server = await startServer([job("api-job", "ts-api", `overlap = "allow"`)].join("\n"));
  client = new Client({ server: server.api, token: OPERATE_TOKEN });
});
after(async () => server && (await server.stop()));

describe("API client", () => {
  test("the server's OpenAPI document is the committed openapi.json (the types were generated from it)", async () => {
    const live = await new Client({ server: server.api, token: READ_TOKEN }).openapi();
    // The copy shipped in the package: the committed clients/typescript/openapi.json.
    const file = createRequire(import.meta.url).resolve("@jobward/client/openapi.json");
    const committed = JSON.parse(readFileSync(file, "utf8"));
    assert.deepStrictEqual(
      live,
      committed,
      "the server's API changed: run `JOBWARD_BIN=... npm run update-openapi && npm run build` in clients/typescript and review the SDK",
    );
  });

  test("errors are JobwardError with the server's code, message and HTTP status", async () => {
    const missing = await client.execution(987654).catch((e) => e);
    assert.ok(missing instanceof JobwardError, String(missing));
    assert.equal(missing.code, "not_found");
    assert.equal(missing.status, 404);
    assert.ok(missing.message.length > 0);

    const noJob = await client.trigger("no-such-job").catch((e) => e);
    assert.equal(noJob.code, "not_found");

    const bad = await new Client({ server: server.api, token: "not-a-valid-token-000000" }).execution(1).catch((e) => e);
    assert.equal(bad.code, "unauthorized");
    assert.equal(bad.status, 401);

    const forbidden = await new Client({ server: server.api, token: WORKER_TOKEN }).trigger("api-job").catch((e) => e);
    assert.equal(forbidden.code, "forbidden");
    assert.equal(forbidden.status, 403);

    const invalid = await client.trigger("api-job", { priority: 5000 }).catch((e) => e);
    assert.equal(invalid.status, 400);

    const down = await new Client({ server: "http://127.0.0.1:9", timeoutMs: 2000 }).execution(1).catch((e) => e);
    assert.equal(down.code, "unreachable");
    assert.equal(down.status, 0);
    assert.equal(down.transient, true);
  });

  test("a report with a wrong lease token is LeaseLost and changes nothing", async () => {
    const t = await client.trigger("api-job");
    const w = new Client({ server: server.api, token: WORKER_TOKEN });
    const claim = await w.claim({ worker_id: "api-test", queues: ["ts-api"], batch: 1, wait_ms: 2000 });
    assert.equal(claim.executions.length, 1);
    const e = claim.executions[0];
    assert.equal(e.id, t.execution.id);
    const err = await w
      .complete({ worker_id: "api-test", id: e.id, attempt: e.attempt, lease_token: "forged", outcome: "completed" })
      .catch((x) => x);
    assert.ok(err instanceof LeaseLost, String(err));
    assert.equal(err.status, 409);
    assert.equal((await client.execution(e.id)).status, "running");
    const hb = await w.heartbeat({ worker_id: "api-test", leases: [{ id: e.id, attempt: e.attempt, lease_token: e.lease_token }] });
    assert.deepEqual(hb.renewed, [e.id]);
    const done = await w.complete({ worker_id: "api-test", id: e.id, attempt: e.attempt, lease_token: e.lease_token, outcome: "completed" });
    assert.equal(done.execution.status, "completed");
  });

  test("bulk trigger answers per item; executions page with next_before; events list transitions", async () => {
    const results = await client.triggerMany([
      { job: "api-job", payload: { i: 1 }, idempotencyKey: "bulk-1" },
      { job: "api-job", payload: { i: 2 }, runAt: new Date(Date.now() + 3_600_000) },
      { job: "no-such-job" },
      { job: "api-job", idempotencyKey: "bulk-1" },
    ]);
    assert.deepEqual(results.map((r) => r.result), ["accepted", "accepted", "rejected", "repeated"]);
    assert.equal(results[2].error?.code, "not_found");
    assert.equal(results[3].id, results[0].id);
    const page = await client.executions({ job: "api-job", limit: 1, status: ["queued", "running"] });
    assert.equal(page.executions.length, 1);
    assert.ok(page.next_before);
    const next = await client.executions({ job: "api-job", limit: 1, status: ["queued", "running"], before: page.next_before });
    assert.ok(next.executions[0].id < page.executions[0].id);
    const c = await client.cancel(results[1].id);
    assert.equal(c.result, "cancelled");
    const events = await client.events(results[1].id);
    assert.deepEqual(events.map((e) => e.to), ["queued", "cancelled"]);
  });

  test("a worker whose token is refused stops: run() rejects with the error", async () => {
    const worker = new Worker({ server: server.api, token: READ_TOKEN, queues: ["ts-api"], handleSignals: false, logger: null });
    const err = await worker.run().catch((e) => e);
    assert.ok(err instanceof JobwardError, String(err));
    assert.equal(err.code, "forbidden");
  });
});
