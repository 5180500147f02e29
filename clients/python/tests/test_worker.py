"""The SDK worker in this process, against a real server: handlers (sync and async) of
handler jobs (a queue, no command), progress, checkpoints and retries, cancels from the CLI,
run timeouts, only what a worker declares is offered to it (and the job's `served` line),
hand-back of a job offered anyway, commands in their own process group, and one heartbeat
call for all leases."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from conftest import WORKER, job, wait_for, wait_status

from jobward import Cancelled, Client, RunTimeout, Worker

RETRY2 = '{ max_attempts = 2, backoff = "100ms", max_backoff = "100ms" }'
KINDS = ["sync", "async"]
TERMINAL = ["completed", "failed", "timed_out", "cancelled", "skipped"]


def jobs() -> str:
    out = ""
    for k in KINDS:
        out += job(f"report-{k}", f"q-report-{k}")
        out += job(f"fails-{k}", f"q-fails-{k}")
        out += job(f"flaky-{k}", f"q-flaky-{k}", retry=RETRY2)
        out += job(f"slow-{k}", f"q-slow-{k}")
        out += job(f"hang-{k}", f"q-hang-{k}", run_timeout='"1s"')
    out += job("known", "q-mixed") + job("unknown", "q-mixed")
    out += job("old-known", "q-old") + job("old-unknown", "q-old")
    out += job("offer-handler", "q-cmd-offer") + job("cmd-offer", "q-cmd-offer", command="echo ran-by=$JOBWARD_WORKER_ID")
    out += job("hb", "q-hb")
    out += job(
        "cmd",
        "q-cmd",
        command='read _ _ _ _ pgid _ < /proc/$$/stat; echo "pid=$$ pgid=$pgid job=$JOBWARD_JOB id=$JOBWARD_EXECUTION_ID '
        'attempt=$JOBWARD_ATTEMPT worker=$JOBWARD_WORKER_ID payload=$JOBWARD_PAYLOAD"; sleep 30 & echo "child=$!"; exit 3',
    )
    out += job("cmd-stubborn", "q-cmd-stubborn", command="trap '' TERM; echo stubborn; sleep 30", run_timeout='"1s"')
    return out


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(jobs())


@pytest.fixture
def workers(server):
    started = []

    def start(queues, **kw):
        kw.setdefault("concurrency", 2)
        kw.setdefault("claim_wait", 1.0)
        w = Worker(server.url, token=WORKER, queues=queues, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(grace=0, wait=True, timeout=15)


def trigger(server, name, payload=None):
    return server.api.trigger(name, payload)["execution"]["id"]


@pytest.mark.parametrize("kind", KINDS)
def test_handler_completes_and_reports_progress(server, workers, kind):
    api = server.api
    seen = {}
    go = threading.Event()
    w = workers([f"q-report-{kind}"], worker_id=f"py-report-{kind}")

    def record(ctx):
        seen.update(
            execution_id=ctx.execution_id, job=ctx.job, attempt=ctx.attempt, payload=ctx.payload, last=ctx.last_checkpoint
        )
        ctx.progress(0.4, phase="upload")

    if kind == "sync":

        @w.handler("report-sync")
        def handle(ctx):
            record(ctx)
            assert go.wait(10)
            return "sent"

    else:

        @w.handler("report-async")
        async def handle(ctx):
            record(ctx)
            while not go.is_set():
                await asyncio.sleep(0.02)
            return "sent"

    w.start()
    id = trigger(server, f"report-{kind}", {"to": "ops@example.com"})
    # The next heartbeat carries progress and phase.
    e = wait_for(lambda: (lambda x: x if x.get("phase") == "upload" else None)(api.get_execution(id)), 5, "progress")
    assert e["status"] == "running" and e["progress"] == pytest.approx(0.4) and e["lease_owner"] == f"py-report-{kind}"
    go.set()
    done = wait_status(api, id, TERMINAL)
    assert done["status"] == "completed", done
    assert seen == {"execution_id": id, "job": f"report-{kind}", "attempt": 1, "payload": {"to": "ops@example.com"}, "last": None}


@pytest.mark.parametrize("kind", KINDS)
def test_failing_handler_is_failed_with_its_message_and_traceback(server, workers, kind):
    api = server.api
    w = workers([f"q-fails-{kind}"])
    if kind == "sync":

        @w.handler("fails-sync")
        def handle(ctx):
            ctx.log("writing the report")
            raise RuntimeError("disk full on /data")

    else:

        @w.handler("fails-async")
        async def handle(ctx):
            ctx.log("writing the report")
            await asyncio.sleep(0)
            raise RuntimeError("disk full on /data")

    w.start()
    id = trigger(server, f"fails-{kind}")
    e = wait_status(api, id, TERMINAL)
    assert (e["status"], e["reason"]) == ("failed", "worker_error"), e
    assert "disk full on /data" in e["message"], e
    tail = api.log(id) or ""
    assert "writing the report" in tail and "Traceback" in tail and "RuntimeError: disk full on /data" in tail, tail
    # Nothing retried: max_attempts is 1.
    assert [x["id"] for x in api.list_executions(job=f"fails-{kind}")["executions"]] == [id]


@pytest.mark.parametrize("kind", KINDS)
def test_retry_receives_the_last_checkpoint_of_the_failed_attempt(server, workers, kind):
    api = server.api
    seen = []
    w = workers([f"q-flaky-{kind}"])

    def body(ctx):
        seen.append((ctx.attempt, ctx.last_checkpoint))
        if ctx.attempt == 1:
            ctx.checkpoint({"page": 6})
            ctx.checkpoint({"page": 7, "of": 10})
            raise ValueError("page 8 is corrupt")  # at once: the checkpoint must still reach the server

    if kind == "sync":
        w.register("flaky-sync", body)
    else:

        async def handle(ctx):
            body(ctx)

        w.register("flaky-async", handle)
    w.start()
    first = trigger(server, f"flaky-{kind}")
    e = wait_status(api, first, TERMINAL)
    assert e["status"] == "failed" and "page 8 is corrupt" in e["message"], e
    retry = wait_for(lambda: [x for x in api.list_executions(job=f"flaky-{kind}")["executions"] if x.get("retry_of") == first], 5)[0]
    done = wait_status(api, retry["id"], TERMINAL)
    assert done["status"] == "completed" and done["attempt"] == 2, done
    assert seen == [(1, None), (2, {"page": 7, "of": 10})], seen


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_from_the_cli_reaches_the_handler(server, workers, kind):
    api = server.api
    told = []
    started = threading.Event()
    w = workers([f"q-slow-{kind}"])
    if kind == "sync":

        @w.handler("slow-sync")
        def handle(ctx):
            started.set()
            try:
                while True:
                    ctx.sleep(0.05)
            except Cancelled:
                told.append(("Cancelled", ctx.cancelled, ctx.stop_reason))
                raise

    else:

        @w.handler("slow-async")
        async def handle(ctx):
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                told.append(("CancelledError", ctx.cancelled, ctx.stop_reason))
                raise

    w.start()
    id = trigger(server, f"slow-{kind}")
    assert started.wait(10)
    wait_status(api, id, "running")
    # `runs cancel` has no --server/--token: it works on the ledger named by the configuration,
    # and by default waits until the owner (this worker) confirmed the stop.
    t0 = time.monotonic()
    out = server.cli("runs", "cancel", str(id), "--config", str(server.config))
    assert out.returncode == 0, (out.stdout, out.stderr)
    e = wait_status(api, id, TERMINAL)
    assert (e["status"], e["reason"]) == ("cancelled", "cancel_requested"), e
    assert time.monotonic() - t0 < 5
    kind_of_exc = "Cancelled" if kind == "sync" else "CancelledError"
    assert told == [(kind_of_exc, True, "cancel_requested")], told


@pytest.mark.parametrize("kind", KINDS)
def test_run_timeout_reports_timed_out(server, workers, kind):
    api = server.api
    told = []
    w = workers([f"q-hang-{kind}"])
    if kind == "sync":

        @w.handler("hang-sync")
        def handle(ctx):
            time.sleep(4)  # cannot be interrupted: it is abandoned after the kill grace
            try:
                ctx.check()
            except RunTimeout:
                told.append("RunTimeout")

    else:

        @w.handler("hang-async")
        async def handle(ctx):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                told.append(("CancelledError", ctx.timed_out))
                raise

    w.start()
    t0 = time.monotonic()
    id = trigger(server, f"hang-{kind}")
    e = wait_status(api, id, TERMINAL)
    took = time.monotonic() - t0
    assert e["status"] == "timed_out", e
    assert "run timeout" in (e["message"] or ""), e
    if kind == "sync":
        assert took < 3.5, took  # 1 s run timeout + 0.5 s kill grace, not the 4 s the handler takes
        wait_for(lambda: told, 5, "the abandoned handler to find out")
        assert told == ["RunTimeout"]
    else:
        assert took < 2.5, took  # cancelled at the run timeout
        assert told == [("CancelledError", True)]


def test_handler_job_nobody_runs_stays_queued_until_a_worker_with_its_handler_comes(server, workers):
    api = server.api
    before = api.job("unknown")
    assert before["served"] == "no worker has claimed from queue 'q-mixed' in the last 5m", before["served"]
    assert before["workers"] == []
    w = workers(["q-mixed"], worker_id="py-mixed")
    w.register("known", lambda ctx: "ok")
    w.start()
    unknown = trigger(server, "unknown")
    # Work it has a handler for runs meanwhile.
    known = trigger(server, "known")
    done = wait_status(api, known, TERMINAL)
    assert (done["status"], done["lease_owner"]) == ("completed", "py-mixed"), done
    time.sleep(2.5)  # a few more claims of py-mixed (claim_wait 1 s)
    # Never offered to py-mixed: not claimed, not handed back, no other attempt.
    e = api.get_execution(unknown)
    assert (e["status"], e["attempt"], e.get("lease_owner"), e.get("started_at")) == ("queued", 1, None, None), e
    assert [x["id"] for x in api.list_executions(job="unknown")["executions"]] == [unknown]
    assert [(ev["kind"], ev.get("to")) for ev in api.events(unknown)] == [("transition", "queued")], api.events(unknown)
    assert w.stats["handed_back"] == 0, w.stats
    detail = api.job("unknown")
    assert detail["served"] == "1 worker claims from queue 'q-mixed' but does not run a handler for 'unknown'", detail["served"]
    assert detail["workers"] == [], detail["workers"]
    served_known = api.job("known")
    assert served_known["served"].startswith("served by 1 worker on queue 'q-mixed' (py-mixed;"), served_known["served"]
    [seen] = served_known["workers"]
    assert (seen["id"], seen["queues"], seen["handlers"], seen["commands"]) == ("py-mixed", ["q-mixed"], ["known"], False), seen
    # A worker with the handler starts: it claims and completes the same execution.
    w2 = workers(["q-mixed"], worker_id="py-mixed-2")
    w2.register("unknown", lambda ctx: "ok")
    w2.start()
    done = wait_status(api, unknown, TERMINAL)
    assert (done["status"], done["attempt"], done["lease_owner"]) == ("completed", 1, "py-mixed-2"), done
    assert [x["id"] for x in api.list_executions(job="unknown")["executions"]] == [unknown]
    detail = api.job("unknown")
    assert detail["served"].startswith("served by 1 worker on queue 'q-mixed' (py-mixed-2;"), detail["served"]
    assert [x["id"] for x in detail["workers"]] == ["py-mixed-2"], detail["workers"]
    assert w.stats["handed_back"] == 0 and w2.stats["handed_back"] == 0, (w.stats, w2.stats)


class OldServerClient(Client):
    """Drops what the claim declares, as if the server were one that ignores it."""

    def claim(self, worker_id, queues, batch=1, wait_ms=0, *, handlers=None, commands=None):
        self.claims = getattr(self, "claims", 0) + 1
        return super().claim(worker_id, queues, batch, wait_ms)


def test_a_job_without_a_handler_offered_anyway_is_handed_back_not_failed(server, workers):
    api = server.api
    client = OldServerClient(server.url, WORKER)
    w = workers(["q-old"], worker_id="py-old", client=client)
    w.register("old-known", lambda ctx: "ok")
    w.start()
    unknown = trigger(server, "old-unknown")
    e = wait_status(api, unknown, TERMINAL)
    assert (e["status"], e["reason"]) == ("cancelled", "handed_back"), e
    assert any("no handler for old-unknown on this worker" in ev["message"] for ev in api.events(unknown)), api.events(unknown)
    known = trigger(server, "old-known")
    assert wait_status(api, known, TERMINAL)["status"] == "completed"
    time.sleep(2.0)
    attempts = api.list_executions(job="old-unknown")["executions"]
    assert not [x for x in attempts if x["status"] == "failed"], attempts
    # Bounced back with a short growing pause (at most 2 s), not at full speed.
    assert 2 <= len(attempts) <= 12, [(x["id"], x["status"], x["reason"]) for x in attempts]
    w.stop(grace=0, wait=True, timeout=15)
    for x in api.list_executions(job="old-unknown", status="queued")["executions"]:
        api.cancel(x["id"])


def test_command_runs_in_its_own_process_group_and_reports_its_exit_code(server, workers):
    api = server.api
    w = workers(["q-cmd"], run_commands=True, worker_id="py-cmd")
    w.start()
    id = trigger(server, "cmd", {"n": 1})
    e = wait_status(api, id, TERMINAL)
    assert (e["status"], e["reason"], e["exit_code"]) == ("failed", "exit_code", 3), e
    out = api.log(id) or ""
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    assert fields["pid"] == fields["pgid"], out  # its own process group
    assert int(fields["pgid"]) != os.getpgid(0)
    assert fields["job"] == "cmd" and fields["id"] == str(id) and fields["attempt"] == "1", out
    assert fields["worker"] == "py-cmd" and fields["payload"] == '{"n":1}', out
    # What it left behind in its group was killed when it exited.
    child = int(fields["child"])
    wait_for(lambda: not _alive(child), 3, f"its background child {child} to be gone")


def test_command_past_its_run_timeout_gets_sigterm_then_sigkill(server, workers):
    api = server.api
    w = workers(["q-cmd-stubborn"], run_commands=True)
    w.start()
    t0 = time.monotonic()
    id = trigger(server, "cmd-stubborn")
    e = wait_status(api, id, TERMINAL)
    assert (e["status"], e["signal"]) == ("timed_out", 9), e
    assert time.monotonic() - t0 < 4
    assert "stubborn" in (api.log(id) or "")


def test_without_run_commands_a_command_job_is_not_offered(server, workers):
    api = server.api
    w = workers(["q-cmd-offer"], worker_id="py-no-commands")
    w.register("offer-handler", lambda ctx: "ok")
    w.start()
    id = trigger(server, "cmd-offer")
    handled = trigger(server, "offer-handler")
    assert wait_status(api, handled, TERMINAL)["status"] == "completed"
    time.sleep(2.5)  # a few more claims (claim_wait 1 s)
    e = api.get_execution(id)
    assert (e["status"], e["attempt"], e.get("lease_owner")) == ("queued", 1, None), e
    assert [(ev["kind"], ev.get("to")) for ev in api.events(id)] == [("transition", "queued")], api.events(id)
    assert w.stats["handed_back"] == 0, w.stats
    detail = api.job("cmd-offer")
    assert "its command" in detail["served"] and not detail["served"].startswith("served by"), detail["served"]
    assert detail["workers"] == [], detail["workers"]
    # A worker that runs commands takes it, while the first one still claims.
    w2 = workers(["q-cmd-offer"], run_commands=True, worker_id="py-commands")
    w2.start()
    done = wait_status(api, id, TERMINAL)
    assert (done["status"], done["attempt"], done["lease_owner"]) == ("completed", 1, "py-commands"), done
    assert "ran-by=py-commands" in (api.log(id) or "")
    detail = api.job("cmd-offer")
    assert detail["served"].startswith("served by 1 worker on queue 'q-cmd-offer' (py-commands;"), detail["served"]
    [seen] = detail["workers"]
    assert (seen["id"], seen["handlers"], seen["commands"]) == ("py-commands", [], True), seen
    assert w.stats["handed_back"] == 0 and w2.stats["handed_back"] == 0


class CountingClient(Client):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.heartbeats = []

    def heartbeat(self, worker_id, leases, timeout=None):
        self.heartbeats.append((time.monotonic(), sorted(l["id"] for l in leases)))
        return super().heartbeat(worker_id, leases, timeout)


def test_one_heartbeat_call_renews_every_lease(server, workers):
    api = server.api
    client = CountingClient(server.url, WORKER)
    go = threading.Event()
    w = workers(["q-hb"], concurrency=3, client=client)
    w.register("hb", lambda ctx: go.wait(20))
    w.start()
    ids = sorted(trigger(server, "hb") for _ in range(3))
    wait_for(lambda: all(api.get_execution(i)["status"] == "running" for i in ids), 10, "three runs")
    wait_for(lambda: client.heartbeats and client.heartbeats[-1][1] == ids, 5, "a heartbeat with all three")
    t0 = time.monotonic()
    time.sleep(2.0)
    window = [h for h in client.heartbeats if h[0] >= t0]
    go.set()
    for i in ids:
        assert wait_status(api, i, TERMINAL)["status"] == "completed"
    # heartbeat_timeout 1 s -> heartbeat_interval_ms 333: about 6 calls in 2 s, each with all three.
    assert all(leases == ids for _, leases in window), window
    assert 4 <= len(window) <= 8, len(window)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
