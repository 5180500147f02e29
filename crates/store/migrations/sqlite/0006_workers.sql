-- Workers seen claiming: which queues they poll and what they run (every job, or command jobs
-- and the handler jobs they name), for the job page ("served by") and the workers page. One
-- row per worker id, rewritten at most every few seconds by its claims; rows of workers not
-- seen for a week are removed by the same write.
CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    queues         TEXT NOT NULL,     -- JSON array of queue names
    handlers       TEXT,              -- JSON array of job names; NULL: every job of its queues
    commands       INTEGER NOT NULL CHECK (commands IN (0, 1)),
    first_seen_at  INTEGER NOT NULL,
    last_claim_at  INTEGER NOT NULL
);
