// The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), against a real `jobward serve` on a real SQLite file, with real children.
//
//   JOBWARD_BIN=target/debug/jobward node --test --test-concurrency=1 tests/browser/dashboard.test.mjs
//
// Screenshots of every page go to target/screenshots/ (SCREENSHOTS to change it).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = resolve(root, process.env.JOBWARD_BIN || "target/debug/jobward");
const shots = resolve(root, process.env.SCREENSHOTS || "target/screenshots");
const OPERATE = "op-0d6f1e2a9b7c4d5e8f";
const READ = "rd-5a4b3c2d1e0f9a8b7c";
const WORKER = "wk-9e8d7c6b5a4f3e2d1c";
const ADMIN = "ad-7f6e5d4c3b2a1f0e9d";

let dir, server, api, browser, evil;

function config() {
  return `
[server]
db = "sqlite://${dir}/jobward.db"
log_dir = "${dir}/logs"
bind = "127.0.0.1:0"
reaper_interval = "200ms"
poll_interval = "100ms"

[[token]]
name = "ops"
role = "operate"
secret = "${OPERATE}"

[[token]]
name = "viewer"
role = "read"
secret = "${READ}"

[[token]]
name = "worker"
role = "worker"
secret = "${WORKER}"

[[token]]
name = "root"
role = "admin"
secret = "${ADMIN}"

[[job]]
name = "hello"
command = "echo hello from jobward; sleep 1; echo done"
expected_duration = "500ms..5s"

[[job]]
name = "sleeper"
command = "sleep 300"

[[job]]
name = "flaky"
command = "echo about to fail; exit 3"
schedule = "0 0 3 * * *"

[[job]]
name = "ticker"
command = "true"
every = "5s"

[[job]]
name = "stuck"
command = "sleep 600"
queue = "remote"
heartbeat_timeout = "1h"
`;
}

async function apiCall(method, path, token, body) {
  const r = await fetch(api + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

async function executionsOf(job) {
  const r = await apiCall("GET", `/api/executions?job=${job}&limit=1000`, READ);
  return r.body.executions;
}

async function waitFor(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function login(token, viewport) {
  const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(api + "/jobs");
  assert.match(page.url(), /\/login\?next=\/jobs$/, "a visitor without a session is sent to the login form");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(api + "/jobs"), page.click("button[type=submit]")]);
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  dir = mkdtempSync(join(tmpdir(), "jobward-browser-"));
  writeFileSync(join(dir, "jobward.toml"), config());
  server = spawn(bin, ["serve", "--config", join(dir, "jobward.toml")], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, JOBWARD_LOG: "info" },
  });
  let log = "";
  server.stdout.on("data", (d) => (log += d));
  server.stderr.on("data", (d) => (log += d));
  api = await waitFor("the server to listen", () => (log.match(/api=(http:\/\/\S+)/) || [])[1], 30000).catch((e) => {
    throw new Error(`${e.message}; its output:\n${log}`);
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  // Another origin, for the cross-site forgery test.
  evil = createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<form id=f method=post action="${api}/jobs/hello/trigger"><input name=csrf value=guess></form>
             <script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => evil.listen(0, "127.0.0.2", r));
});

after(async () => {
  await browser?.close();
  evil?.close();
  if (server) {
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the trigger button runs a job and its page turns completed without a reload", async () => {
  const { context, page } = await login(OPERATE);
  await shot(page, "jobs");
  const row = page.locator("tr[data-job=hello]");
  await Promise.all([page.waitForURL(/\/executions\/\d+$/), row.getByRole("button", { name: "Trigger" }).click()]);
  await page.evaluate(() => (window.__sameDocument = true));
  const status = page.locator("#status");
  await status.getByText("running").or(status.getByText("completed")).waitFor({ timeout: 10000 });
  await status.getByText("completed").waitFor({ timeout: 15000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page updated itself, no reload");
  await page.locator("#log pre").getByText("hello from jobward").waitFor({ timeout: 5000 });
  const events = await page.locator("#events tbody tr").allTextContents();
  assert.ok(events.some((t) => t.includes("dashboard:ops")), `the trigger is recorded with its actor: ${events}`);
  await shot(page, "execution");
  const [e] = await executionsOf("hello");
  assert.equal(e.status, "completed");
  await context.close();
});

test("a killed child's row turns failed on the job page, live", async () => {
  const { context, page } = await login(OPERATE);
  await Promise.all([
    page.waitForURL(/\/executions\/\d+$/),
    page.locator("tr[data-job=sleeper]").getByRole("button", { name: "Trigger" }).click(),
  ]);
  const id = Number(page.url().split("/").pop());
  const running = await waitFor("the sleeper to start", async () => {
    const r = await apiCall("GET", `/api/executions/${id}`, READ);
    return r.body.status === "running" && r.body.pid ? r.body : null;
  });
  await page.goto(`${api}/jobs/sleeper`);
  await page.evaluate(() => (window.__sameDocument = true));
  const row = page.locator(`#history tr[data-execution="${id}"]`);
  await row.getByText("running").waitFor();
  await shot(page, "job-running");
  process.kill(running.pid, "SIGKILL");
  await row.getByText("failed").waitFor({ timeout: 10000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, "the row changed without a reload");
  assert.match(await row.textContent(), /signal/, "the reason says it was a signal");
  await shot(page, "job");
  await page.goto(api + "/");
  await page.locator(`#failures tr[data-execution="${id}"]`).getByText("failed").waitFor();
  await shot(page, "overview");
  await context.close();
});

test("stale executions: a dry-run table, then apply with a confirmation", async () => {
  // A remote execution whose worker went silent; its lease (1 h) has not expired.
  const t = await apiCall("POST", "/api/jobs/stuck/trigger", OPERATE);
  assert.equal(t.status, 201);
  const claim = await apiCall("POST", "/api/worker/claim", WORKER, { worker_id: "silent", queues: ["remote"], batch: 1, wait_ms: 0 });
  const id = claim.body.executions[0].id;
  await new Promise((r) => setTimeout(r, 1500));
  const { context, page } = await login(OPERATE);
  await page.goto(`${api}/stale?stale_after=1s`);
  const row = page.locator(`#stale tr[data-execution="${id}"]`);
  await row.waitFor();
  assert.equal((await apiCall("GET", `/api/executions/${id}`, READ)).body.status, "running", "a dry run changes nothing");
  await shot(page, "stale");
  // Without the confirmation box the browser does not submit.
  await page.getByRole("button", { name: "Apply cleanup" }).click();
  assert.match(page.url(), /\/stale\?stale_after=1s$/);
  assert.equal((await apiCall("GET", `/api/executions/${id}`, READ)).body.status, "running");
  await page.locator("input[name=confirm]").check();
  await Promise.all([page.waitForURL(/applied=1/), page.getByRole("button", { name: "Apply cleanup" }).click()]);
  await page.getByText("Cleanup applied: 1").waitFor();
  const after = (await apiCall("GET", `/api/executions/${id}`, READ)).body;
  assert.equal(after.status, "timed_out");
  assert.equal(after.reason, "manual_cleanup");
  // The silent worker wakes up and reports success: refused, and the page shows the refusal
  // beside the record, which does not change.
  const lease = claim.body.executions[0];
  const late = await apiCall("POST", "/api/worker/complete", WORKER, {
    worker_id: "silent", id, attempt: lease.attempt, lease_token: lease.lease_token, outcome: "completed", exit_code: 0,
  });
  assert.equal(late.status, 409);
  await page.goto(`${api}/executions/${id}`);
  await page.locator("#events tr.refused").first().waitFor();
  assert.match(await page.locator("#status").textContent(), /timed out/);
  await shot(page, "execution-refused");
  await context.close();
});

test("the cancel button stops a running execution", async () => {
  const { context, page } = await login(OPERATE);
  await Promise.all([
    page.waitForURL(/\/executions\/\d+$/),
    page.locator("tr[data-job=sleeper]").getByRole("button", { name: "Trigger" }).click(),
  ]);
  await page.locator("#status").getByText("running").waitFor({ timeout: 10000 });
  page.once("dialog", (d) => d.accept());
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.locator("#status").getByText("cancelled").waitFor({ timeout: 15000 });
  assert.equal(await page.getByRole("button", { name: "Cancel" }).count(), 0, "no cancel button once terminal");
  await context.close();
});

test("a read-only visitor sees no buttons, and its forged posts change nothing", async () => {
  const { context, page } = await login(READ);
  const [one] = await executionsOf("hello");
  for (const path of ["/", "/jobs", "/jobs/hello", "/jobs/sleeper", `/executions/${one.id}`, "/stale?stale_after=1s"]) {
    await page.goto(api + path);
    // Only GET forms (the stale page's "look again") may remain: nothing that changes anything.
    const posts = await page.locator("main form[method=post]").count();
    const buttons = (await page.locator("main button").count()) - (await page.locator("main form[method=get] button").count());
    assert.equal(posts + buttons, 0, `${path} shows no buttons to a read-only visitor`);
    assert.equal(await page.getByText("read only").count(), 1);
  }
  await shot(page, "jobs-read-only");
  // Even with its own valid CSRF token (from its logout form), a read session cannot operate.
  const before = (await executionsOf("hello")).length;
  const res = await page.evaluate(async () => {
    const csrf = document.querySelector("form[action='/logout'] input[name=csrf]").value;
    const r = await fetch("/jobs/hello/trigger", { method: "POST", body: new URLSearchParams({ csrf }) });
    return { status: r.status, text: await r.text() };
  });
  assert.equal(res.status, 403);
  assert.match(res.text, /role read/);
  assert.equal((await executionsOf("hello")).length, before);
  await context.close();
});

test("forged form posts are refused and change nothing", async () => {
  const { context, page } = await login(OPERATE);
  const before = (await executionsOf("hello")).length;
  // Same origin, operator session, but no CSRF token: a form the dashboard did not render.
  const res = await page.evaluate(async () => {
    const r = await fetch("/jobs/hello/trigger", { method: "POST", body: new URLSearchParams({ csrf: "forged" }) });
    return { status: r.status, text: await r.text() };
  });
  assert.equal(res.status, 403);
  assert.match(res.text, /did not come from this dashboard/);
  // Another site auto-submits a form at the dashboard in the operator's browser.
  const { port } = evil.address();
  await page.goto(`http://127.0.0.2:${port}/`);
  await page.waitForURL(/\/jobs\/hello\/trigger$/);
  const body = await page.textContent("body");
  assert.match(body, /log in first|did not come from this dashboard/);
  assert.equal((await executionsOf("hello")).length, before, "no execution was created");
  // A worker token cannot log in.
  await page.goto(api + "/login");
  await page.fill("#token", WORKER);
  await page.click("button[type=submit]");
  await page.getByText("a worker token cannot open the dashboard").waitFor();
  await context.close();
});

test("pause and resume buttons, and a narrow screen", async () => {
  const { context, page } = await login(OPERATE, { width: 390, height: 844 });
  await page.goto(api + "/jobs/ticker");
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL(/\/jobs\/ticker$/), page.getByRole("button", { name: "Pause" }).click()]);
  await page.locator("h1").getByText("paused").waitFor();
  assert.equal((await apiCall("GET", "/api/jobs/ticker", READ)).body.job.paused, true);
  await page.goto(api + "/jobs");
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `the page fits a 390 px screen (scroll width ${width})`);
  await shot(page, "jobs-narrow");
  await page.goto(api + "/jobs/ticker");
  await Promise.all([page.waitForURL(/\/jobs\/ticker$/), page.getByRole("button", { name: "Resume" }).click()]);
  assert.equal((await apiCall("GET", "/api/jobs/ticker", READ)).body.job.paused, false);
  await context.close();
});

test("a job defined through the API: where it comes from, its changes, a run scheduled for later", async () => {
  let r = await apiCall("PUT", "/api/jobs/made-by-api", ADMIN, { queue: "reports", every: "1h" });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  r = await apiCall("PATCH", "/api/jobs/made-by-api", ADMIN, { every: "30m", priority: 4 });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  r = await apiCall("POST", "/api/jobs/made-by-api/trigger", OPERATE, { delay: "2h" });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const { context, page } = await login(READ);
  await page.goto(api + "/jobs");
  const row = page.locator("tr[data-job=made-by-api]");
  await row.locator(".tag.source").getByText("api").waitFor();
  assert.match(await row.innerText(), /scheduled for/, "a run due later is scheduled, not waiting");
  await page.goto(api + "/jobs/made-by-api");
  assert.match(await page.locator("#source").innerText(), /through the API/);
  const changes = await page.locator("#changes").innerText();
  assert.match(changes, /changed/);
  assert.match(changes, /api:root/);
  assert.match(changes, /every: 1h → 30m/);
  assert.match(await page.locator("h1").innerText(), /scheduled for/);
  await shot(page, "job-defined-through-the-api");
  await context.close();
  r = await apiCall("DELETE", "/api/jobs/made-by-api?cancel=true", ADMIN);
  assert.equal(r.status, 200, JSON.stringify(r.body));
});

test("the executions page: filters, counts, a bulk cancel that says how many and which, retry now and run again", async () => {
  let r = await apiCall("PUT", "/api/jobs/bulk-me", ADMIN, { queue: "nobody-claims", overlap: "allow" });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const ids = [];
  for (let i = 0; i < 3; i++) {
    r = await apiCall("POST", "/api/jobs/bulk-me/trigger", OPERATE, { payload: { n: i } });
    ids.push(r.body.execution.id);
  }
  const { context, page } = await login(OPERATE);
  await page.goto(api + "/executions?job=bulk-me");
  assert.equal(await page.locator("tr[data-execution]").count(), 3);
  assert.match(await page.locator("#counts").innerText(), /queued 3/);
  await page.check(`input[name=id][value="${ids[0]}"]`);
  await page.check(`input[name=id][value="${ids[1]}"]`);
  let said = "";
  page.once("dialog", (d) => { said = d.message(); d.accept(); });
  await Promise.all([page.waitForURL(/\/executions\/bulk$/), page.getByRole("button", { name: "Cancel selected" }).click()]);
  assert.equal(said, `Cancel 2 executions: ${ids[1]}, ${ids[0]}?`, "newest first, as listed");
  assert.match(await page.locator("#bulk-result").innerText(), /cancelled/);
  for (const id of ids.slice(0, 2)) assert.equal((await apiCall("GET", `/api/executions/${id}`, READ)).body.status, "cancelled");
  assert.equal((await apiCall("GET", `/api/executions/${ids[2]}`, READ)).body.status, "queued", "the unselected one is untouched");
  await page.goto(api + "/executions?job=bulk-me&status=cancelled");
  assert.equal(await page.locator("tr[data-execution]").count(), 2, "the filter shows the two");
  await shot(page, "executions");
  // Retry now: another attempt of a cancelled run, linked to it, with its payload.
  await page.goto(api + `/executions/${ids[0]}`);
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL((u) => !u.pathname.endsWith(`/${ids[0]}`)), page.getByRole("button", { name: "Retry now" }).click()]);
  const retryId = Number(page.url().split("/").pop());
  const retry = (await apiCall("GET", `/api/executions/${retryId}`, READ)).body;
  assert.equal(retry.retry_of, ids[0]);
  assert.equal(retry.attempt, 2);
  assert.deepEqual(retry.payload, { n: 0 });
  // Run again: a new run of the job with the same payload.
  page.once("dialog", (d) => d.accept());
  await Promise.all([page.waitForURL((u) => !u.pathname.endsWith(`/${retryId}`)), page.getByRole("button", { name: "Run again" }).click()]);
  const again = (await apiCall("GET", `/api/executions/${Number(page.url().split("/").pop())}`, READ)).body;
  assert.equal(again.trigger, "manual");
  assert.deepEqual(again.payload, { n: 0 });
  for (const p of ["nodes", "workers", "queues"]) {
    await page.goto(api + "/" + p);
    await shot(page, p);
  }
  assert.match(await page.locator("#queues").innerText(), /nobody-claims/);
  await context.close();
  await apiCall("DELETE", "/api/jobs/bulk-me?cancel=true", ADMIN);
});

test("a read-only visitor sees the executions page without selection or actions", async () => {
  const { context, page } = await login(READ);
  await page.goto(api + "/executions");
  assert.equal(await page.locator("input[name=id]").count(), 0);
  assert.equal(await page.getByRole("button", { name: "Cancel selected" }).count(), 0);
  const any = await page.locator("tr[data-execution]").first().getAttribute("data-execution");
  await page.goto(api + `/executions/${any}`);
  assert.equal(await page.getByRole("button", { name: "Retry now" }).count(), 0);
  assert.equal(await page.getByRole("button", { name: "Run again" }).count(), 0);
  const nodes = await page.goto(api + "/nodes");
  assert.equal(nodes.status(), 200);
  assert.match(await page.locator("#nodes").innerText(), /live/);
  await context.close();
});

test("the job page's duration chart has a time axis, p50 and p95, and the expected bounds", async () => {
  const r = await apiCall("POST", "/api/jobs/hello/trigger", OPERATE, {});
  await waitFor("the run to end", async () => (await apiCall("GET", `/api/executions/${r.body.execution.id}`, READ)).body.status === "completed");
  const { context, page } = await login(READ);
  await page.goto(api + "/jobs/hello");
  for (const k of ["p50", "p95", "min", "max"]) {
    assert.equal(await page.locator(`#chart .ref-${k}`).count(), 1, `a ${k} line`);
  }
  assert.match(await page.locator("#chart").innerText(), /oldest[\s\S]*newest/);
  assert.match(await page.locator("#job-fields").innerText(), /Expected duration\s+500ms\.\.5s/);
  await shot(page, "job-duration-chart");
  await context.close();
});
