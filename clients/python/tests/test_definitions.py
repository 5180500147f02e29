"""Jobs defined at run time through the API (admin role): put_job, patch_job, delete_job, and
the operate calls that come with them (backfill, reschedule), against a real server."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import ADMIN_NAME, WORKER, job, wait_status

from jobward import JobwardError, NotFound, Unauthorized, Worker


@pytest.fixture(scope="module")
def server(make_server):
    # No [server] api_commands: the API may define handler jobs only. One job of the file.
    return make_server(job("file-job", "q-defs-file"))


def test_a_handler_job_defined_with_put_job_runs_is_recorded_and_deleted(server):
    put = server.admin.put_job("api-report", {"queue": "q-defs", "retry": {"max_attempts": 2}})
    assert put["created"] is True
    assert (put["job"]["name"], put["job"]["source"], put["job"]["command"]) == ("api-report", "api", "")
    assert put["definition"]["queue"] == "q-defs" and put["definition"]["retry"]["max_attempts"] == 2

    seen = {}
    w = Worker(server.url, token=WORKER, queues=["q-defs"], worker_id="py-defs", claim_wait=1.0)

    @w.handler("api-report")
    def handle(ctx):
        seen.update(job=ctx.job, payload=ctx.payload, max_attempts=ctx.max_attempts)

    w.start()
    try:
        id = server.api.trigger("api-report", {"to": "ops@example.com"})["execution"]["id"]
        done = wait_status(server.api, id, ["completed", "failed", "timed_out", "cancelled", "skipped"])
    finally:
        w.stop(grace=0, wait=True, timeout=15)
    assert done["status"] == "completed", done
    assert done["lease_owner"] == "py-defs"
    assert seen == {"job": "api-report", "payload": {"to": "ops@example.com"}, "max_attempts": 2}

    detail = server.api.job("api-report")
    assert detail["job"]["source"] == "api"
    assert detail["definition"]["queue"] == "q-defs"
    created = [c for c in detail["changes"] if c["action"] == "created"]
    assert len(created) == 1, detail["changes"]
    assert created[0]["actor"] == f"api:{ADMIN_NAME}"
    assert created[0].get("before") is None
    assert (created[0]["after"] or {}).get("queue") == "q-defs"
    dt.datetime.fromisoformat(created[0]["at"].replace("Z", "+00:00"))

    assert server.admin.delete_job("api-report") == {"name": "api-report", "cancelled": []}
    gone = server.api.job("api-report")
    assert gone["job"]["defined"] is False
    assert (gone["changes"][0]["action"], gone["changes"][0]["actor"]) == ("deleted", f"api:{ADMIN_NAME}")
    with pytest.raises(JobwardError):
        server.api.trigger("api-report")


def test_put_job_with_a_command_is_forbidden_without_api_commands(server):
    with pytest.raises(Unauthorized) as e:
        server.admin.put_job("api-command", {"command": "echo hi", "queue": "q-defs"})
    assert (e.value.code, e.value.status) == ("forbidden", 403)
    assert "api_commands" in e.value.message
    with pytest.raises(NotFound):
        server.api.job("api-command")  # a refused definition creates nothing
    # Defining jobs needs the admin role.
    with pytest.raises(Unauthorized) as e:
        server.api.put_job("api-x", {"queue": "q-defs"})
    assert (e.value.code, e.value.status) == ("forbidden", 403)
    # The configuration file's jobs are not the API's to change.
    with pytest.raises(JobwardError) as e:
        server.admin.put_job("file-job", {"queue": "q-defs"})
    assert (e.value.code, e.value.status) == ("conflict", 409)
    with pytest.raises(JobwardError) as e:
        server.admin.put_job("api-nothing", {})  # neither a command nor a queue
    assert e.value.status == 400


def test_patch_job_backfill_reschedule_and_delete_with_cancel(server):
    admin, api = server.admin, server.api
    # Fires on January 1st only: the scheduler leaves it alone during the test.
    assert admin.put_job("api-yearly", {"queue": "q-defs-yearly", "schedule": "0 0 1 1 *", "overlap": "allow"})["created"] is True
    again = admin.put_job("api-yearly", {"queue": "q-defs-yearly", "schedule": "0 0 1 1 *", "overlap": "allow", "priority": 3})
    assert again["created"] is False and again["job"]["priority"] == 3

    patched = admin.patch_job("api-yearly", {"priority": 7, "run_timeout": "5m"})
    assert patched["created"] is False
    assert (patched["definition"]["priority"], patched["definition"]["run_timeout"]) == (7, "5m")
    assert patched["definition"]["schedule"] == "0 0 1 1 *"  # what a patch leaves out stays
    assert admin.patch_job("api-yearly", {"priority": None})["definition"]["priority"] == 0  # None: the default

    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    bf = api.backfill("api-yearly", start, "2025-06-01T00:00:00Z")
    assert len(bf["created"]) == 2 and bf["already"] == 0, bf  # 2024-01-01 and 2025-01-01
    assert api.backfill("api-yearly", start, "2025-06-01T00:00:00Z") == {"created": [], "already": 2}
    first, second = bf["created"]
    e1 = api.get_execution(first)
    assert (e1["status"], e1["trigger"]) == ("queued", "backfill")

    before = dt.datetime.now(dt.timezone.utc)
    moved = api.reschedule(first, delay="10m")
    assert (moved["id"], moved["status"]) == (first, "queued")
    at = dt.datetime.fromisoformat((moved["run_at"] or "").replace("Z", "+00:00"))
    assert before + dt.timedelta(minutes=10, seconds=-2) <= at <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10, seconds=2)
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    moved2 = api.reschedule(second, run_at=when)
    at2 = dt.datetime.fromisoformat((moved2["run_at"] or "").replace("Z", "+00:00"))
    assert abs((at2 - when).total_seconds()) < 1, moved2
    with pytest.raises(ValueError):
        api.reschedule(second)
    with pytest.raises(ValueError):
        api.reschedule(second, run_at=when, delay=60)

    with pytest.raises(JobwardError) as e:
        admin.delete_job("api-yearly")  # live executions keep it unless cancel=True
    assert (e.value.code, e.value.status) == ("conflict", 409)
    deleted = admin.delete_job("api-yearly", cancel=True)
    assert sorted(deleted["cancelled"]) == [first, second]
    assert api.get_execution(first)["status"] == "cancelled"
    actions = [c["action"] for c in api.job("api-yearly")["changes"]]
    assert actions == ["deleted", "changed", "changed", "replaced", "created"]
