#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/) from realistic inputs: the
examples, the README and the tests. Run from anywhere; it replaces the seed files it owns
(named seed-*) and leaves everything else alone."""
import hashlib, json, os, re, struct, sys

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(FUZZ)

def write(target, items):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for data in items:
        if isinstance(data, str):
            data = data.encode()
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
    print(f"{target}: {len(items)} seeds")

# ---- cron: PATTERN [0xFF TIMEZONE] ----
def cron(p, tz=None):
    return p.encode() + (b"\xff" + tz.encode() if tz is not None else b"")

write("cron", [
    cron("0 0 2 * * *", "Europe/Berlin"),
    cron("0 30 2 * * *", "Europe/Berlin"),
    cron("*/15 * * * *"),
    cron("0 */5 * * * *", "UTC"),
    cron("0 0 * * * *"),
    cron("* * * * * *"),
    cron("0 0 3 * * *", "America/New_York"),
    cron("0 0 25 * * *"),
    cron("61 * * * * *"),
    cron("not cron"),
    cron("0 0 0 30 2 *"),
    cron("* * * * *", "Mars/Olympus"),
    cron("0 0 12 L * *", "Australia/Lord_Howe"),
    cron("0 0 9 * * MON-FRI", "Asia/Kolkata"),
    cron("0 15 10 ? * 6#3"),
    cron("0 0 0 29 2 *", "Pacific/Chatham"),
    cron("@daily"),
    cron("@hourly", "Europe/London"),
    cron("0 0/30 8-18 * * 1-5"),
    cron("30 2 * * SUN", "Europe/Berlin"),
    cron("0 0 0 1 JAN,JUL *", "America/Sao_Paulo"),
    cron(" 5 4 * * * ", "Etc/GMT+12"),
])

# ---- duration: text (its first 12 bytes also make a Duration to format) ----
write("duration", [
    "90s", "10m", "24h", "30d", "1h 30m", "500ms", "0s", "2s", "3s", "5s", "10s", "1s",
    "2h", "5m", "1h", "-5m", "10x", "10", "", "  ", "s", "200y", "1000000000000000000000d",
    "2m 5s", "3.2s", "2d 3h", "1y", "36500d", "1w 2d", "10 min",
    struct.pack("<QI", 3_250, 500_000) + b"dur",
    struct.pack("<QI", 86_400_000 * 2 + 5_000, 0),
])

# ---- config: whole TOML files ----
configs = [open(os.path.join(ROOT, "examples", "demo.toml")).read()]
configs.append('''
[server]
db = "sqlite://jobward.db"
[defaults]
heartbeat_timeout = "30s"
run_timeout = "24h"
queue_timeout = "1h"
[concurrency]
reports = 1
[[job]]
name = "nightly-report"
command = "python report.py"
schedule = "0 0 2 * * *"
timezone = "Europe/Berlin"
run_timeout = "2h"
overlap = "skip"
misfire = "run_once"
concurrency_key = "reports"
history = { keep_last = 100, max_age = "30d" }
retry = { max_attempts = 3, backoff = "10s", max_backoff = "10m" }
''')
configs.append('''
[server]
db = "postgres://jobward:secret@db.internal/jobward"
bind = "0.0.0.0:8080"
public_url = "https://jobs.example.com"
node_name = "host-a"
log_max_bytes = 1048576
max_running = 8
reaper_interval = "1s"
poll_interval = "500ms"
retention_interval = "1m"
pg_idle_in_transaction_timeout = "30s"
pg_lock_timeout = "5s"
[health]
long_running_after = "2h"
warn_long_running = 3
[[token]]
name = "ops"
role = "operate"
secret = "0123456789abcdef-ops"
[[token]]
role = "worker"
secret_env = "JOBWARD_WORKER_SECRET"
[[alert]]
url = "https://hooks.example.com/jobward"
on = ["failed"]
[[job]]
name = "remote-hello"
command = "echo hi"
every = "20s"
queue = "demo"
''')
job = lambda extra: f'[[job]]\nname = "j"\ncommand = "true"\n{extra}\n'
for extra in ['schedule = "61 * * * * *"', 'every = "10x"', 'run_timeout = "0s"',
              'schedule = "* * * * *"\ntimezone = "Mars/Base"', 'schedulee = "* * * * *"',
              'concurrency_key = "k"', 'overlap = "sometimes"', 'retry = { max_attempts = 0 }',
              'history = { keep_last = 0 }', 'schedule = "* * * * *"\nevery = "1m"',
              'queue = "a b"', 'every = "1s"\ntimezone = "UTC"', 'misfire = "skip"\nmisfire_grace = "5m"\nkill_grace = "0s"']:
    configs.append(job(extra))
configs += [
    "[[job]]\nname = \"alpha\"\ncommand = \"true\"\n[[job]]\nname = \"beta\"\ncommand = \"true\"\nrun_timout = \"1h\"\n",
    "[concurrency]\nreports = -2\n",
    "[server]\nbogus = 1\n",
    "[server\n",
    "[defaults]\nheartbeat_timeout = \"500ms\"\noverlap = \"queue\"\nretry = { max_attempts = 2, backoff = \"3s\" }\nhistory = { max_age = \"7d\" }\n",
    "[server]\nbind = \"localhost\"\n",
    "[[token]]\nrole = \"read\"\nsecret = \"short\"\n",
    "[[alert]]\nurl = \"http://x\"\non = [\"sometimes\"]\n",
    "",
]
write("config", configs)

# ---- api_bodies: [endpoint, flags, (len, param)?, body] ----
EP = {name: i for i, name in enumerate([
    "trigger", "cleanup", "claim", "heartbeat", "complete", "release", "progress", "cancel",
    "pause", "resume", "reload", "list", "get", "events", "log", "job", "jobs", "health",
    "running", "nowhere"])}
NAMES = ["local", "remote", "replace", "skip", "queue", "nope"]

def api(ep, body=b"", method=0, ctype=0, param=0, raw_param=None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if raw_param is not None:
        param = 7
    flags = (method & 3) | ((ctype & 7) << 2) | ((param & 7) << 5)
    head = bytes([EP[ep], flags])
    if raw_param is not None:
        head += bytes([len(raw_param)]) + raw_param
    return head + body

lease = {"id": "EXEC_ID", "attempt": "ATTEMPT_NO", "lease_token": "LEASE_TOKEN"}
def leasejson(extra=""):
    return '{"id": EXEC_ID, "attempt": ATTEMPT_NO, "lease_token": "LEASE_TOKEN"%s}' % extra
write("api_bodies", [
    api("trigger", "", param=0),
    api("trigger", {"payload": {"report": "q3"}, "idempotency_key": "order-17"}, param=1),
    api("trigger", {"payload": 1, "extra": True}, param=2),
    api("trigger", "[null, null]", param=3),
    api("trigger", "null", param=4),
    api("trigger", "", raw_param=b"..%2Fetc"),
    api("cleanup", {}),
    api("cleanup", {"stale_after": "1s", "dry_run": False}),
    api("cleanup", {"stale_after": "10x"}),
    api("claim", {"worker_id": "w", "queues": ["q1"], "batch": 1}, param=1),
    api("claim", {"worker_id": "w", "queues": ["q2", "q1"], "batch": 5, "wait_ms": 0}, param=3),
    api("claim", {"worker_id": "w", "queues": ["local"], "batch": 1}),
    api("claim", {"worker_id": "w", "queues": ["q1"], "batch": 1}, ctype=4),
    api("claim", "{not json"),
    api("claim", '["w", ["q1"], 1, 0]'),
    api("heartbeat", '{"worker_id": "w", "leases": [%s]}' % leasejson(', "progress": 0.5, "phase": "copying", "checkpoint": {"offset": 10}')),
    api("heartbeat", {"worker_id": "w", "leases": []}),
    api("heartbeat", {"worker_id": "w", "leases": [{"id": 1, "attempt": 1, "lease_token": "x", "progress": 7}]}),
    api("complete", '{"worker_id": "w", "id": EXEC_ID, "attempt": ATTEMPT_NO, "lease_token": "LEASE_TOKEN", "outcome": "completed", "exit_code": 0, "log_tail": "done\\n"}'),
    api("complete", '{"worker_id": "w", "id": EXEC_ID, "attempt": ATTEMPT_NO, "lease_token": "LEASE_TOKEN", "outcome": "failed", "exit_code": 3, "error": "database unreachable"}'),
    api("complete", {"worker_id": "w", "id": 1, "attempt": 1, "lease_token": "x", "outcome": "maybe"}),
    api("release", '{"worker_id": "w", "leases": [%s], "reason": "shutdown"}' % leasejson()),
    api("release", {"worker_id": "w", "leases": [{"id": 1, "attempt": 2147483648, "lease_token": "x"}]}),
    api("progress", '{"attempt": ATTEMPT_NO, "lease_token": "LEASE_TOKEN", "progress": 0.25, "phase": "step 1"}', param=0),
    api("progress", {"attempt": 1, "lease_token": "forged", "progress": 0.5}, param=3),
    api("cancel", "", param=0),
    api("pause", "", param=1),
    api("resume", "", param=1),
    api("reload", ""),
    api("list", "job=local&limit=1"),
    api("list", "status=running,queued&since=2026-01-01T00:00:00Z&before=10"),
    api("list", "since=yesterday&limit=-1"),
    api("get", "", param=0),
    api("get", "", raw_param=b"abc"),
    api("events", "", param=0),
    api("log", "tail_bytes=100", param=0),
    api("job", "", param=4),
    api("jobs", "", method=3),
    api("health", ""),
    api("running", ""),
])
