-- The hot path writes fewer index entries per execution (every non-HOT update of a row adds
-- an entry to each index whose predicate it matches):
-- - slots and a node's runs are looked up by key or node only: rows without one are left out;
-- - listing by state needs no index over completed rows (most of the history; they are
--   listed newest first from the primary key);
-- - nothing reads events by kind and time.
DROP INDEX events_kind_at;
DROP INDEX executions_running_key;
CREATE INDEX executions_running_key ON executions (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
DROP INDEX executions_running_node;
CREATE INDEX executions_running_node ON executions (node_id)
    WHERE state = 'running' AND node_id IS NOT NULL;
DROP INDEX executions_state;
CREATE INDEX executions_state ON executions (state, id) WHERE state <> 'completed';
