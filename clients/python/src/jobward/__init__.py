"""jobward: the Python SDK of the jobward job scheduler and execution ledger.

- :class:`Client`: the HTTP API (trigger, bulk trigger, executions, events, cancel, and the
  worker protocol's calls).
- :class:`Worker`: claims executions of some queues and runs the handler registered for
  each job (sync or ``async def``), with heartbeats, progress, checkpoints, cancels, run
  timeouts, lost leases and graceful hand-back on SIGTERM.
"""

from .client import UNSET, Client
from .errors import (
    Cancelled,
    JobwardError,
    LeaseLost,
    NotFound,
    RunTimeout,
    ServerUnreachable,
    Stop,
    Unauthorized,
)
from .worker import Context, Worker

__version__ = "0.1.0"

__all__ = [
    "Client",
    "UNSET",
    "Worker",
    "Context",
    "JobwardError",
    "LeaseLost",
    "NotFound",
    "Unauthorized",
    "ServerUnreachable",
    "Stop",
    "Cancelled",
    "RunTimeout",
    "__version__",
]
