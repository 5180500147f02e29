-- As on SQLite (see the migration of the same name): the live executions of a job are indexed
-- on `finished_at IS NULL` (the same rows, by invariant 1), and the state index keeps only
-- terminal executions that did not complete (live ones have partial indexes of their own), so
-- a claim adds no entry to it.
DROP INDEX executions_live_job;
CREATE INDEX executions_live_job ON executions (job) WHERE finished_at IS NULL;
DROP INDEX executions_state;
CREATE INDEX executions_state ON executions (state, id)
    WHERE finished_at IS NOT NULL AND state <> 'completed';
