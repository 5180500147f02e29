-- jobward ledger schema (PostgreSQL). The same tables, constraints and indexes as SQLite's,
-- with timestamptz times; every deadline is compared with PostgreSQL's own clock.

-- Times leave the database as integer milliseconds, so both backends decode rows alike.
CREATE FUNCTION jw_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;

CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,          -- incarnation id, fresh at every start
    name             TEXT NOT NULL,             -- stable node name (default: host name)
    hostname         TEXT NOT NULL,
    pid              BIGINT NOT NULL,
    proc_start_ticks BIGINT,
    boot_id          TEXT,
    started_at       TIMESTAMPTZ NOT NULL,
    heartbeat_at     TIMESTAMPTZ NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL,
    stopped_at       TIMESTAMPTZ,
    stop_reason      TEXT
);
CREATE INDEX nodes_live ON nodes (name) WHERE stopped_at IS NULL;
CREATE INDEX nodes_lease ON nodes (lease_expires_at) WHERE stopped_at IS NULL;

CREATE TABLE concurrency_limits (
    key         TEXT PRIMARY KEY,
    max_running BIGINT NOT NULL CHECK (max_running >= 1)
);

CREATE TABLE jobs (
    name          TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,
    schedule      TEXT NOT NULL,
    defined       BOOLEAN NOT NULL DEFAULT true,
    paused        BOOLEAN NOT NULL DEFAULT false,
    next_fire_at  TIMESTAMPTZ,
    next_number   BIGINT NOT NULL DEFAULT 1,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_fire_at) WHERE defined AND next_fire_at IS NOT NULL;

CREATE TABLE executions (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
    job                 TEXT NOT NULL REFERENCES jobs (name),
    number              BIGINT NOT NULL CHECK (number >= 1),
    attempt             BIGINT NOT NULL CHECK (attempt >= 1),
    max_attempts        BIGINT NOT NULL CHECK (max_attempts >= 1),
    retry_of            BIGINT,
    trigger             TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'retry')),
    scheduled_for       TIMESTAMPTZ,
    state               TEXT NOT NULL CHECK (state IN
                            ('queued', 'running', 'completed', 'failed', 'timed_out', 'cancelled', 'skipped')),
    command             TEXT NOT NULL,
    runner              TEXT NOT NULL DEFAULT 'local',
    concurrency_key     TEXT,
    overlap             TEXT NOT NULL,
    heartbeat_timeout_ms BIGINT NOT NULL CHECK (heartbeat_timeout_ms > 0),
    run_timeout_ms      BIGINT NOT NULL CHECK (run_timeout_ms > 0),
    queue_timeout_ms    BIGINT NOT NULL CHECK (queue_timeout_ms > 0),
    kill_grace_ms       BIGINT NOT NULL CHECK (kill_grace_ms >= 0),
    backoff_ms          BIGINT NOT NULL CHECK (backoff_ms >= 0),
    max_backoff_ms      BIGINT NOT NULL CHECK (max_backoff_ms >= 0),
    queued_at           TIMESTAMPTZ NOT NULL,
    run_after           TIMESTAMPTZ NOT NULL,
    start_deadline      TIMESTAMPTZ,
    started_at          TIMESTAMPTZ,
    heartbeat_at        TIMESTAMPTZ,
    lease_owner         TEXT,
    lease_token         TEXT,
    lease_expires_at    TIMESTAMPTZ,
    run_deadline        TIMESTAMPTZ,
    node_id             TEXT,
    cancel_requested_at TIMESTAMPTZ,
    cancel_reason       TEXT,
    cancel_message      TEXT,
    cancel_deadline     TIMESTAMPTZ,
    pid                 BIGINT,
    pgid                BIGINT,
    proc_start_ticks    BIGINT,
    boot_id             TEXT,
    exit_code           BIGINT,
    signal              BIGINT,
    finished_at         TIMESTAMPTZ,
    reason              TEXT,
    message             TEXT,
    payload             TEXT,
    idempotency_key     TEXT,
    progress            DOUBLE PRECISION,
    phase               TEXT,
    checkpoint          TEXT,

    -- Invariant 1 (see the SQLite schema): terminal <=> finished_at; reasons of their own state.
    CHECK ((state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped')) = (finished_at IS NOT NULL)),
    CHECK (CASE state
        WHEN 'failed'    THEN COALESCE(reason IN ('exit_code', 'signal', 'spawn_error', 'worker_error', 'node_restarted', 'node_lost'), false)
        WHEN 'timed_out' THEN COALESCE(reason IN ('heartbeat_timeout', 'run_timeout', 'queue_timeout', 'manual_cleanup'), false)
        WHEN 'cancelled' THEN COALESCE(reason IN ('cancel_requested', 'replaced', 'shutdown', 'handed_back'), false)
        WHEN 'skipped'   THEN COALESCE(reason IN ('overlap', 'missed_schedule', 'paused'), false)
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

-- Invariant 9: each instant of a job fires at most once, across every node.
CREATE UNIQUE INDEX executions_unique_fire ON executions (job, scheduled_for)
    WHERE scheduled_for IS NOT NULL AND attempt = 1;
CREATE UNIQUE INDEX executions_idempotency ON executions (job, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND attempt = 1;

CREATE INDEX executions_queued ON executions (runner, run_after, id) WHERE state = 'queued';
CREATE INDEX executions_queue_deadline ON executions (start_deadline) WHERE state = 'queued';
CREATE INDEX executions_lease_deadline ON executions (lease_expires_at) WHERE state = 'running';
CREATE INDEX executions_run_deadline ON executions (run_deadline) WHERE state = 'running';
CREATE INDEX executions_cancel_deadline ON executions (cancel_deadline)
    WHERE state = 'running' AND cancel_deadline IS NOT NULL;
CREATE INDEX executions_running_key ON executions (concurrency_key) WHERE state = 'running';
CREATE INDEX executions_running_node ON executions (node_id) WHERE state = 'running';
CREATE INDEX executions_live_job ON executions (job) WHERE state IN ('queued', 'running');
CREATE INDEX executions_job ON executions (job, id);
CREATE INDEX executions_retry_of ON executions (retry_of) WHERE retry_of IS NOT NULL;
CREATE INDEX executions_state ON executions (state, id);
CREATE INDEX executions_queued_at ON executions (queued_at);
CREATE INDEX executions_finished ON executions (job, finished_at) WHERE finished_at IS NOT NULL;

CREATE FUNCTION jw_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'terminal execution is immutable';
END $$;

CREATE TRIGGER executions_terminal_is_final
BEFORE UPDATE ON executions
FOR EACH ROW WHEN (OLD.state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped'))
EXECUTE FUNCTION jw_terminal_is_final();

CREATE TABLE events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id BIGINT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    at           TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('transition', 'refused', 'note')),
    from_state   TEXT,
    to_state     TEXT,
    reason       TEXT,
    message      TEXT NOT NULL,
    actor        TEXT NOT NULL
);
CREATE INDEX events_execution ON events (execution_id, id);
CREATE INDEX events_kind_at ON events (kind, at);

CREATE FUNCTION jw_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE ON events
FOR EACH ROW EXECUTE FUNCTION jw_append_only();
