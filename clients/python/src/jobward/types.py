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


class JobDetail(TypedDict, total=False):
    job: Dict[str, Any]
    recent: List[Execution]
    #: Who serves the job's queue, in words ("served by 1 worker on queue 'py' (w1; ...)", or
    #: why no worker runs it).
    served: Optional[str]
    workers: List[WorkerView]
