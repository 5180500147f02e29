"""The server stops answering (SIGSTOP) for longer than a lease: the worker treats its leases
as lost, tells the handler and kills the command's process group, and reports nothing later."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import WORKER, job, wait_for, wait_status

from jobward import LeaseLost, Worker


@pytest.fixture(scope="module")
def server(make_server, tmp_path_factory):
    pidfile = tmp_path_factory.mktemp("u") / "cmd.pid"
    s = make_server(job("u-handler", "q-u") + job("u-cmd", "q-u", command=f"echo $$ > {pidfile}; exec sleep 60"))
    s.pidfile = pidfile
    return s


def test_server_unreachable_longer_than_a_lease_means_lost(server):
    api = server.api
    told = []
    started = threading.Event()
    w = Worker(server.url, token=WORKER, queues=["q-u"], concurrency=2, run_commands=True, claim_wait=1.0)

    @w.handler("u-handler")
    def handle(ctx):
        started.set()
        try:
            while True:
                ctx.sleep(0.05)
        except LeaseLost:
            told.append((time.monotonic(), ctx.lease_lost))
            raise

    w.start()
    try:
        h = api.trigger("u-handler")["execution"]["id"]
        c = api.trigger("u-cmd")["execution"]["id"]
        assert started.wait(10)
        pid = int(wait_for(lambda: server.pidfile.exists() and server.pidfile.read_text().strip(), 10, "the command"))
        wait_status(api, h, "running")
        wait_status(api, c, "running")
        assert os.getpgid(pid) == pid
        server.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            wait_for(lambda: told, 6, "the handler to be told its lease is lost")
            wait_for(lambda: not _alive(pid), 3, "the command's process group to be killed")
            assert told[0][1] is True
            assert told[0][0] - t0 < 1.0 + 2.0, told  # the lease, plus one heartbeat round's timeout
        finally:
            server.proc.send_signal(signal.SIGCONT)
        for id in (h, c):
            e = wait_status(api, id, ["completed", "failed", "timed_out", "cancelled"], timeout=10)
            assert (e["status"], e["reason"]) == ("timed_out", "heartbeat_timeout"), e
        time.sleep(1.0)
        for id in (h, c):
            # The worker knew its leases were lost: it sent nothing more for them.
            assert not [ev for ev in api.events(id) if ev["kind"] == "refused"], api.events(id)
    finally:
        server.proc.send_signal(signal.SIGCONT)
        w.stop(grace=0, wait=True, timeout=40)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
