// Starts a real `jobward serve` for the tests: a fresh SQLite ledger in a temp dir, tokens
// configured, short leases, a fast reaper. Kills only the processes it started, by pid.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const OPERATE_TOKEN = "ts-sdk-operate-0123456789";
export const WORKER_TOKEN = "ts-sdk-worker-0123456789";
export const READ_TOKEN = "ts-sdk-read-0123456789";
export const ADMIN_TOKEN = "ts-sdk-admin-0123456789";
/** The name of the admin token: changes made with it are recorded as `api:ts-admin`. */
export const ADMIN_TOKEN_NAME = "ts-admin";

const here = path.dirname(fileURLToPath(import.meta.url));

/** The jobward binary: $JOBWARD_BIN, else target/debug/jobward of the repository. */
export function jobwardBin() {
  const fromEnv = process.env.JOBWARD_BIN;
  // clients/typescript/test -> the repository root
  const bin = fromEnv ? path.resolve(fromEnv) : path.resolve(here, "../../../target/debug/jobward");
  if (!existsSync(bin)) {
    throw new Error(
      `the jobward binary is missing at ${bin}: build it (cargo build) or set JOBWARD_BIN to its path`,
    );
  }
  return bin;
}

const started = new Set();
process.on("exit", () => {
  for (const child of started) {
    try {
      child.kill("SIGKILL");
    } catch {}
  }
});

/** Remembers a child process so that it is SIGKILLed if the test process exits first. */
export function track(child) {
  started.add(child);
  child.once("exit", () => started.delete(child));
  return child;
}

/** The environment of a server: none of the caller's JOBWARD_* settings leak into it. */
function serverEnv() {
  const env = { ...process.env, JOBWARD_LOG: "info" };
  for (const k of Object.keys(env)) {
    if (k.startsWith("JOBWARD_") && k !== "JOBWARD_LOG") delete env[k];
  }
  delete env.OTEL_EXPORTER_OTLP_ENDPOINT;
  return env;
}

/**
 * Starts `jobward serve` with these `[[job]]` tables (TOML text).
 * Returns { api, dir, config, bin, stop(), log() }.
 */
export async function startServer(jobsToml = "", { server = "", defaults = "" } = {}) {
  const bin = jobwardBin();
  const dir = mkdtempSync(path.join(tmpdir(), "jobward-ts-"));
  const config = path.join(dir, "jobward.toml");
  writeFileSync(
    config,
    `[[token]]
name = "ts-operate"
role = "operate"
secret = "${OPERATE_TOKEN}"

[[token]]
name = "ts-worker"
role = "worker"
secret = "${WORKER_TOKEN}"

[[token]]
name = "ts-read"
role = "read"
secret = "${READ_TOKEN}"

[[token]]
name = "${ADMIN_TOKEN_NAME}"
role = "admin"
secret = "${ADMIN_TOKEN}"

[server]
db = "sqlite://${dir}/ledger.db"
log_dir = "${dir}/logs"
bind = "127.0.0.1:0"
node_name = "ts-sdk-test"
reaper_interval = "200ms"
poll_interval = "100ms"
shutdown_grace = "1s"
${server}

[defaults]
heartbeat_timeout = "1s"
kill_grace = "500ms"
${defaults}

${jobsToml}
`,
  );
  const logPath = path.join(dir, "serve.log");
  const { openSync } = await import("node:fs");
  const out = openSync(logPath, "w");
  const child = track(
    spawn(bin, ["serve", "--config", config], {
      cwd: dir,
      stdio: ["ignore", out, out],
      env: serverEnv(),
    }),
  );
  let exited = null;
  child.once("exit", (code, signal) => (exited = { code, signal }));
  const log = () => (existsSync(logPath) ? readFileSync(logPath, "utf8") : "");
  let api;
  for (let i = 0; i < 200; i++) {
    const m = /api=(\S+)/.exec(log());
    if (m) {
      api = m[1];
      break;
    }
    if (exited) break;
    await sleep(50);
  }
  if (!api) {
    child.kill("SIGKILL");
    throw new Error(`jobward serve did not start (${JSON.stringify(exited)}):\n${log()}`);
  }
  const stop = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      for (let i = 0; i < 100 && !exited; i++) await sleep(50);
      if (!exited) child.kill("SIGKILL");
    }
    if (/panicked/i.test(log())) {
      throw new Error(`the server panicked:\n${log()}`);
    }
    if (!process.env.JOBWARD_TEST_KEEP) rmSync(dir, { recursive: true, force: true });
  };
  return { api, dir, config, bin, pid: child.pid, stop, log };
}

/** Polls `check` until it returns a truthy value, or throws after `timeoutMs`. */
export async function eventually(check, { timeoutMs = 10_000, intervalMs = 50, what = "condition" } = {}) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    last = await check();
    if (last) return last;
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** A TOML `[[job]]` for a handler job (a queue and no command) run by workers of `queue`. */
export function job(name, queue, extra = "") {
  return `[[job]]
name = "${name}"
queue = "${queue}"
${extra}
`;
}

const fixture = path.join(here, "fixtures", "worker.mjs");

/** Starts a worker process of the SDK (fixtures/worker.mjs); `events` fills with what it prints. */
export function startWorkerProcess(api, queue, env = {}) {
  const child = track(
    spawn(process.execPath, [fixture], {
      cwd: path.dirname(fixture),
      env: { ...process.env, JW_SERVER: api, JW_TOKEN: WORKER_TOKEN, JW_QUEUE: queue, ...env },
      stdio: ["ignore", "pipe", "inherit"],
    }),
  );
  const w = { child, pid: child.pid, events: [], exit: null };
  let buf = "";
  child.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        w.events.push(JSON.parse(line));
      } catch {
        w.events.push({ event: "text", line });
      }
    }
  });
  w.exited = new Promise((r) => child.once("exit", (code, signal) => r((w.exit = { code, signal }))));
  w.waitFor = (pred, what, timeoutMs = 10_000) =>
    eventually(() => w.events.find(pred), { what: `worker ${child.pid}: ${what}`, timeoutMs });
  w.kill = async (signal = "SIGKILL") => {
    if (w.exit) return;
    child.kill(signal);
  };
  return w;
}

/** SIGKILLs these worker processes if they still run. */
export async function cleanup(...workers) {
  for (const w of workers) {
    if (w && !w.exit) {
      w.child.kill("SIGCONT");
      w.child.kill("SIGKILL");
      await w.exited;
    }
  }
}

