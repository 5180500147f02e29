-- How long a run is expected to take, copied from its job when the execution is created (as
-- its timeouts are), and when it was found running past the upper bound (once: the alert
-- and the note go with setting it). Neither bound ever stops a run.
ALTER TABLE executions ADD COLUMN expected_min_ms INTEGER CHECK (expected_min_ms IS NULL OR expected_min_ms > 0);
ALTER TABLE executions ADD COLUMN expected_max_ms INTEGER CHECK (expected_max_ms IS NULL OR expected_max_ms > 0);
ALTER TABLE executions ADD COLUMN overdue_at INTEGER;
-- The running executions that can become overdue, for the maintenance tick.
CREATE INDEX executions_overdue ON executions (started_at)
    WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL AND overdue_at IS NULL;
-- One job's finished executions of one state, newest first: the executions page filtered by
-- job and state, its counts per state, and each job's latest end per state for the metrics.
CREATE INDEX executions_job_state ON executions (job, state, id)
    WHERE finished_at IS NOT NULL;
