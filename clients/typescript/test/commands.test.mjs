// A claimed job with no handler and `runCommands: true`: its command runs as `jobward worker`
// runs it (sh -c, own process group, JOBWARD_* environment, SIGTERM then SIGKILL of the group).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Client, Worker } from "@jobward/client";
import { OPERATE_TOKEN, WORKER_TOKEN, cleanup, eventually, startServer, startWorkerProcess } from "./harness.mjs";

let server;
let client;
let worker;
let running;

/** The process group of a pid (field 5 of /proc/PID/stat), or null when it is gone. */
function pgidOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z") return null; // a zombie is dead
    return Number(fields[2]);
  } catch {
    return null;
  }
}

const cmdJob = (name, queue, command, extra = "") => `[[job]]
name = "${name}"
queue = "${queue}"
command = '${command}'
${extra}
`;

before(async () => {
  server = await startServer(
    [
      cmdJob(
        "cmd-exit",
        "ts-cmd",
        `echo "pid=$$ pgid=$(cut -d" " -f5 /proc/$$/stat) exec=$JOBWARD_EXECUTION_ID job=$JOBWARD_JOB attempt=$JOBWARD_ATTEMPT worker=$JOBWARD_WORKER_ID token=\${JOBWARD_LEASE_TOKEN:+set} payload=$JOBWARD_PAYLOAD"; echo oops >&2; exit 3`,
      ),
      cmdJob(
        "cmd-timeout",
        "ts-cmd",
        `sleep 30 & echo "child=$!"; trap "" TERM; while :; do sleep 0.05; done`,
        `run_timeout = "1s"\nkill_grace = "300ms"`,
      ),
      cmdJob("cmd-cancel", "ts-cmd", `echo "started pid=$$"; exec sleep 30`),
      cmdJob("cmd-lost", "ts-cmd-lost", `echo $$ > "$JOBWARD_PAYLOAD_DIR/lost.pid"; sleep 30 & sleep 30`),
    ].join("\n"),
  );
  client = new Client({ server: server.api, token: OPERATE_TOKEN });
  worker = new Worker({
    server: server.api,
    token: WORKER_TOKEN,
    queues: ["ts-cmd"],
    concurrency: 3,
    runCommands: true,
    waitMs: 1000,
    handleSignals: false,
    logger: null,
    workerId: "cmd-worker",
  });
  running = worker.run();
});
after(async () => {
  if (worker) await worker.stop({ graceMs: 0 });
  await running;
  if (server) await server.stop();
});

describe("commands (runCommands)", () => {
  test("a command runs in its own process group with the JOBWARD_* environment and reports its exit code", async () => {
    const t = await client.trigger("cmd-exit", { payload: { n: 1 } });
    const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
    assert.equal(e.status, "failed", JSON.stringify(e));
    assert.equal(e.reason, "exit_code");
    assert.equal(e.exit_code, 3);
    const log = (await client.log(t.execution.id)) ?? "";
    const m = /pid=(\d+) pgid=(\d+) exec=(\d+) job=(\S+) attempt=(\d+) worker=(\S+) token=(\S*) payload=(.*)/.exec(log);
    assert.ok(m, `log: ${log}`);
    const [, pid, pgid, exec, jobName, attempt, workerId, token, payload] = m;
    assert.equal(pid, pgid, "sh -c leads its own process group");
    assert.notEqual(Number(pgid), pgidOf(process.pid), "not the worker's group");
    assert.equal(Number(exec), t.execution.id);
    assert.equal(jobName, "cmd-exit");
    assert.equal(attempt, "1");
    assert.equal(workerId, "cmd-worker");
    assert.equal(token, "set");
    assert.deepEqual(JSON.parse(payload), { n: 1 });
    assert.match(log, /oops/, "stderr is in the log tail");
  });

  test("at the run timeout the group gets SIGTERM, then SIGKILL after the kill grace; the run is timed_out", async () => {
    const t = await client.trigger("cmd-timeout");
    const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
    assert.equal(e.status, "timed_out", JSON.stringify(e));
    assert.equal(e.reason, "run_timeout");
    assert.equal(e.signal, 9, "sh ignored SIGTERM: SIGKILLed after the grace");
    const log = (await client.log(t.execution.id)) ?? "";
    const child = Number(/child=(\d+)/.exec(log)?.[1]);
    assert.ok(child > 0, log);
    await eventually(() => pgidOf(child) === null, { what: `its background child ${child} is gone`, timeoutMs: 2000 });
  });

  test("a cancel sends SIGTERM to the group; the run is cancelled with its signal", async () => {
    const t = await client.trigger("cmd-cancel");
    await eventually(async () => (await client.execution(t.execution.id)).status === "running", { what: "running" });
    await sleep(200);
    const c = await client.cancel(t.execution.id);
    assert.equal(c.result, "requested");
    const e = await client.waitFor(t.execution.id, { timeoutMs: 10_000 });
    assert.equal(e.status, "cancelled", JSON.stringify(e));
    assert.equal(e.reason, "cancel_requested");
    assert.equal(e.signal, 15);
  });

  test("a lost lease (worker frozen past it) SIGKILLs the command's group at once and reports nothing", async () => {
    const t = await client.trigger("cmd-lost");
    const w = startWorkerProcess(server.api, "ts-cmd-lost", {
      JW_JOB: "no-such-handler",
      JW_RUN_COMMANDS: "1",
      JW_WORKER_ID: "cmd-lost-worker",
      JOBWARD_PAYLOAD_DIR: server.dir,
    });
    try {
      const pidFile = path.join(server.dir, "lost.pid");
      await eventually(() => existsSync(pidFile) && readFileSync(pidFile, "utf8").trim() !== "", { what: "the command started" });
      const pid = Number(readFileSync(pidFile, "utf8"));
      assert.equal(pgidOf(pid), pid);
      await sleep(400); // a heartbeat renewed it
      w.child.kill("SIGSTOP");
      const settled = await eventually(
        async () => {
          const e = await client.execution(t.execution.id);
          return e.status !== "running" && e;
        },
        { intervalMs: 20, what: "the reaper settles it" },
      );
      assert.equal(settled.reason, "heartbeat_timeout");
      assert.ok(pgidOf(pid) !== null, "the command still runs while its worker is frozen");
      w.child.kill("SIGCONT");
      await eventually(() => pgidOf(pid) === null, { what: "the group is killed", timeoutMs: 2000 });
      await sleep(500);
      const now = await client.execution(t.execution.id);
      assert.equal(now.status, settled.status);
      assert.equal(now.finished_at, settled.finished_at);
      assert.equal(now.signal, settled.signal);
      const events = await client.events(t.execution.id);
      assert.ok(!events.some((e) => e.kind === "refused" && /complet/i.test(e.message)), "no completion was sent");
    } finally {
      await cleanup(w);
    }
  });
});
