-- A claim (queued -> running) and a completion rewrite fewer index entries. Invariant 1 makes
-- `finished_at IS NULL` the same as `state IN ('queued', 'running')` (a CHECK enforces it), and
-- an index whose columns and predicate a statement does not change is not touched at all:
-- - the live executions of a job are indexed on `finished_at IS NULL`: a claim leaves the
--   entry alone, a completion removes it;
-- - the state index keeps terminal executions only (the live ones have partial indexes of
--   their own): a claim touches no entry, a completion adds one.
DROP INDEX executions_live_job;
CREATE INDEX executions_live_job ON executions (job) WHERE finished_at IS NULL;
DROP INDEX executions_state;
CREATE INDEX executions_state ON executions (state, id) WHERE finished_at IS NOT NULL;
