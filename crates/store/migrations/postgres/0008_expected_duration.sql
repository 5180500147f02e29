-- As on SQLite (see the migration of the same name): expected run durations per execution and
-- when a run was found overdue.
ALTER TABLE executions ADD COLUMN expected_min_ms BIGINT CHECK (expected_min_ms IS NULL OR expected_min_ms > 0);
ALTER TABLE executions ADD COLUMN expected_max_ms BIGINT CHECK (expected_max_ms IS NULL OR expected_max_ms > 0);
ALTER TABLE executions ADD COLUMN overdue_at BIGINT;
CREATE INDEX executions_overdue ON executions (started_at)
    WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL AND overdue_at IS NULL;
-- One job's finished executions of one state, newest first: the executions page filtered by
-- job and state, its counts per state, and each job's latest end per state for the metrics.
CREATE INDEX executions_job_state ON executions (job, state, id)
    WHERE finished_at IS NOT NULL;
