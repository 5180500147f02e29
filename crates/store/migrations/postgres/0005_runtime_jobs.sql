-- Jobs managed at runtime, priorities, and the triggers of backfills and of runs jobward only
-- records (`jobward exec`). See the SQLite migration of the same name.
ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'file' CHECK (source IN ('file', 'api'));
ALTER TABLE jobs ADD COLUMN created_by TEXT;

CREATE TABLE job_changes (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job     TEXT NOT NULL,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('created', 'replaced', 'changed', 'deleted', 'paused', 'resumed')),
    before  TEXT,
    after   TEXT
);
CREATE INDEX job_changes_job ON job_changes (job, id);

ALTER TABLE executions ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE executions DROP CONSTRAINT executions_trigger_check;
ALTER TABLE executions ADD CONSTRAINT executions_trigger_check
    CHECK (trigger IN ('schedule', 'catch_up', 'manual', 'retry', 'backfill', 'external'));
DROP INDEX executions_queued;
CREATE INDEX executions_queued ON executions (runner, priority DESC, run_after, id) WHERE state = 'queued';
