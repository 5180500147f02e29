-- How long a run is expected to take, copied from its job when the execution is created (as
-- its timeouts are), and when it was found running past the upper bound (once: the alert
-- and the note go with setting it). Neither bound ever stops a run.
ALTER TABLE executions ADD COLUMN expected_min_ms INTEGER CHECK (expected_min_ms IS NULL OR expected_min_ms > 0);
ALTER TABLE executions ADD COLUMN expected_max_ms INTEGER CHECK (expected_max_ms IS NULL OR expected_max_ms > 0);
ALTER TABLE executions ADD COLUMN overdue_at INTEGER;
-- The running executions that can become overdue, for the maintenance tick.
CREATE INDEX executions_overdue ON executions (started_at)
    WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL AND overdue_at IS NULL;
-- The latest end of each job in each terminal state, for the per-job metrics
-- (jobward_job_last_finish_timestamp_seconds): one index lookup per job and state.
CREATE INDEX executions_job_state_finished ON executions (job, state, finished_at)
    WHERE finished_at IS NOT NULL;
