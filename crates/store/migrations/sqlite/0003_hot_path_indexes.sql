-- As on PostgreSQL: rows without a concurrency key or a node are left out of the indexes that
-- find slots and a node's runs, and nothing reads events by kind and time. (The state index
-- stays whole here: SQLite's planner cannot tell that `state = 'failed'` implies
-- `state <> 'completed'`, and an index entry costs little in an embedded B-tree.)
DROP INDEX events_kind_at;
DROP INDEX executions_running_key;
CREATE INDEX executions_running_key ON executions (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
DROP INDEX executions_running_node;
CREATE INDEX executions_running_node ON executions (node_id)
    WHERE state = 'running' AND node_id IS NOT NULL;
