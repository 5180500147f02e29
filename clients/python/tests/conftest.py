"""Starts a real `jobward serve` per test module (fresh SQLite ledger, tokens, short leases)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from jobward import Client

OPERATE = "sdk-test-operate-0123456789"
WORKER = "sdk-test-worker-0123456789"
ADMIN = "sdk-test-admin-0123456789"
#: The name of the admin token: changes made with it are recorded as ``api:root``.
ADMIN_NAME = "root"
REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


def jobward_bin() -> str:
    b = os.environ.get("JOBWARD_BIN") or str(REPO / "target" / "debug" / "jobward")
    if not os.path.isabs(b):
        b = str(REPO / b)
    if not os.access(b, os.X_OK):
        pytest.exit(f"jobward binary not found at {b}: build it (cargo build) or set JOBWARD_BIN", returncode=2)
    return b


def job(name: str, queue: str, command: Optional[str] = None, **settings: str) -> str:
    """A [[job]] table: a handler job (a queue and no command) unless ``command`` is given.
    Settings are TOML values written as given (e.g. retry='{ ... }')."""
    lines = ["[[job]]", f'name = "{name}"', f'queue = "{queue}"']
    if command is not None:
        lines.append(f"command = {toml_str(command)}")
    settings.setdefault("heartbeat_timeout", '"1s"')
    settings.setdefault("kill_grace", '"500ms"')
    settings.setdefault("overlap", '"allow"')  # the default, skip, records overlapping triggers as skipped
    for k, v in settings.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Server:
    def __init__(self, jobs: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobward-sdk-"))
        self.config = self.dir / "jobward.toml"
        self.config.write_text(
            f"""
[[token]]
name = "ops"
role = "operate"
secret = "{OPERATE}"
[[token]]
name = "pyworker"
role = "worker"
secret = "{WORKER}"
[[token]]
name = "{ADMIN_NAME}"
role = "admin"
secret = "{ADMIN}"
[server]
db = "sqlite://{self.dir}/ledger.db"
log_dir = "{self.dir}/logs"
bind = "127.0.0.1:0"
reaper_interval = "250ms"
poll_interval = "100ms"
shutdown_grace = "2s"

{jobs}
"""
        )
        self.bin = jobward_bin()
        self.log_path = self.dir / "serve.log"
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--config", str(self.config)],
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        self.url = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m = re.search(r"api=(\S+)", self.log_path.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise RuntimeError(f"jobward serve did not start:\n{self.log_path.read_text(errors='replace')}")
        self.api = Client(self.url, OPERATE)
        self.admin = Client(self.url, ADMIN)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return subprocess.run([self.bin, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def make_server(request: pytest.FixtureRequest) -> Callable[[str], Server]:
    started: List[Server] = []

    def make(jobs: str) -> Server:
        s = Server(jobs)
        started.append(s)
        return s

    failed_before = request.session.testsfailed
    yield make  # type: ignore[misc]
    for s in started:
        s.stop()
        if "panicked" in s.log_path.read_text(errors="replace"):
            pytest.fail(f"the server panicked; see {s.log_path}")
        if request.session.testsfailed == failed_before and not os.environ.get("JOBWARD_SDK_KEEP"):
            shutil.rmtree(s.dir, ignore_errors=True)
        else:
            print(f"\nserver files kept in {s.dir}")


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition", interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_status(api: Client, id: int, statuses: object, timeout: float = 10.0) -> Dict:  # type: ignore[type-arg]
    want = {statuses} if isinstance(statuses, str) else set(statuses)  # type: ignore[arg-type]

    def check() -> Optional[Dict]:  # type: ignore[type-arg]
        e = api.get_execution(id)
        return e if e["status"] in want else None

    try:
        return wait_for(check, timeout, f"execution {id} to be {sorted(want)}")  # type: ignore[return-value]
    except AssertionError as err:
        raise AssertionError(f"{err}; now: {api.get_execution(id)}; events: {api.events(id)}") from None


class WorkerProcess:
    """A separate Python process running the SDK worker (tests/worker_main.py)."""

    def __init__(self, server: Server, queues: List[str], marks: Path, *extra: str) -> None:
        self.marks = marks
        self.log_path = marks.with_suffix(f".{time.monotonic_ns()}.log")
        args = [sys.executable, str(HERE / "worker_main.py"), "--server", server.url, "--token", WORKER, "--marks", str(marks)]
        for q in queues:
            args += ["--queue", q]
        self.proc = subprocess.Popen(args + list(extra), stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(10)


def marks(path: Path) -> List[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
