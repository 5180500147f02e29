-- Who moved an execution to its terminal state (an owner, a reaper, an operator): an owner's
-- heartbeat that races its own completion is not a refusal, one that comes after somebody
-- else settled the execution is.
ALTER TABLE executions ADD COLUMN ended_by TEXT;

-- When the ledger was last reachable for its nodes. Every node heartbeat writes `last_beat`;
-- a heartbeat that finds it older than a node lease (nobody could write: the database, or the
-- only node, was paused or cut off) restarts `alive_since`. Leases are judged from
-- `alive_since` on: an outage alone never expires a lease.
CREATE TABLE ledger_liveness (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_beat   INTEGER NOT NULL,
    alive_since INTEGER NOT NULL
);
INSERT INTO ledger_liveness (id, last_beat, alive_since) VALUES (1, 0, 0);
