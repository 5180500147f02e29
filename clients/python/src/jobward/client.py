"""A client for jobward's HTTP API (standard library only).

Every method returns the server's JSON answer as plain dicts (typed with ``TypedDict``s in
:mod:`jobward.types`) and raises :class:`jobward.JobwardError` (or a subclass) with the
server's error code and message when the server refuses.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union, cast

from .errors import JobwardError, ServerUnreachable, from_answer
from .types import (
    BackfillResponse,
    CancelResponse,
    ClaimedExecution,
    CompletionResult,
    Event,
    Execution,
    ExecutionPage,
    HeartbeatResponse,
    Job,
    JobDefinition,
    JobDeleteResponse,
    JobDetail,
    JobPutResponse,
    ReleaseResponse,
    TriggerItemResult,
    TriggerResponse,
)

__all__ = ["Client", "UNSET"]


class _Unset:
    def __repr__(self) -> str:  # pragma: no cover
        return "UNSET"


#: "No payload" (``None`` is a valid JSON payload: ``null``).
UNSET: Any = _Unset()

Json = Any
When = Union[str, _dt.datetime]


def _rfc3339(t: When) -> str:
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise ValueError("run_at must be timezone-aware (or an RFC 3339 string)")
        return t.isoformat()
    return t


def _duration(d: Union[str, float, int, _dt.timedelta]) -> str:
    """jobward durations are text ("90s", "500ms"); numbers are seconds."""
    if isinstance(d, str):
        return d
    if isinstance(d, _dt.timedelta):
        d = d.total_seconds()
    ms = int(round(float(d) * 1000))
    if ms < 0:
        raise ValueError("delay must not be negative")
    return f"{ms}ms"


def _trigger_body(
    payload: Json = UNSET,
    idempotency_key: Optional[str] = None,
    priority: Optional[int] = None,
    run_at: Optional[When] = None,
    delay: Union[None, str, float, int, _dt.timedelta] = None,
) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if payload is not UNSET:
        body["payload"] = payload
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if priority is not None:
        body["priority"] = priority
    if run_at is not None:
        body["run_at"] = _rfc3339(run_at)
    if delay is not None:
        body["delay"] = _duration(delay)
    return body


def _job_path(name: str) -> str:
    return f"/api/jobs/{urllib.parse.quote(name, safe='')}"


def _serves(body: Dict[str, Any], handlers: Optional[Sequence[str]], commands: Optional[bool]) -> None:
    """What a claiming worker runs: the handler jobs it names, and commands or not."""
    if handlers is not None:
        if isinstance(handlers, str):
            raise TypeError("handlers is a list of job names, not one string")
        body["handlers"] = list(handlers)
    if commands is not None:
        body["commands"] = bool(commands)


class Client:
    """The jobward HTTP API.

    ``server_url`` is the server's base URL (``http://127.0.0.1:8080``); ``token`` the bearer
    secret (``read``/``operate`` for the client API, ``admin`` to define jobs as well,
    ``worker`` for the worker protocol).
    ``timeout`` bounds each request in seconds (a long-polling claim adds its wait to it).
    """

    def __init__(self, server_url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        base = server_url.rstrip("/")
        if not (base.startswith("http://") or base.startswith("https://")):
            raise ValueError(f"server URL {server_url!r} must start with http:// or https://")
        self.base_url = base
        self.token = token
        self.timeout = timeout

    # -- transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        query: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """One request; the decoded JSON answer, or a :class:`JobwardError`."""
        url = self.base_url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = None
        headers = {"Accept": "application/json", "User-Agent": "jobward-python/0.1.0"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            except Exception:  # pragma: no cover - a broken answer
                raw = b""
            finally:
                e.close()
            status = e.code
            try:
                err = json.loads(raw)["error"]
                code, message = str(err["code"]), str(err["message"])
            except Exception:
                code, message = ("unknown", raw.decode("utf-8", "replace")[:500] or e.reason or "")
            raise from_answer(status, code, message) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerUnreachable(f"{method} {url}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise JobwardError("protocol", f"{method} {path} answered {status} with non-JSON", status) from None

    def _get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def _post(self, path: str, body: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {}, timeout=timeout)

    # -- jobs and triggers -------------------------------------------------------------------

    def trigger(
        self,
        job: str,
        payload: Json = UNSET,
        *,
        idempotency_key: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Optional[When] = None,
        delay: Union[None, str, float, int, _dt.timedelta] = None,
    ) -> TriggerResponse:
        """Queues a run of ``job`` (operate role).

        ``payload``: any JSON value (≤16 KiB), handed to the run (``ctx.payload``,
        ``JOBWARD_PAYLOAD``). ``idempotency_key``: the same key returns the first execution
        (``created`` is then false). ``priority``: -1000..1000, higher claimed first.
        ``run_at`` (aware datetime or RFC 3339) or ``delay`` (seconds, timedelta or "90s"):
        not before then. Answers ``{created, skipped, execution, replaced}``.
        """
        body = _trigger_body(payload, idempotency_key, priority, run_at, delay)
        return cast(TriggerResponse, self._post(f"/api/jobs/{urllib.parse.quote(job, safe='')}/trigger", body))

    def trigger_many(self, triggers: Iterable[Mapping[str, Any]]) -> List[TriggerItemResult]:
        """Up to 1,000 triggers in one call and one transaction (``POST /api/triggers``).

        Each item is ``{"job": NAME, "payload"?, "idempotency_key"?, "priority"?, "run_at"?,
        "delay"?}``; each is answered alone, in order: ``result`` is ``accepted``,
        ``repeated`` (its idempotency key matched) or ``rejected`` (see ``error``).
        """
        items = []
        for t in triggers:
            t = dict(t)
            job = t.pop("job")
            item = _trigger_body(
                t.pop("payload", UNSET),
                t.pop("idempotency_key", None),
                t.pop("priority", None),
                t.pop("run_at", None),
                t.pop("delay", None),
            )
            if t:
                raise ValueError(f"unknown trigger fields: {sorted(t)}")
            items.append({"job": job, **item})
        return cast(List[TriggerItemResult], self._post("/api/triggers", {"triggers": items})["results"])

    def jobs(self) -> List[Job]:
        return cast(List[Job], self._get("/api/jobs")["jobs"])

    def job(self, name: str) -> JobDetail:
        """``{job, recent, served, workers, definition, changes}``: ``served`` says in words
        which workers run the job (or why none does); ``workers`` lists those seen claiming in
        the last 5 minutes; ``definition`` is its whole definition (what :meth:`put_job`
        takes); ``changes`` its recorded changes, newest first (``{at, actor, action, before,
        after}``); ``job["source"]`` is ``file`` or ``api``."""
        return cast(JobDetail, self._get(_job_path(name)))

    def pause(self, job: str) -> Dict[str, Any]:
        return cast(Dict[str, Any], self._post(f"/api/jobs/{urllib.parse.quote(job, safe='')}/pause"))

    def resume(self, job: str) -> Dict[str, Any]:
        return cast(Dict[str, Any], self._post(f"/api/jobs/{urllib.parse.quote(job, safe='')}/resume"))

    def backfill(self, job: str, from_: When, to: When) -> BackfillResponse:
        """Fires each instant of ``job``'s schedule in [``from_``, ``to``] (aware datetimes or
        RFC 3339) that has no execution yet, at most 1,000 (operate role). Answers
        ``{created, already}``: the new executions' ids (queued, or skipped under the job's
        overlap policy) and how many instants already had one."""
        body = {"from": _rfc3339(from_), "to": _rfc3339(to)}
        return cast(BackfillResponse, self._post(_job_path(job) + "/backfill", body))

    # -- job definitions (admin role) --------------------------------------------------------

    def put_job(self, name: str, definition: JobDefinition) -> JobPutResponse:
        """Creates or replaces the job ``name`` with this whole definition (admin role).

        ``definition`` has the fields of a ``[[job]]`` of the configuration file (``queue``,
        ``command``, ``schedule``/``every``, ``retry={"max_attempts": 3}``, durations as text
        like ``"90s"``); absent fields take the server's ``[defaults]``. A handler job (a
        ``queue`` and no ``command``) needs nothing more; a ``command`` is refused
        (:class:`Unauthorized`, ``403 forbidden``) unless the server sets ``[server]
        api_commands = true``. Jobs of the configuration file are not the API's to change
        (``409 conflict``). Answers ``{created, job, definition}``: ``created`` is false when
        it replaced an existing job.
        """
        return cast(JobPutResponse, self.request("PUT", _job_path(name), body=definition))

    def patch_job(self, name: str, patch: JobDefinition) -> JobPutResponse:
        """Changes some fields of a job the API defined (admin role): a JSON merge patch, the
        fields given replace, ``None`` resets one to its default, absent ones stay.
        ``{"paused": True}`` (or ``False``) alone also works on the configuration file's jobs.
        Answers ``{created: false, job, definition}``."""
        return cast(JobPutResponse, self.request("PATCH", _job_path(name), body=patch))

    def delete_job(self, name: str, cancel: bool = False) -> JobDeleteResponse:
        """Deletes a job the API defined (admin role); its history remains. A job with live
        executions is refused (``409 conflict``) unless ``cancel`` is true, which cancels the
        queued ones and asks the running ones to stop. Answers ``{name, cancelled}``."""
        query = {"cancel": "true"} if cancel else None
        return cast(JobDeleteResponse, self.request("DELETE", _job_path(name), query=query))

    # -- executions --------------------------------------------------------------------------

    def list_executions(
        self,
        *,
        job: Optional[str] = None,
        status: Union[None, str, Sequence[str]] = None,
        since: Optional[When] = None,
        until: Optional[When] = None,
        before: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> ExecutionPage:
        """One page of executions, newest first: ``{executions, next_before}``."""
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        return cast(
            ExecutionPage,
            self._get(
                "/api/executions",
                job=job,
                status=status,
                since=_rfc3339(since) if since is not None else None,
                until=_rfc3339(until) if until is not None else None,
                before=before,
                limit=limit,
            ),
        )

    def iter_executions(self, **filters: Any) -> Iterator[Execution]:
        """Every execution matching ``filters`` (as :meth:`list_executions`), page by page."""
        before = filters.pop("before", None)
        while True:
            page = self.list_executions(before=before, **filters)
            yield from page["executions"]
            before = page.get("next_before")
            if before is None:
                return

    def get_execution(self, id: int) -> Execution:
        return cast(Execution, self._get(f"/api/executions/{int(id)}"))

    def events(self, id: int) -> List[Event]:
        """The execution's event log: transitions, refused late reports, notes."""
        return cast(List[Event], self._get(f"/api/executions/{int(id)}/events")["events"])

    def log(self, id: int, tail_bytes: Optional[int] = None) -> Optional[str]:
        return cast(Optional[str], self._get(f"/api/executions/{int(id)}/log", tail_bytes=tail_bytes)["log"])

    def cancel(self, id: int) -> CancelResponse:
        """``{result: cancelled | requested | already_terminal, execution}`` (operate role)."""
        return cast(CancelResponse, self._post(f"/api/executions/{int(id)}/cancel"))

    def reschedule(
        self,
        id: int,
        run_at: Optional[When] = None,
        delay: Union[None, str, float, int, _dt.timedelta] = None,
    ) -> Execution:
        """Moves the start of a queued execution (operate role): not before ``run_at`` (aware
        datetime or RFC 3339) or ``delay`` from now (seconds, timedelta or "10m"); exactly
        one of them. Answers the execution (its ``run_at`` moved)."""
        if (run_at is None) == (delay is None):
            raise ValueError("give run_at or delay (exactly one)")
        body = _trigger_body(run_at=run_at, delay=delay)
        return cast(Execution, self.request("PATCH", f"/api/executions/{int(id)}", body=body))

    def health(self) -> Dict[str, Any]:
        return cast(Dict[str, Any], self._get("/api/system/health"))

    # -- worker protocol (worker role) -------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        batch: int = 1,
        wait_ms: int = 0,
        *,
        handlers: Optional[Sequence[str]] = None,
        commands: Optional[bool] = None,
    ) -> List[ClaimedExecution]:
        """Claims up to ``batch`` executions of ``queues``. With ``handlers`` (job names), only
        those handler jobs are offered, plus jobs with a command when ``commands`` is true;
        with neither, everything on the queues is offered."""
        body: Dict[str, Any] = {"worker_id": worker_id, "queues": list(queues), "batch": batch, "wait_ms": wait_ms}
        _serves(body, handlers, commands)
        answer = self._post("/api/worker/claim", body, timeout=self.timeout + wait_ms / 1000.0)
        return cast(List[ClaimedExecution], answer["executions"])

    def heartbeat(
        self, worker_id: str, leases: Sequence[Mapping[str, Any]], timeout: Optional[float] = None
    ) -> HeartbeatResponse:
        """Renews every lease in one call: ``{renewed, lost, cancel}``. Raises
        :class:`LeaseLost` only when every lease in it is lost."""
        return cast(HeartbeatResponse, self._post("/api/worker/heartbeat", {"worker_id": worker_id, "leases": list(leases)}, timeout))

    def complete(
        self,
        worker_id: str,
        id: int,
        attempt: int,
        lease_token: str,
        outcome: str,
        *,
        exit_code: Optional[int] = None,
        signal: Optional[int] = None,
        error: Optional[str] = None,
        log_tail: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Records how a run ended: ``{execution, retry}``; :class:`LeaseLost` when refused."""
        body: Dict[str, Any] = {
            "worker_id": worker_id,
            "id": id,
            "attempt": attempt,
            "lease_token": lease_token,
            "outcome": outcome,
        }
        for k, v in (("exit_code", exit_code), ("signal", signal), ("error", error), ("log_tail", log_tail)):
            if v is not None:
                body[k] = v
        return cast(Dict[str, Any], self._post("/api/worker/complete", body))

    def complete_batch(self, worker_id: str, completions: Sequence[Mapping[str, Any]]) -> List[CompletionResult]:
        answer = self._post("/api/worker/complete-batch", {"worker_id": worker_id, "completions": list(completions)})
        return cast(List[CompletionResult], answer["results"])

    def exchange(
        self,
        worker_id: str,
        queues: Sequence[str],
        completions: Sequence[Mapping[str, Any]] = (),
        batch: int = 1,
        wait_ms: int = 0,
        *,
        handlers: Optional[Sequence[str]] = None,
        commands: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """Completes these, then claims the next: ``{results, executions}`` (``handlers`` and
        ``commands`` as for :meth:`claim`)."""
        body: Dict[str, Any] = {
            "worker_id": worker_id,
            "queues": list(queues),
            "completions": list(completions),
            "batch": batch,
            "wait_ms": wait_ms,
        }
        _serves(body, handlers, commands)
        return cast(Dict[str, Any], self._post("/api/worker/exchange", body, timeout=self.timeout + wait_ms / 1000.0))

    def release(self, worker_id: str, leases: Sequence[Mapping[str, Any]], reason: Optional[str] = None) -> ReleaseResponse:
        """Hands runs back (``cancelled``/``handed_back``; queued again at once, not counted
        as a retry): ``{released, retries, lost}``."""
        body: Dict[str, Any] = {"worker_id": worker_id, "leases": list(leases)}
        if reason is not None:
            body["reason"] = reason
        return cast(ReleaseResponse, self._post("/api/worker/release", body))

    def progress(
        self,
        id: int,
        attempt: int,
        lease_token: str,
        *,
        progress: Optional[float] = None,
        phase: Optional[str] = None,
        checkpoint: Json = UNSET,
    ) -> Execution:
        """Progress from inside a run, proven by its lease token (what ``jobward heartbeat`` does)."""
        body: Dict[str, Any] = {"attempt": attempt, "lease_token": lease_token}
        if progress is not None:
            body["progress"] = progress
        if phase is not None:
            body["phase"] = phase
        if checkpoint is not UNSET:
            body["checkpoint"] = checkpoint
        return cast(Execution, self._post(f"/api/executions/{int(id)}/progress", body))
