-- As on SQLite (see the migration of the same name): expected run durations per execution and
-- when a run was found overdue.
ALTER TABLE executions ADD COLUMN expected_min_ms BIGINT CHECK (expected_min_ms IS NULL OR expected_min_ms > 0);
ALTER TABLE executions ADD COLUMN expected_max_ms BIGINT CHECK (expected_max_ms IS NULL OR expected_max_ms > 0);
ALTER TABLE executions ADD COLUMN overdue_at BIGINT;
CREATE INDEX executions_overdue ON executions (started_at)
    WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL AND overdue_at IS NULL;
CREATE INDEX executions_job_state_finished ON executions (job, state, finished_at)
    WHERE finished_at IS NOT NULL;
