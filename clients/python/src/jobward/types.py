"""The shapes of the server's JSON answers (see the server's ``/api/openapi.json``).

They are ``TypedDict``s: at run time every answer is a plain ``dict``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

try:  # Python 3.8+
    from typing import TypedDict
except ImportError:  # pragma: no cover
    from typing_extensions import TypedDict  # type: ignore


class Execution(TypedDict, total=False):
    id: int
    job: str
    number: int
    attempt: int
    max_attempts: int
    status: str  # queued running completed failed timed_out cancelled skipped
    status_text: str
    lease_expired: bool
    heartbeat_age_ms: Optional[int]
    trigger: str
    scheduled_for: Optional[str]
    queued_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    heartbeat_at: Optional[str]
    lease_expires_at: Optional[str]
    run_deadline: Optional[str]
    runtime_ms: Optional[int]
    reason: Optional[str]
    message: Optional[str]
    exit_code: Optional[int]
    signal: Optional[int]
    retry_of: Optional[int]
    runner: str
    node_id: Optional[str]
    lease_owner: Optional[str]
    pid: Optional[int]
    cancel_requested: Optional[str]
    progress: Optional[float]
    phase: Optional[str]
    payload: Any
    #: Not before this time: set for a delayed run (or a retry waiting out its backoff).
    run_at: Optional[str]
    priority: int  # -1000..1000, higher claimed first
    command: str  # empty for a handler job
    #: A queued run must start by then, or it times out.
    start_deadline: Optional[str]
    #: A running run whose cancel was requested is settled by then at the latest.
    cancel_deadline: Optional[str]
    pgid: Optional[int]


class ExecutionPage(TypedDict, total=False):
    executions: List[Execution]
    next_before: Optional[int]


class Event(TypedDict, total=False):
    id: int
    execution_id: int
    at: str
    kind: str  # transition refused note
    to: Optional[str]
    reason: Optional[str]
    message: str
    actor: str


class TriggerResponse(TypedDict, total=False):
    created: bool
    skipped: bool
    execution: Execution
    replaced: List[int]


class ErrorDetail(TypedDict):
    code: str
    message: str


class TriggerItemResult(TypedDict, total=False):
    job: str
    result: str  # accepted repeated rejected
    id: Optional[int]
    number: Optional[int]
    status: Optional[str]
    error: Optional[ErrorDetail]


class CancelResponse(TypedDict, total=False):
    result: str  # cancelled requested already_terminal
    execution: Execution


class ClaimedExecution(TypedDict, total=False):
    id: int
    job: str
    number: int
    attempt: int
    max_attempts: int
    command: str
    trigger: str
    scheduled_for: Optional[str]
    payload: Any
    checkpoint: Any
    lease_token: str
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    terminate_after_ms: int
    kill_grace_ms: int
    traceparent: Optional[str]


class LostLease(TypedDict, total=False):
    id: int
    status: Optional[str]
    reason: Optional[str]


class CancelRequest(TypedDict):
    id: int
    reason: str


class HeartbeatResponse(TypedDict):
    renewed: List[int]
    lost: List[LostLease]
    cancel: List[CancelRequest]


class ReleaseResponse(TypedDict):
    released: List[int]
    retries: List[int]
    lost: List[LostLease]


class CompletionResult(TypedDict, total=False):
    id: int
    result: str  # accepted repeated lease_lost rejected
    status: Optional[str]
    retry: Optional[int]
    error: Optional[ErrorDetail]


class WorkerView(TypedDict, total=False):
    """A worker seen claiming from a job's queue in the last 5 minutes that runs it."""

    id: str
    queues: List[str]
    handlers: Optional[List[str]]  # absent: offered every job of its queues
    commands: bool
    last_claim_at: str


class RunRef(TypedDict, total=False):
    """An execution in a job's summary (``live``, ``last_finished``)."""

    id: int
    number: int
    attempt: int
    status: str
    reason: Optional[str]
    queued_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    run_at: str


class Job(TypedDict, total=False):
    """A job, with its status derived from its executions."""

    name: str
    command: str  # empty for a handler job
    schedule_kind: str  # cron every manual
    schedule: str  # "cron 0 0 2 * * * (Europe/Berlin)", "every 30s", "manual"
    next_fire_at: Optional[str]
    status: str
    status_text: str
    lease_expired: bool
    paused: bool
    defined: bool  # false once it is gone from the configuration (or deleted through the API)
    overlap: str
    misfire: str
    concurrency_key: Optional[str]
    runner: str
    heartbeat_timeout_ms: int
    run_timeout_ms: int
    queue_timeout_ms: int
    max_attempts: int
    source: str  # file (the configuration file owns it) or api
    priority: int
    live: List[RunRef]  # its queued and running executions, oldest first
    last_finished: Optional[RunRef]


class HistoryDefinition(TypedDict, total=False):
    keep_last: Optional[int]
    max_age: Optional[str]


class RetryDefinition(TypedDict, total=False):
    max_attempts: Optional[int]
    backoff: Optional[str]
    max_backoff: Optional[str]


class JobDefinition(TypedDict, total=False):
    """A job definition: the fields of a ``[[job]]`` of the configuration file, with the same
    names and forms (durations as text: ``"90s"``). In a patch, ``None`` resets a field."""

    name: Optional[str]  # may be left out; it must match the name in the path
    command: Optional[str]  # absent with a queue: a handler job
    schedule: Optional[str]  # cron, in ``timezone``
    every: Optional[str]
    timezone: Optional[str]
    heartbeat_timeout: Optional[str]
    run_timeout: Optional[str]
    queue_timeout: Optional[str]
    kill_grace: Optional[str]
    overlap: Optional[str]  # skip queue replace allow
    misfire: Optional[str]  # run_once skip
    misfire_grace: Optional[str]
    concurrency_key: Optional[str]
    history: Optional[HistoryDefinition]
    retry: Optional[RetryDefinition]
    queue: Optional[str]
    priority: Optional[int]
    paused: Optional[bool]


class JobChange(TypedDict, total=False):
    """One recorded change of a job: who, when, the definition before and after."""

    at: str
    actor: str  # api:TOKEN-NAME, cli:USER@HOST, dashboard:TOKEN-NAME, ...
    action: str  # created replaced changed deleted paused resumed
    before: Optional[JobDefinition]
    after: Optional[JobDefinition]


class JobDetail(TypedDict, total=False):
    job: Job
    recent: List[Execution]
    #: Who serves the job's queue, in words ("served by 1 worker on queue 'py' (w1; ...)", or
    #: why no worker runs it).
    served: Optional[str]
    workers: List[WorkerView]
    #: Its whole definition, every field explicit: what :meth:`Client.put_job` takes.
    definition: JobDefinition
    #: Its recorded changes (through the API, pause and resume), newest first.
    changes: List[JobChange]


class JobPutResponse(TypedDict):
    created: bool  # false: it replaced (or changed) an existing job
    job: Job
    definition: JobDefinition  # as stored


class JobDeleteResponse(TypedDict):
    name: str
    cancelled: List[int]  # its live executions, cancelled (queued) or asked to stop (running)


class BackfillResponse(TypedDict):
    created: List[int]  # one execution per missed instant
    already: int  # instants that already had their execution
