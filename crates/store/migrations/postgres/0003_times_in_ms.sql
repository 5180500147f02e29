-- Times are integer milliseconds since the Unix epoch, as in the SQLite schema: the ledger's
-- statements are then written once for both databases and no row converts a time on its way
-- out. PostgreSQL's clock still decides (jw_now_ms()). To read one by hand:
-- to_timestamp(started_at / 1000.0).
ALTER TABLE nodes
    ALTER COLUMN started_at TYPE BIGINT USING jw_ms(started_at),
    ALTER COLUMN heartbeat_at TYPE BIGINT USING jw_ms(heartbeat_at),
    ALTER COLUMN lease_expires_at TYPE BIGINT USING jw_ms(lease_expires_at),
    ALTER COLUMN stopped_at TYPE BIGINT USING jw_ms(stopped_at);

ALTER TABLE jobs
    ALTER COLUMN next_fire_at TYPE BIGINT USING jw_ms(next_fire_at),
    ALTER COLUMN updated_at TYPE BIGINT USING jw_ms(updated_at);

ALTER TABLE executions
    ALTER COLUMN scheduled_for TYPE BIGINT USING jw_ms(scheduled_for),
    ALTER COLUMN queued_at TYPE BIGINT USING jw_ms(queued_at),
    ALTER COLUMN run_after TYPE BIGINT USING jw_ms(run_after),
    ALTER COLUMN start_deadline TYPE BIGINT USING jw_ms(start_deadline),
    ALTER COLUMN started_at TYPE BIGINT USING jw_ms(started_at),
    ALTER COLUMN heartbeat_at TYPE BIGINT USING jw_ms(heartbeat_at),
    ALTER COLUMN lease_expires_at TYPE BIGINT USING jw_ms(lease_expires_at),
    ALTER COLUMN run_deadline TYPE BIGINT USING jw_ms(run_deadline),
    ALTER COLUMN cancel_requested_at TYPE BIGINT USING jw_ms(cancel_requested_at),
    ALTER COLUMN cancel_deadline TYPE BIGINT USING jw_ms(cancel_deadline),
    ALTER COLUMN finished_at TYPE BIGINT USING jw_ms(finished_at);

ALTER TABLE events
    ALTER COLUMN at TYPE BIGINT USING jw_ms(at);

ALTER TABLE ledger_liveness
    ALTER COLUMN last_beat TYPE BIGINT USING jw_ms(last_beat),
    ALTER COLUMN alive_since TYPE BIGINT USING jw_ms(alive_since);

-- The moment of a change: the clock at the statement (not the start of its transaction),
-- plus the offset tests set on a session to move time forward (0 otherwise).
CREATE FUNCTION jw_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 + COALESCE(NULLIF(current_setting('jobward.clock_offset_ms', true), '')::bigint, 0) $$;
