-- jobward ledger schema (SQLite). Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,          -- incarnation id, fresh at every start
    name             TEXT NOT NULL,             -- stable node name (default: host name)
    hostname         TEXT NOT NULL,
    pid              INTEGER NOT NULL,
    proc_start_ticks INTEGER,                   -- with pid and boot_id: proves the process is gone
    boot_id          TEXT,
    started_at       INTEGER NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    stopped_at       INTEGER,
    stop_reason      TEXT
);
CREATE INDEX nodes_live ON nodes (name) WHERE stopped_at IS NULL;

CREATE TABLE concurrency_limits (
    key         TEXT PRIMARY KEY,
    max_running INTEGER NOT NULL CHECK (max_running >= 1)
);

CREATE TABLE jobs (
    name          TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,                -- the validated definition, JSON
    schedule      TEXT NOT NULL,                -- the schedule part of spec, to notice changes
    defined       INTEGER NOT NULL DEFAULT 1 CHECK (defined IN (0, 1)),  -- 0: gone from config
    paused        INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    next_fire_at  INTEGER,                      -- scheduler cursor: first instant not yet handled
    next_number   INTEGER NOT NULL DEFAULT 1,   -- execution numbers are per job
    updated_at    INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_fire_at) WHERE defined = 1 AND next_fire_at IS NOT NULL;

CREATE TABLE executions (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
    job                 TEXT NOT NULL REFERENCES jobs (name),
    number              INTEGER NOT NULL CHECK (number >= 1),
    attempt             INTEGER NOT NULL CHECK (attempt >= 1),
    max_attempts        INTEGER NOT NULL CHECK (max_attempts >= 1),
    retry_of            INTEGER,                -- previous attempt; no foreign key, pruning may remove it
    trigger             TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'retry')),
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

-- Invariant 9: each instant of a job fires at most once.
CREATE UNIQUE INDEX executions_unique_fire ON executions (job, scheduled_for)
    WHERE scheduled_for IS NOT NULL AND attempt = 1;

CREATE UNIQUE INDEX executions_idempotency ON executions (job, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND attempt = 1;

-- Every reaper and claim query reads one of these partial indexes: only live rows, never
-- the history.
CREATE INDEX executions_queued ON executions (runner, run_after, id) WHERE state = 'queued';
CREATE INDEX executions_queue_deadline ON executions (start_deadline) WHERE state = 'queued';
CREATE INDEX executions_lease_deadline ON executions (lease_expires_at) WHERE state = 'running';
CREATE INDEX executions_run_deadline ON executions (run_deadline) WHERE state = 'running';
CREATE INDEX executions_cancel_deadline ON executions (cancel_deadline)
    WHERE state = 'running' AND cancel_deadline IS NOT NULL;
CREATE INDEX executions_running_key ON executions (concurrency_key) WHERE state = 'running';
CREATE INDEX executions_running_node ON executions (node_id) WHERE state = 'running';
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

-- Invariant 6: every transition is an event, in an append-only log.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id INTEGER NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('transition', 'refused', 'note')),
    from_state   TEXT,
    to_state     TEXT,
    reason       TEXT,
    message      TEXT NOT NULL,
    actor        TEXT NOT NULL
);
CREATE INDEX events_execution ON events (execution_id, id);
CREATE INDEX events_kind_at ON events (kind, at);

CREATE TRIGGER events_append_only
BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
