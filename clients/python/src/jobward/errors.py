"""Exceptions of the jobward SDK."""

from __future__ import annotations

from typing import Optional


class JobwardError(Exception):
    """An error answered by the server (``{"error": {"code", "message"}}``) or a failure to reach it.

    ``code`` is the server's stable, machine-readable code (``bad_request``, ``unauthorized``,
    ``forbidden``, ``not_found``, ``conflict``, ``lease_lost``, ...), or ``unreachable`` when the
    server could not be reached, or ``protocol`` when its answer was not understood.
    ``status`` is the HTTP status (``None`` when there was no answer).
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth trying again: the server was unreachable, busy or failing."""
        return self.code == "unreachable" or (self.status is not None and self.status >= 500)


class LeaseLost(JobwardError):
    """The lease is not ours any more: the ledger already ended the execution.

    Raised by the client for a ``409 lease_lost`` answer, and inside a handler at its next
    ``ctx`` call once the worker learned the lease was lost. Nothing more may be reported
    for that execution.
    """

    def __init__(self, message: str = "lease lost", status: Optional[int] = 409) -> None:
        super().__init__("lease_lost", message, status)


class NotFound(JobwardError):
    """``404 not_found``: no such job or execution."""


class Unauthorized(JobwardError):
    """``401 unauthorized`` or ``403 forbidden``: the token is missing, wrong or lacks the role."""


class ServerUnreachable(JobwardError):
    """The server could not be reached or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message, None)


class Stop(Exception):
    """Base of the exceptions a handler gets at a ``ctx`` call when it must stop."""


class Cancelled(Stop):
    """A cancel was requested for this execution (or the worker is handing it back on
    shutdown): stop now. The run is recorded ``cancelled`` (or handed back)."""


class RunTimeout(Stop):
    """The run exceeded its run timeout (``terminate_after_ms``): stop now. The run is
    recorded ``timed_out``."""


def from_answer(status: int, code: str, message: str) -> JobwardError:
    if code == "lease_lost":
        return LeaseLost(message, status)
    if code == "not_found" or status == 404:
        return NotFound(code, message, status)
    if code in ("unauthorized", "forbidden") or status in (401, 403):
        return Unauthorized(code, message, status)
    return JobwardError(code, message, status)
