-- Jobs managed at runtime, priorities, and the triggers of backfills and of runs jobward only
-- records (`jobward exec`). SQLite cannot change a CHECK constraint in place, so `executions`
-- is rebuilt (the documented twelve-step way; the migration runs with foreign keys off, and
-- the AUTOINCREMENT counter is carried over so no id is ever reused).

ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'file' CHECK (source IN ('file', 'api'));
ALTER TABLE jobs ADD COLUMN created_by TEXT;

-- Every change of a job made through the API: who, when, and the definition before and after.
CREATE TABLE job_changes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job     TEXT NOT NULL,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('created', 'replaced', 'changed', 'deleted', 'paused', 'resumed')),
    before  TEXT,
    after   TEXT
);
CREATE INDEX job_changes_job ON job_changes (job, id);

CREATE TEMP TABLE jw_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'executions';

CREATE TABLE executions_new (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
    job                 TEXT NOT NULL REFERENCES jobs (name),
    number              INTEGER NOT NULL CHECK (number >= 1),
    attempt             INTEGER NOT NULL CHECK (attempt >= 1),
    max_attempts        INTEGER NOT NULL CHECK (max_attempts >= 1),
    retry_of            INTEGER,                -- previous attempt; no foreign key, pruning may remove it
    trigger             TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'retry', 'backfill', 'external')),
    scheduled_for       INTEGER,
    state               TEXT NOT NULL CHECK (state IN
                            ('queued', 'running', 'completed', 'failed', 'timed_out', 'cancelled', 'skipped')),
    command             TEXT NOT NULL,
    runner              TEXT NOT NULL DEFAULT 'local',
    concurrency_key     TEXT,
    overlap             TEXT NOT NULL,
    heartbeat_timeout_ms INTEGER NOT NULL CHECK (heartbeat_timeout_ms > 0),
    run_timeout_ms      INTEGER NOT NULL CHECK (run_timeout_ms > 0),
    queue_timeout_ms    INTEGER NOT NULL CHECK (queue_timeout_ms > 0),
    kill_grace_ms       INTEGER NOT NULL CHECK (kill_grace_ms >= 0),
    backoff_ms          INTEGER NOT NULL CHECK (backoff_ms >= 0),
    max_backoff_ms      INTEGER NOT NULL CHECK (max_backoff_ms >= 0),
    queued_at           INTEGER NOT NULL,
    run_after           INTEGER NOT NULL,
    start_deadline      INTEGER,
    started_at          INTEGER,
    heartbeat_at        INTEGER,
    lease_owner         TEXT,
    lease_token         TEXT,
    lease_expires_at    INTEGER,
    run_deadline        INTEGER,
    node_id             TEXT,                   -- the node whose local executor runs it
    cancel_requested_at INTEGER,
    cancel_reason       TEXT,
    cancel_message      TEXT,
    cancel_deadline     INTEGER,
    pid                 INTEGER,
    pgid                INTEGER,
    proc_start_ticks    INTEGER,                -- with pid: proves a process is ours, not a reused pid
    boot_id             TEXT,
    exit_code           INTEGER,
    signal              INTEGER,
    finished_at         INTEGER,
    reason              TEXT,
    message             TEXT,
    payload             TEXT,
    idempotency_key     TEXT,                   -- a trigger's key: the same key, the same execution
    progress            REAL,
    phase               TEXT,
    checkpoint          TEXT,
    ended_by            TEXT,
    priority            INTEGER NOT NULL DEFAULT 0,

    -- Invariant 1: terminal <=> finished_at; every terminal state but completed has a reason
    -- of its own state and a human message; live and completed executions have no reason.
    CHECK ((state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped')) = (finished_at IS NOT NULL)),
    -- (COALESCE because a NULL reason makes `reason IN (...)` NULL, which a CHECK accepts.)
    CHECK (CASE state
        WHEN 'failed'    THEN COALESCE(reason IN ('exit_code', 'signal', 'spawn_error', 'worker_error', 'node_restarted', 'node_lost'), 0)
        WHEN 'timed_out' THEN COALESCE(reason IN ('heartbeat_timeout', 'run_timeout', 'queue_timeout', 'manual_cleanup'), 0)
        WHEN 'cancelled' THEN COALESCE(reason IN ('cancel_requested', 'replaced', 'shutdown', 'handed_back'), 0)
        WHEN 'skipped'   THEN COALESCE(reason IN ('overlap', 'missed_schedule', 'paused'), 0)
        ELSE reason IS NULL END),
    CHECK (state IN ('queued', 'running', 'completed') OR COALESCE(length(message), 0) > 0),
    -- Invariant 2: every live state has its deadlines.
    CHECK (state <> 'queued' OR start_deadline IS NOT NULL),
    CHECK (state <> 'running' OR (started_at IS NOT NULL AND heartbeat_at IS NOT NULL
        AND lease_owner IS NOT NULL AND lease_token IS NOT NULL
        AND lease_expires_at IS NOT NULL AND run_deadline IS NOT NULL)),
    CHECK (cancel_requested_at IS NULL OR (cancel_deadline IS NOT NULL AND cancel_reason IS NOT NULL)),
    CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1)),
    UNIQUE (job, number, attempt)
);

INSERT INTO executions_new (id, job, number, attempt, max_attempts, retry_of, trigger, scheduled_for, state, command, runner, concurrency_key, overlap, heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after, start_deadline, started_at, heartbeat_at, lease_owner, lease_token, lease_expires_at, run_deadline, node_id, cancel_requested_at, cancel_reason, cancel_message, cancel_deadline, pid, pgid, proc_start_ticks, boot_id, exit_code, signal, finished_at, reason, message, payload, idempotency_key, progress, phase, checkpoint, ended_by)
SELECT id, job, number, attempt, max_attempts, retry_of, trigger, scheduled_for, state, command, runner, concurrency_key, overlap, heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after, start_deadline, started_at, heartbeat_at, lease_owner, lease_token, lease_expires_at, run_deadline, node_id, cancel_requested_at, cancel_reason, cancel_message, cancel_deadline, pid, pgid, proc_start_ticks, boot_id, exit_code, signal, finished_at, reason, message, payload, idempotency_key, progress, phase, checkpoint, ended_by FROM executions;
DROP TABLE executions;
ALTER TABLE executions_new RENAME TO executions;
DELETE FROM sqlite_sequence WHERE name IN ('executions', 'executions_new');
INSERT INTO sqlite_sequence (name, seq) VALUES ('executions', max(
    COALESCE((SELECT max(id) FROM executions), 0),
    COALESCE((SELECT seq FROM jw_sequence), 0)));
DROP TABLE jw_sequence;

-- Invariant 9: each instant of a job fires at most once.
CREATE UNIQUE INDEX executions_unique_fire ON executions (job, scheduled_for)
    WHERE scheduled_for IS NOT NULL AND attempt = 1;

CREATE UNIQUE INDEX executions_idempotency ON executions (job, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND attempt = 1;

-- Every reaper and claim query reads one of these partial indexes: only live rows, never
-- the history.
CREATE INDEX executions_queued ON executions (runner, priority DESC, run_after, id) WHERE state = 'queued';
CREATE INDEX executions_queue_deadline ON executions (start_deadline) WHERE state = 'queued';
CREATE INDEX executions_lease_deadline ON executions (lease_expires_at) WHERE state = 'running';
CREATE INDEX executions_run_deadline ON executions (run_deadline) WHERE state = 'running';
CREATE INDEX executions_cancel_deadline ON executions (cancel_deadline)
    WHERE state = 'running' AND cancel_deadline IS NOT NULL;
CREATE INDEX executions_running_key ON executions (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX executions_running_node ON executions (node_id)
    WHERE state = 'running' AND node_id IS NOT NULL;
CREATE INDEX executions_live_job ON executions (job) WHERE state IN ('queued', 'running');
-- History reads: a job's executions, newest first; recent activity; retention by age.
CREATE INDEX executions_job ON executions (job, id);
CREATE INDEX executions_retry_of ON executions (retry_of) WHERE retry_of IS NOT NULL;
CREATE INDEX executions_state ON executions (state, id);
CREATE INDEX executions_queued_at ON executions (queued_at);
CREATE INDEX executions_finished ON executions (job, finished_at) WHERE finished_at IS NOT NULL;

-- Invariant 1, second half: a terminal execution never changes again.
CREATE TRIGGER executions_terminal_is_final
BEFORE UPDATE ON executions
WHEN OLD.state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped')
BEGIN
    SELECT RAISE(ABORT, 'terminal execution is immutable');
END;
