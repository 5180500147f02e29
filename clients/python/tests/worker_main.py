"""A worker process for the tests: the SDK's Worker with the handlers below, run until SIGTERM.

Each handler appends lines to the --marks file so the test can see what the handler saw.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time

from jobward import Cancelled, LeaseLost, Worker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--queue", action="append", required=True)
    p.add_argument("--marks", required=True)
    p.add_argument("--worker-id")
    p.add_argument("--grace", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(levelname)s %(message)s")

    def mark(*parts: object) -> None:
        with open(a.marks, "a") as f:
            f.write(" ".join(str(x) for x in parts) + "\n")
            f.flush()
            os.fsync(f.fileno())

    w = Worker(a.server, token=a.token, queues=a.queue, concurrency=a.concurrency, worker_id=a.worker_id, shutdown_grace=a.grace, claim_wait=1.0)

    @w.handler("crashy")
    def crashy(ctx):  # attempt 1 runs until its process is killed; a retry completes
        mark("started", ctx.execution_id, ctx.attempt, os.getpid())
        if ctx.attempt == 1:
            ctx.sleep(60)
        mark("done", ctx.execution_id, ctx.attempt, os.getpid())
        return "ok"

    @w.handler("frozen")
    def frozen(ctx):  # runs until told to stop; says how it was told
        mark("started", ctx.execution_id, ctx.attempt, os.getpid())
        try:
            for _ in range(600):
                ctx.sleep(0.1)
        except LeaseLost as e:
            mark("told", ctx.execution_id, "LeaseLost", f"lease_lost={ctx.lease_lost}", e.code)
            raise
        except Cancelled:
            mark("told", ctx.execution_id, "Cancelled")
            raise
        mark("finished", ctx.execution_id)

    @w.handler("short")
    def short(ctx):
        mark("started", ctx.execution_id, ctx.attempt, os.getpid())
        time.sleep(1.0)  # not cooperative: finishes within the grace anyway
        mark("done", ctx.execution_id, ctx.attempt, os.getpid())

    @w.handler("long")
    async def long(ctx):  # async: the first attempt outlasts any grace; a retry is quick
        mark("started", ctx.execution_id, ctx.attempt, os.getpid())
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                mark("told", ctx.execution_id, "CancelledError", f"cancelled={ctx.cancelled}", ctx.stop_reason)
                raise
        mark("done", ctx.execution_id, ctx.attempt, os.getpid())

    w.run()
    mark("exited", os.getpid(), w.stats)


if __name__ == "__main__":
    main()
