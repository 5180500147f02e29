-- See the SQLite migration of the same name.
ALTER TABLE executions ADD COLUMN ended_by TEXT;

CREATE TABLE ledger_liveness (
    id          INT PRIMARY KEY CHECK (id = 1),
    last_beat   TIMESTAMPTZ NOT NULL,
    alive_since TIMESTAMPTZ NOT NULL
);
INSERT INTO ledger_liveness (id, last_beat, alive_since) VALUES (1, 'epoch', 'epoch');

-- extract() is STABLE, so the wrapper must be too, or the planner never inlines it.
CREATE OR REPLACE FUNCTION jw_ms(t timestamptz) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;
