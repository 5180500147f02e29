-- As on SQLite (see the migration of the same name): workers seen claiming, their queues and
-- what they run, for the job page and the workers page.
CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    queues         TEXT NOT NULL,
    handlers       TEXT,
    commands       BOOLEAN NOT NULL,
    first_seen_at  BIGINT NOT NULL,
    last_claim_at  BIGINT NOT NULL
);
