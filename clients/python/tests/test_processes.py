"""SDK worker processes killed, frozen and stopped, against a real server."""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import pytest
from conftest import WorkerProcess, job, marks, wait_for, wait_status

RETRY = 'retry = { max_attempts = 2, backoff = "100ms", max_backoff = "100ms" }'
LEASE = 1.0  # heartbeat_timeout of these jobs
REAPER_TICK = 0.25


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(
        job("crashy", "q-kill", retry=RETRY.split(" = ", 1)[1])
        + job("frozen", "q-stop")
        + job("short", "q-term")
        + job("long", "q-term")
    )


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.kill()


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def started_line(path: Path, id: int, attempt: int = 1):
    return [l for l in marks(path) if l.startswith(f"started {id} {attempt} ")]


def test_sigkilled_worker_times_out_and_the_retry_completes_elsewhere(server, procs, tmp_path):
    api = server.api
    m = tmp_path / "marks"
    a = WorkerProcess(server, ["q-kill"], m, "--worker-id", "py-a")
    procs.append(a)
    first = api.trigger("crashy")["execution"]["id"]
    wait_for(lambda: started_line(m, first), 15, "worker A to start the run")
    wait_status(api, first, "running")
    a.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.proc.wait(5)
    e = wait_status(api, first, ["timed_out", "failed", "completed", "cancelled"], timeout=LEASE + REAPER_TICK + 5)
    settled_after = time.monotonic() - killed_at
    assert e["status"] == "timed_out", e
    assert e["reason"] == "heartbeat_timeout", e
    # Within the lease plus a reaper tick (and a little polling slack) of the last heartbeat.
    silent = (ts(e["finished_at"]) - ts(e["heartbeat_at"])).total_seconds()
    assert silent <= LEASE + REAPER_TICK + 0.3, (silent, e)
    assert settled_after <= LEASE + REAPER_TICK + 1.0, settled_after
    # The retry is queued and another SDK worker process completes it.
    b = WorkerProcess(server, ["q-kill"], m, "--worker-id", "py-b")
    procs.append(b)
    retry = wait_for(
        lambda: [x for x in api.list_executions(job="crashy")["executions"] if x.get("retry_of") == first], 5, "the retry"
    )[0]
    assert retry["attempt"] == 2
    done = wait_status(api, retry["id"], ["completed", "failed", "timed_out", "cancelled"], timeout=10)
    assert done["status"] == "completed", done
    assert done["lease_owner"] == "py-b"
    assert f"done {retry['id']} 2 {b.pid}" in marks(m)


def test_sigstopped_worker_is_refused_and_told_its_lease_is_lost(server, procs, tmp_path):
    api = server.api
    m = tmp_path / "marks"
    w = WorkerProcess(server, ["q-stop"], m, "--worker-id", "py-frozen")
    procs.append(w)
    id = api.trigger("frozen")["execution"]["id"]
    wait_for(lambda: started_line(m, id), 15, "the handler to start")
    wait_status(api, id, "running")
    time.sleep(0.5)  # a few renewals
    w.signal(signal.SIGSTOP)
    settled = wait_status(api, id, ["timed_out", "failed", "completed", "cancelled"], timeout=LEASE + REAPER_TICK + 5)
    assert settled["status"] == "timed_out" and settled["reason"] == "heartbeat_timeout", settled
    events_before = api.events(id)
    time.sleep(0.5)
    w.signal(signal.SIGCONT)
    # The handler is told: LeaseLost at its next ctx call, with ctx.lease_lost set.
    told = wait_for(lambda: [l for l in marks(m) if l.startswith(f"told {id} ")], 10, "the handler to be told")
    assert told[0] == f"told {id} LeaseLost lease_lost=True lease_lost", told
    # Its late report (the heartbeat that found out) was refused and written to the event log.
    refused = wait_for(lambda: [e for e in api.events(id) if e["kind"] == "refused"], 5, "a refused event")
    assert all(e["reason"] == "lease_lost" for e in refused), refused
    time.sleep(1.0)  # anything the worker would still send has been sent
    after = api.get_execution(id)
    for field in ("status", "reason", "message", "finished_at", "exit_code", "attempt"):
        assert after[field] == settled[field], (field, settled, after)
    events_after = api.events(id)
    assert events_after[: len(events_before)] == events_before
    # Nothing but refusals after the reaper settled it; no completion was even attempted.
    extra = events_after[len(events_before) :]
    assert extra and all(e["kind"] == "refused" for e in extra), extra
    assert not any("completion" in e["message"] for e in extra), extra
    assert not [l for l in marks(m) if l.startswith(f"finished {id}")]
    assert w.proc.poll() is None, "the worker keeps running after losing a lease"


def test_sigterm_completes_a_short_run_and_hands_back_a_long_one(server, procs, tmp_path):
    api = server.api
    m = tmp_path / "marks"
    a = WorkerProcess(server, ["q-term"], m, "--worker-id", "py-term-a", "--grace", "2", "--concurrency", "2")
    procs.append(a)
    short = api.trigger("short")["execution"]["id"]
    long = api.trigger("long")["execution"]["id"]
    wait_for(lambda: started_line(m, short) and started_line(m, long), 15, "both runs to start")
    a.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert a.proc.wait(15) == 0, a.output()
    took = time.monotonic() - t0
    assert took < 2 + 0.5 + 3, took  # grace, the jobs' kill_grace, and reporting
    assert wait_status(api, short, "completed", timeout=2)["lease_owner"] == "py-term-a"
    handed = api.get_execution(long)
    assert (handed["status"], handed["reason"]) == ("cancelled", "handed_back"), handed
    told = [l for l in marks(m) if l.startswith(f"told {long} ")]
    assert told == [f"told {long} CancelledError cancelled=True handed_back"], marks(m)
    exited = [l for l in marks(m) if l.startswith(f"exited {a.pid}")]
    assert exited, a.output()
    # Handed back, not failed: queued again at once, and another worker completes it.
    again = [x for x in api.list_executions(job="long")["executions"] if x.get("retry_of") == long]
    assert len(again) == 1 and again[0]["status"] == "queued", again
    b = WorkerProcess(server, ["q-term"], m, "--worker-id", "py-term-b")
    procs.append(b)
    done = wait_status(api, again[0]["id"], ["completed", "failed", "timed_out", "cancelled"], timeout=10)
    assert done["status"] == "completed" and done["lease_owner"] == "py-term-b", done
