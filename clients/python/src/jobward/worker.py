"""A jobward worker that runs Python handlers (and, optionally, job commands).

Threads, not a framework: one thread claims, one heartbeats every held lease in one call,
each run has a supervisor thread (run timeout, stop escalation, completion) and a thread for
its sync handler; ``async def`` handlers share one asyncio event loop in its own thread.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal as _signal
import socket
import subprocess
import threading
import time
import traceback
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from .client import UNSET, Client
from .errors import Cancelled, JobwardError, LeaseLost, RunTimeout, Stop
from .types import ClaimedExecution

__all__ = ["Worker", "Context", "Handler"]

log = logging.getLogger("jobward.worker")

#: The most of a run's output sent as its log tail (the server keeps at most 64 KiB).
LOG_TAIL_BYTES = 60 * 1024
#: The server refuses longer errors.
ERROR_BYTES = 4096
#: The server refuses larger checkpoints.
CHECKPOINT_BYTES = 16 * 1024
#: The server takes at most this many handler names per claim.
MAX_HANDLERS = 200

# Why a run is being stopped.
CANCEL = "cancel_requested"
TIMEOUT = "run_timeout"
HANDBACK = "handed_back"
LOST = "lease_lost"

Handler = Callable[["Context"], Any]
F = TypeVar("F", bound=Handler)


def _clip_tail(text: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of ``text``, at most ``limit`` bytes of UTF-8."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    marker = f"[jobward: {len(raw) - limit} earlier bytes not shown]\n"
    keep = raw[-(limit - len(marker.encode())) :]
    return marker + keep.decode("utf-8", "ignore")


def _clip_head(text: str, limit: int = ERROR_BYTES) -> str:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


class _Tail:
    """The last ``limit`` bytes written, thread-safe."""

    def __init__(self, limit: int = LOG_TAIL_BYTES) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.buf += data
            over = len(self.buf) - self.limit
            if over > 0:
                del self.buf[:over]
                self.dropped += over

    def text(self) -> Optional[str]:
        with self.lock:
            if not self.buf and not self.dropped:
                return None
            head = f"[jobward: {self.dropped} earlier bytes not shown]\n" if self.dropped else ""
            return _clip_tail(head + self.buf.decode("utf-8", "replace"))


class Context:
    """What a handler gets: the run's facts, progress reporting, and whether it must stop.

    Progress, phase and checkpoint are carried by the worker's next heartbeat (and flushed
    before the run's completion). Once the run must stop (a cancel was requested, the run
    timeout passed, the worker hands it back on shutdown, or its lease was lost) the
    flags say so, :attr:`stop_event` is set, and the next call of :meth:`progress`,
    :meth:`checkpoint`, :meth:`check` or :meth:`sleep` raises :class:`Cancelled`,
    :class:`RunTimeout` or :class:`LeaseLost`.
    """

    def __init__(self, run: "_Run", worker_id: str) -> None:
        c = run.claim
        self._run = run
        self.execution_id: int = c["id"]
        self.job: str = c["job"]
        self.number: int = c.get("number", 0)
        self.attempt: int = c["attempt"]
        self.max_attempts: int = c.get("max_attempts", 0)
        self.trigger: str = c.get("trigger", "")
        self.scheduled_for: Optional[str] = c.get("scheduled_for")
        self.payload: Any = c.get("payload")
        #: The last checkpoint of the previous attempt (``None`` on a first attempt).
        self.last_checkpoint: Any = c.get("checkpoint")
        self.traceparent: Optional[str] = c.get("traceparent")
        self.command: str = c.get("command", "")
        self.lease_token: str = c["lease_token"]
        self.worker_id = worker_id
        #: Set as soon as the run must stop, whatever the reason.
        self.stop_event = threading.Event()
        self._log = _Tail()

    # -- what the handler learns -------------------------------------------------------------

    @property
    def stop_reason(self) -> Optional[str]:
        """``cancel_requested``, ``run_timeout``, ``handed_back``, ``lease_lost`` or ``None``."""
        return self._run.stop_reason

    @property
    def cancelled(self) -> bool:
        """A cancel was requested (or the worker is handing the run back on shutdown)."""
        return self._run.stop_reason in (CANCEL, HANDBACK)

    @property
    def lease_lost(self) -> bool:
        """The ledger already ended this run: nothing it does now will be recorded."""
        return self._run.stop_reason == LOST

    @property
    def timed_out(self) -> bool:
        return self._run.stop_reason == TIMEOUT

    @property
    def stopping(self) -> bool:
        return self._run.stop_reason is not None

    def time_left(self) -> float:
        """Seconds until the run timeout."""
        return max(0.0, self._run.terminate_at - time.monotonic())

    def check(self) -> None:
        """Raises :class:`Cancelled`, :class:`RunTimeout` or :class:`LeaseLost` if the run must stop."""
        why = self._run.stop_reason
        if why is None:
            return
        if why == LOST:
            raise LeaseLost(f"execution {self.execution_id}: the lease was lost; stop now", None)
        if why == TIMEOUT:
            raise RunTimeout(f"execution {self.execution_id} exceeded its run timeout")
        if why == HANDBACK:
            raise Cancelled(f"execution {self.execution_id}: the worker is shutting down and hands it back")
        raise Cancelled(f"execution {self.execution_id}: cancel requested")

    def sleep(self, seconds: float) -> None:
        """Sleeps, but wakes (and raises) as soon as the run must stop."""
        self.check()
        self.stop_event.wait(seconds)
        self.check()

    # -- what the handler reports ------------------------------------------------------------

    def progress(self, fraction: Optional[float] = None, phase: Optional[str] = None) -> None:
        """Reports progress (0..1) and/or a phase name; sent with the next heartbeat."""
        self.check()
        if fraction is not None:
            fraction = float(fraction)
            if not 0.0 <= fraction <= 1.0:
                raise ValueError("progress must be between 0 and 1")
        if phase is not None and len(phase) > 200:
            raise ValueError("phase must be at most 200 characters")
        self._run.report(progress=fraction, phase=phase)

    def checkpoint(self, value: Any) -> None:
        """Records a small JSON value (≤16 KiB) that a retry of this run receives as
        ``ctx.last_checkpoint``; sent with the next heartbeat (and before the completion)."""
        self.check()
        text = json.dumps(value)
        if len(text.encode("utf-8")) > CHECKPOINT_BYTES:
            raise ValueError(f"a checkpoint is at most {CHECKPOINT_BYTES} bytes of JSON")
        self._run.report(checkpoint=json.loads(text))

    def log(self, *parts: Any) -> None:
        """Appends a line to the run's log tail (sent with its completion; bounded)."""
        line = " ".join(str(p) for p in parts) + "\n"
        self._log.write(line.encode("utf-8", "replace"))


class _Run:
    """One claimed execution this worker holds."""

    def __init__(self, claim: ClaimedExecution, kind: str, fn: Optional[Handler]) -> None:
        self.claim = claim
        self.id: int = claim["id"]
        self.kind = kind  # "sync" | "async" | "command"
        self.fn = fn
        self.lock = threading.Lock()
        now = time.monotonic()
        self.started = now
        self.confirmed = now  # the lease was (re)granted at or after this instant
        self.heartbeat_timeout = max(claim.get("heartbeat_timeout_ms", 3000), 1) / 1000.0
        self.heartbeat_interval = max(claim.get("heartbeat_interval_ms", 1000), 50) / 1000.0
        self.terminate_at = now + claim.get("terminate_after_ms", 86_400_000) / 1000.0
        self.kill_grace = claim.get("kill_grace_ms", 10_000) / 1000.0
        self.stop_reason: Optional[str] = None
        self.stop_at: Optional[float] = None  # when a stop escalates (SIGKILL / abandon)
        self.wake = threading.Event()  # wakes the supervisor
        self.done = threading.Event()  # the handler (or command) ended
        self.result: Tuple[str, Any] = ("none", None)
        self.pending: Dict[str, Any] = {}
        self.pending_seq = 0
        self.ctx: Optional[Context] = None
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.output: Optional[_Tail] = None
        self.task: Optional["asyncio.Task[Any]"] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.reporting = False  # the supervisor is recording its end

    @property
    def proof(self) -> Dict[str, Any]:
        return {"id": self.id, "attempt": self.claim["attempt"], "lease_token": self.claim["lease_token"]}

    def report(self, **fields: Any) -> None:
        with self.lock:
            for k, v in fields.items():
                if v is not None or k == "checkpoint":
                    self.pending[k] = v
            self.pending_seq += 1

    def lease_report(self) -> Tuple[Dict[str, Any], int]:
        with self.lock:
            return {**self.proof, **self.pending}, self.pending_seq

    def sent(self, seq: int) -> None:
        with self.lock:
            if self.pending_seq == seq:
                self.pending = {}

    def has_pending(self) -> bool:
        with self.lock:
            return bool(self.pending)


class Worker:
    """Claims executions of ``queues`` and runs the handler registered for each job.

    ``concurrency``: runs at once. ``worker_id``: stable per process (default: host, pid and
    a random suffix). ``shutdown_grace``: seconds a stopping worker lets runs finish before
    handing the rest back. ``run_commands``: also run jobs that have a ``command`` (``sh -c``,
    like ``jobward worker``); without it the server never offers them to this worker.

    Every claim tells the server what this worker runs: ``handlers`` (the names of the
    registered handlers) and ``commands`` (``run_commands``). The server offers only the
    handler jobs (a ``queue`` and no ``command``) named there, plus jobs with a command when
    ``run_commands`` is set; everything else on the queues waits for a worker that runs it.
    ``claim_wait``: seconds one claim long-polls (also the longest a stop waits for an
    in-flight claim, whose executions are then handed back).
    """

    def __init__(
        self,
        server_url: str,
        token: Optional[str] = None,
        queues: Sequence[str] = ("default",),
        concurrency: int = 1,
        worker_id: Optional[str] = None,
        *,
        shutdown_grace: float = 10.0,
        run_commands: bool = False,
        claim_wait: float = 5.0,
        client: Optional[Client] = None,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client or Client(server_url, token)
        self.queues = list(queues)
        self.concurrency = concurrency
        self.worker_id = worker_id or f"py-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.shutdown_grace = shutdown_grace
        self.run_commands = run_commands
        self.claim_wait = max(0.0, min(claim_wait, 30.0))
        self.handlers: Dict[str, Handler] = {}
        self._runs: Dict[int, _Run] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()  # stop claiming
        self._stopped = threading.Event()  # run() returned
        self._hb_stop = threading.Event()
        self._hb_wake = threading.Event()
        self._hb_round = 0  # completed heartbeat rounds
        self._grace: Optional[float] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        self._thread: Optional[threading.Thread] = None
        self._fatal: Optional[BaseException] = None
        self.stats = {"completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0, "lost": 0, "handed_back": 0}

    # -- registration ------------------------------------------------------------------------

    def handler(self, job: str) -> Callable[[F], F]:
        """Decorator: ``@worker.handler("send-report")`` on ``def f(ctx)`` or ``async def f(ctx)``."""

        def register(fn: F) -> F:
            self.register(job, fn)
            return fn

        return register

    def register(self, job: str, fn: Handler) -> None:
        """Registers the handler of ``job``; the next claim already declares it."""
        if job not in self.handlers and len(self.handlers) >= MAX_HANDLERS:
            raise ValueError(f"a worker declares at most {MAX_HANDLERS} handlers")
        self.handlers[job] = fn

    def unregister(self, job: str) -> None:
        """Removes the handler of ``job``: later claims no longer declare it."""
        self.handlers.pop(job, None)

    # -- running -----------------------------------------------------------------------------

    def run(self, install_signal_handlers: bool = True) -> None:
        """Runs until :meth:`stop` (or SIGTERM/SIGINT when called from the main thread).

        A second SIGTERM/SIGINT skips the rest of the grace period.
        """
        restore: Dict[int, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (_signal.SIGTERM, _signal.SIGINT):
                restore[sig] = _signal.signal(sig, self._on_signal)
        try:
            self._run()
        finally:
            for sig, old in restore.items():
                _signal.signal(sig, old)
        if self._fatal is not None:
            raise self._fatal

    def start(self) -> "Worker":
        """Runs the worker in a background thread (no signal handlers); see :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name=f"jobward-worker-{self.worker_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: Optional[float] = None, wait: bool = False, timeout: Optional[float] = None) -> None:
        """Stops claiming; runs get ``grace`` seconds (default ``shutdown_grace``) to finish,
        the rest are stopped and handed back. With ``wait``, returns when that is done."""
        if grace is not None:
            self._grace = grace
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if wait:
            self._stopped.wait(timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        return self._stopped.wait(timeout)

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._runs)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            log.warning("second signal: handing back what still runs now")
            self._grace = 0.0
            with self._cond:
                self._cond.notify_all()
        else:
            log.info("signal %s: stopping (no more claims; %.1fs grace)", signum, self.shutdown_grace)
            self.stop()

    def _run(self) -> None:
        hb = threading.Thread(target=self._heartbeat_loop, name="jobward-heartbeat", daemon=True)
        hb.start()
        claimer = threading.Thread(target=self._claim_loop, name="jobward-claim", daemon=True)
        claimer.start()
        log.info(
            "worker %s claiming %s from %s (concurrency %d; handlers %s; commands %s)",
            self.worker_id,
            self.queues,
            self.client.base_url,
            self.concurrency,
            sorted(self.handlers),
            self.run_commands,
        )
        if not self.handlers and not self.run_commands:
            log.warning("worker %s has no handler and does not run commands: it is offered nothing", self.worker_id)
        try:
            self._stop.wait()
            log.info("worker %s stopping: no more claims; %d running", self.worker_id, self.running)
            grace = self.shutdown_grace if self._grace is None else self._grace
            until = time.monotonic() + grace
            with self._cond:
                while self._runs and time.monotonic() < until:
                    if self._grace is not None and self._grace <= 0:
                        break
                    self._cond.wait(min(0.1, max(0.0, until - time.monotonic())))
                left = list(self._runs.values())
            for r in left:
                self._request_stop(r, HANDBACK)
            # Wait for the claimer (its in-flight claim is handed back) and the supervisors.
            claimer.join(self.claim_wait + self.client.timeout + 1)
            with self._cond:
                limit = time.monotonic() + max([r.kill_grace for r in self._runs.values()] + [0]) + 30
                while self._runs and time.monotonic() < limit:
                    self._cond.wait(0.1)
        finally:
            self._hb_stop.set()
            self._hb_wake.set()
            hb.join(5)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
            log.info("worker %s stopped: %s", self.worker_id, self.stats)
            self._stopped.set()

    # -- claiming ----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        backoff = 0.2
        unhandled_backoff = 0.0
        while not self._stop.is_set():
            with self._cond:
                free = self.concurrency - len(self._runs)
                if free <= 0:
                    self._cond.wait(0.5)
                    continue
            try:
                claimed = self.client.claim(
                    self.worker_id,
                    self.queues,
                    batch=min(free, 100),
                    wait_ms=int(self.claim_wait * 1000),
                    handlers=sorted(self.handlers.copy()),
                    commands=self.run_commands,
                )
                backoff = 0.2
            except JobwardError as e:
                if e.transient:
                    log.warning("claim failed (%s); retrying in %.1fs", e, backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                log.error("claim refused (%s): stopping the worker", e)
                self._fatal = e
                self.stop()
                return
            if not claimed:
                continue
            log.info("claimed %s", [c["id"] for c in claimed])
            give_back: List[Tuple[ClaimedExecution, str]] = []
            started = 0
            for c in claimed:
                if self._stop.is_set():
                    give_back.append((c, "the worker is shutting down"))
                    continue
                fn = self.handlers.get(c["job"])
                if fn is not None:
                    kind = "async" if inspect.iscoroutinefunction(fn) else "sync"
                elif self.run_commands and c.get("command", "").strip():
                    kind = "command"
                else:
                    give_back.append((c, f"no handler for {c['job']} on this worker"))
                    continue
                self._start(_Run(c, kind, fn))
                started += 1
            if give_back:
                self._hand_back_claims(give_back)
            if give_back and not started and not self._stop.is_set():
                # The server offers only what the claim declared, so this happens only with an
                # old server that ignores `handlers`, or a handler unregistered meanwhile: do
                # not bounce such work back at full speed.
                unhandled_backoff = min(max(unhandled_backoff * 2, 0.25), 2.0)
                self._stop.wait(unhandled_backoff)
            elif started:
                unhandled_backoff = 0.0

    def _hand_back_claims(self, items: List[Tuple[ClaimedExecution, str]]) -> None:
        by_reason: Dict[str, List[Dict[str, Any]]] = {}
        for c, why in items:
            by_reason.setdefault(why, []).append({"id": c["id"], "attempt": c["attempt"], "lease_token": c["lease_token"]})
        for why, leases in by_reason.items():
            try:
                answer = self.client.release(self.worker_id, leases, reason=why)
                self.stats["handed_back"] += len(answer["released"])
                log.info("handed back %s (%s)", answer["released"], why)
            except JobwardError as e:
                log.warning("could not hand back %s (%s): the server settles them at their lease expiry", [l["id"] for l in leases], e)

    # -- one run -----------------------------------------------------------------------------

    def _start(self, r: _Run) -> None:
        r.ctx = Context(r, self.worker_id)
        with self._cond:
            self._runs[r.id] = r
        self._hb_wake.set()  # a shorter lease may need an earlier heartbeat
        try:
            if r.kind == "sync":
                threading.Thread(target=self._call_sync, args=(r,), name=f"jobward-run-{r.id}", daemon=True).start()
            elif r.kind == "async":
                loop = self._event_loop()
                r.loop = loop
                loop.call_soon_threadsafe(self._create_task, r)
            else:
                self._spawn(r)
        except Exception as e:  # could not start it at all
            r.result = ("error", (e, traceback.format_exc()))
            r.done.set()
        threading.Thread(target=self._supervise, args=(r,), name=f"jobward-supervise-{r.id}", daemon=True).start()

    def _call_sync(self, r: _Run) -> None:
        assert r.fn is not None and r.ctx is not None
        try:
            r.result = ("ok", r.fn(r.ctx))
        except BaseException as e:  # noqa: B902 - everything a handler raises is its failure
            r.result = ("error", (e, traceback.format_exc()))
        finally:
            r.done.set()
            r.wake.set()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._cond:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._loop_thread = threading.Thread(target=serve, name="jobward-asyncio", daemon=True)
                self._loop_thread.start()
                ready.wait(5)
                self._loop = loop
            return self._loop

    def _create_task(self, r: _Run) -> None:
        assert r.fn is not None and r.ctx is not None and r.loop is not None

        async def call() -> Any:
            return await r.fn(r.ctx)  # type: ignore[misc]

        task = r.loop.create_task(call())
        r.task = task

        def ended(t: "asyncio.Task[Any]") -> None:
            if t.cancelled():
                r.result = ("error", (asyncio.CancelledError(), "asyncio.CancelledError: the handler's task was cancelled\n"))
            elif t.exception() is not None:
                e = t.exception()
                r.result = ("error", (e, "".join(traceback.format_exception(type(e), e, e.__traceback__))))
            else:
                r.result = ("ok", t.result())
            r.done.set()
            r.wake.set()

        task.add_done_callback(ended)
        if r.stop_reason is not None:
            task.cancel()

    def _env(self, r: _Run) -> Dict[str, str]:
        c = r.claim
        env = dict(os.environ)
        env.update(
            {
                "JOBWARD_EXECUTION_ID": str(c["id"]),
                "JOBWARD_NODE_ID": self.worker_id,
                "JOBWARD_JOB": c["job"],
                "JOBWARD_RUN_NUMBER": str(c.get("number", "")),
                "JOBWARD_ATTEMPT": str(c["attempt"]),
                "JOBWARD_TRIGGER": str(c.get("trigger", "")),
                "JOBWARD_WORKER_ID": self.worker_id,
                "JOBWARD_SERVER_URL": self.client.base_url,
                "JOBWARD_LEASE_TOKEN": c["lease_token"],
            }
        )
        for var in ("JOBWARD_SCHEDULED_FOR", "JOBWARD_PAYLOAD", "JOBWARD_CHECKPOINT", "TRACEPARENT"):
            env.pop(var, None)
        if c.get("scheduled_for"):
            env["JOBWARD_SCHEDULED_FOR"] = str(c["scheduled_for"])
        if c.get("payload") is not None:
            env["JOBWARD_PAYLOAD"] = json.dumps(c["payload"], separators=(",", ":"))
        if c.get("checkpoint") is not None:
            env["JOBWARD_CHECKPOINT"] = json.dumps(c["checkpoint"], separators=(",", ":"))
        if c.get("traceparent"):
            env["TRACEPARENT"] = str(c["traceparent"])
        return env

    def _spawn(self, r: _Run) -> None:
        r.output = _Tail()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", r.claim["command"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env(r),
            start_new_session=True,  # its own session and process group: pgid == pid
            close_fds=True,
        )
        r.proc = proc
        log.info("execution %s: running `%s` as process group %s", r.id, r.claim["command"], proc.pid)

        def read() -> None:
            assert proc.stdout is not None and r.output is not None
            for chunk in iter(lambda: proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536), b""):  # type: ignore[union-attr]
                r.output.write(chunk)

        reader = threading.Thread(target=read, name=f"jobward-output-{r.id}", daemon=True)
        reader.start()

        def wait() -> None:
            code = proc.wait()
            _killpg(proc.pid, _signal.SIGKILL)  # whatever it left in its group
            reader.join(2)  # a process that left the group may keep the pipe open
            r.result = ("exit", code)
            r.done.set()
            r.wake.set()

        threading.Thread(target=wait, name=f"jobward-wait-{r.id}", daemon=True).start()

    def _request_stop(self, r: _Run, why: str) -> None:
        """Tells the run to stop. The first reason wins, except that a lost lease overrides."""
        with r.lock:
            if r.stop_reason is not None and not (why == LOST and r.stop_reason != LOST):
                return
            first = r.stop_reason is None
            r.stop_reason = why
            r.stop_at = time.monotonic() + (0.0 if why == LOST else r.kill_grace)
        assert r.ctx is not None
        r.ctx.stop_event.set()
        log.info("execution %s: stopping (%s)", r.id, why)
        if r.kind == "async" and r.loop is not None:
            loop, task = r.loop, r.task
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)
        elif r.kind == "command" and r.proc is not None and r.proc.returncode is None:
            _killpg(r.proc.pid, _signal.SIGKILL if why == LOST else _signal.SIGTERM if first else None)
        r.wake.set()

    def _lost(self, r: _Run, why: str) -> None:
        if r.stop_reason == LOST:
            return
        log.warning("execution %s: lease lost (%s); nothing more is reported for it", r.id, why)
        self.stats["lost"] += 1
        self._request_stop(r, LOST)

    def _supervise(self, r: _Run) -> None:
        try:
            self._watch(r)
            self._finish(r)
        except Exception:  # pragma: no cover - a bug here must not take the worker down
            log.exception("execution %s: supervisor failed", r.id)
        finally:
            with self._cond:
                self._runs.pop(r.id, None)
                self._cond.notify_all()

    def _watch(self, r: _Run) -> None:
        """Returns when the run ended, or was abandoned (a stop past its grace, a lost lease)."""
        escalated = False
        while not r.done.is_set():
            now = time.monotonic()
            if r.stop_reason is None and now >= r.terminate_at:
                self._request_stop(r, TIMEOUT)
                continue
            if r.stop_reason is not None and r.stop_at is not None and now >= r.stop_at:
                if r.kind == "command" and r.proc is not None:
                    if r.stop_reason != LOST:
                        log.warning("execution %s: still running %.1fs after SIGTERM: SIGKILL", r.id, r.kill_grace)
                    _killpg(r.proc.pid, _signal.SIGKILL)
                    # Its exit status is worth a moment (not for a lost lease: nothing is reported).
                    r.done.wait(0.05 if r.stop_reason == LOST else 5)
                elif r.stop_reason != LOST:
                    log.warning(
                        "execution %s: the handler did not stop within %.1fs; it is abandoned (its thread keeps running)",
                        r.id,
                        r.kill_grace,
                    )
                return
            deadlines = [r.terminate_at] if r.stop_reason is None else [r.stop_at or now]
            r.wake.wait(max(0.0, min(deadlines) - now) + 0.001)
            r.wake.clear()

    def _finish(self, r: _Run) -> None:
        why = r.stop_reason
        if why == LOST:
            return
        # Progress and a checkpoint written just before the end go out with one more heartbeat
        # (a completion cannot carry them, and a retry needs the last checkpoint).
        if r.has_pending():
            self._flush(r)
            if r.stop_reason == LOST:
                return
        if why == HANDBACK:
            try:
                answer = self.client.release(
                    self.worker_id, [r.proof], reason="the worker is shutting down and the run did not finish within its grace period"
                )
                if answer["released"]:
                    self.stats["handed_back"] += 1
                    log.info("execution %s handed back: it runs again at once (%s)", r.id, answer["retries"])
                else:
                    log.warning("execution %s: hand-back refused: the lease was already lost", r.id)
            except JobwardError as e:
                log.warning("execution %s: could not hand back (%s); the server settles it at its lease expiry", r.id, e)
            return
        kind, value = r.result
        fields: Dict[str, Any] = {}
        tail = r.ctx._log.text() if r.ctx is not None else None
        if r.kind == "command" and r.output is not None:
            tail = r.output.text()
        if kind == "exit":
            if value < 0:
                fields["signal"] = -value
            else:
                fields["exit_code"] = value
        if why == TIMEOUT:
            outcome = "timed_out"
            fields["error"] = f"exceeded its run timeout ({r.claim.get('terminate_after_ms')} ms); stopped by its worker" + (
                "" if r.done.is_set() else " (the handler did not stop and was abandoned)"
            )
        elif why == CANCEL:
            outcome = "cancelled"
        elif kind == "ok" or (kind == "exit" and value == 0):
            outcome = "completed"
        elif kind == "exit":
            outcome = "failed"
        elif kind == "error":
            outcome = "failed"
            exc, tb = value
            fields["error"] = _clip_head(str(exc) or type(exc).__name__)
            tail = (tail or "") + tb
        else:  # abandoned without a stop reason: cannot happen
            outcome = "failed"
            fields["error"] = "the handler ended without a result"
        if tail:
            fields["log_tail"] = _clip_tail(tail)
        self._complete(r, outcome, fields)

    def _flush(self, r: _Run) -> None:
        """Waits (a bounded time) for a heartbeat round that carried this run's pending reports."""
        with self._cond:
            target = self._hb_round + 2  # the round in flight may have missed them
        self._hb_wake.set()
        until = time.monotonic() + r.heartbeat_timeout
        with self._cond:
            while self._hb_round < target and time.monotonic() < until and r.has_pending():
                self._hb_wake.set()
                self._cond.wait(0.05)

    def _complete(self, r: _Run, outcome: str, fields: Dict[str, Any]) -> None:
        delay = 0.1
        r.reporting = True
        while True:
            if r.stop_reason == LOST:
                return
            try:
                answer = self.client.complete(self.worker_id, r.id, r.claim["attempt"], r.claim["lease_token"], outcome, **fields)
                self.stats[outcome] = self.stats.get(outcome, 0) + 1
                retry = answer.get("retry")
                log.info(
                    "execution %s: %s%s",
                    r.id,
                    answer["execution"]["status"],
                    f" (retry: execution {retry['id']})" if retry else "",
                )
                return
            except LeaseLost as e:
                log.warning("execution %s: completion refused: %s", r.id, e.message)
                self.stats["lost"] += 1
                return
            except JobwardError as e:
                if not e.transient:
                    log.error("execution %s: completion rejected: %s", r.id, e)
                    return
                # The lease stays in the heartbeat batch; the heartbeat loop declares it lost
                # once the server has been unreachable for longer than the lease.
                log.warning("execution %s: could not record its end yet (%s); retrying", r.id, e)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- heartbeats --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.is_set():
            with self._cond:
                runs = [r for r in self._runs.values() if r.stop_reason != LOST]
            interval = min([r.heartbeat_interval for r in runs] + [1.0])
            if runs:
                self._heartbeat(runs)
            with self._cond:
                self._hb_round += 1
                self._cond.notify_all()
            self._hb_wake.wait(interval)
            self._hb_wake.clear()

    def _heartbeat(self, runs: List[_Run]) -> None:
        reports = [r.lease_report() for r in runs]
        sent_at = time.monotonic()
        try:
            lease = min(r.heartbeat_timeout for r in runs)
            answer = self.client.heartbeat(self.worker_id, [rep for rep, _ in reports], timeout=max(1.0, lease))
        except LeaseLost as e:
            for r in runs:
                self._lost(r, e.message)
            return
        except JobwardError as e:
            now = time.monotonic()
            log.warning("heartbeat failed: %s", e)
            if e.code in ("bad_request", "invalid_json"):
                # A report the server will not take (never a lease matter): drop the reports.
                for r, (_, seq) in zip(runs, reports):
                    r.sent(seq)
            for r in runs:
                if now - r.confirmed > r.heartbeat_timeout:
                    self._lost(r, f"no heartbeat confirmed for {now - r.confirmed:.1f}s, longer than the lease ({r.heartbeat_timeout:.1f}s)")
            return
        by_id = {r.id: (r, seq) for r, (_, seq) in zip(runs, reports)}
        for i in answer.get("renewed", []):
            if i in by_id:
                r, seq = by_id[i]
                r.confirmed = sent_at
                r.sent(seq)
        for lost in answer.get("lost", []):
            if lost["id"] in by_id:
                self._lost(by_id[lost["id"]][0], f"the execution is {lost.get('status')} ({lost.get('reason')})")
        for c in answer.get("cancel", []):
            if c["id"] in by_id:
                self._request_stop(by_id[c["id"]][0], CANCEL)


def _killpg(pgid: int, sig: Optional[int]) -> None:
    if sig is None:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
