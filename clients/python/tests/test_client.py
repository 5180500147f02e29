"""The API client against a real server: triggers, bulk triggers, reads, cancel, errors."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import OPERATE, WORKER, job

from jobward import Client, JobwardError, LeaseLost, NotFound, Unauthorized


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(job("c-report", "q-client") + job("c-other", "q-client"))


def test_trigger_with_payload_idempotency_priority_and_delay(server):
    api = server.api
    r = api.trigger("c-report", {"to": "ops@example.com", "n": [1, 2]}, idempotency_key="k-1", priority=7)
    assert r["created"] is True
    e = r["execution"]
    assert (e["job"], e["status"], e["payload"]) == ("c-report", "queued", {"to": "ops@example.com", "n": [1, 2]})
    again = api.trigger("c-report", {"different": True}, idempotency_key="k-1")
    assert again["created"] is False and again["execution"]["id"] == e["id"]
    delayed = api.trigger("c-report", delay=3600)["execution"]
    later = api.trigger("c-report", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))["execution"]
    null_payload = api.trigger("c-report", None)["execution"]
    assert null_payload["payload"] is None
    # A worker claims the prioritised, due run first; the delayed ones are not claimable yet.
    w = Client(server.url, WORKER)
    claimed = w.claim("c-worker", ["q-client"], batch=10, wait_ms=0)
    ids = [c["id"] for c in claimed]
    assert ids[0] == e["id"], claimed
    assert delayed["id"] not in ids and later["id"] not in ids
    assert claimed[0]["payload"] == {"to": "ops@example.com", "n": [1, 2]}
    assert claimed[0]["lease_token"] and claimed[0]["heartbeat_interval_ms"] > 0
    for c in claimed:
        w.complete("c-worker", c["id"], c["attempt"], c["lease_token"], "completed")
    assert api.get_execution(e["id"])["status"] == "completed"
    for x in (delayed, later):
        assert api.cancel(x["id"])["result"] == "cancelled"


def test_bulk_trigger_is_answered_per_item(server):
    res = server.api.trigger_many(
        [
            {"job": "c-report", "payload": {"i": 1}},
            {"job": "c-other", "idempotency_key": "bulk-1"},
            {"job": "no-such-job"},
            {"job": "c-other", "idempotency_key": "bulk-1"},
        ]
    )
    assert [r["result"] for r in res] == ["accepted", "accepted", "rejected", "repeated"], res
    assert res[2]["error"]["code"] == "not_found", res[2]
    assert res[3]["id"] == res[1]["id"]
    for r in (res[0], res[1]):
        assert server.api.cancel(r["id"])["result"] == "cancelled"


def test_list_get_events_and_cancel(server):
    api = server.api
    ids = [api.trigger("c-other")["execution"]["id"] for _ in range(3)]
    page = api.list_executions(job="c-other", status=["queued"], limit=2)
    assert [x["id"] for x in page["executions"]] == sorted(ids, reverse=True)[:2]
    assert page["next_before"] is not None
    assert {x["id"] for x in api.iter_executions(job="c-other", status="queued", limit=1)} >= set(ids)
    c = api.cancel(ids[0])
    assert c["result"] == "cancelled" and c["execution"]["status"] == "cancelled"
    assert api.cancel(ids[0])["result"] == "already_terminal"
    got = api.get_execution(ids[0])
    assert (got["status"], got["reason"]) == ("cancelled", "cancel_requested")
    kinds = [(ev["kind"], ev.get("to")) for ev in api.events(ids[0])]
    assert kinds == [("transition", "queued"), ("transition", "cancelled")], kinds
    for i in ids[1:]:
        api.cancel(i)


def test_errors_carry_the_servers_code_and_message(server):
    with pytest.raises(NotFound) as e:
        server.api.trigger("no-such-job")
    assert e.value.code == "not_found" and e.value.status == 404 and "no-such-job" in e.value.message
    with pytest.raises(NotFound):
        server.api.get_execution(999_999)
    with pytest.raises(Unauthorized) as e:
        Client(server.url, WORKER).trigger("c-report")
    assert e.value.code == "forbidden" and e.value.status == 403
    with pytest.raises(Unauthorized) as e:
        Client(server.url, "not-a-token-0123456789").list_executions()
    assert e.value.code == "unauthorized" and e.value.status == 401
    with pytest.raises(JobwardError) as e:
        server.api.trigger("c-report", priority=5000)
    assert e.value.status == 400 and e.value.code in ("bad_request", "invalid_json"), e.value
    # A completion with a wrong lease token is refused as lease_lost.
    w = Client(server.url, WORKER)
    id = server.api.trigger("c-report")["execution"]["id"]
    c = w.claim("c-worker", ["q-client"], batch=1, wait_ms=2000)[0]
    assert c["id"] == id
    with pytest.raises(LeaseLost) as e:
        w.complete("c-worker", c["id"], c["attempt"], "not-the-token", "completed")
    assert e.value.code == "lease_lost" and e.value.status == 409
    w.complete("c-worker", c["id"], c["attempt"], c["lease_token"], "completed")
    with pytest.raises(JobwardError) as e:
        Client("http://127.0.0.1:9", OPERATE, timeout=2).list_executions()
    assert e.value.code == "unreachable" and e.value.transient
