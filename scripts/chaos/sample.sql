-- One sample of the chaos run (scripts/chaos.sh), taken every ~0.5 s on the ledger itself.
-- psql variables: hs = epoch seconds since when at least one node has been continuously able to
-- run its reaper as far as the script knows (0 = no such node now); tol = tolerance in seconds.
-- Output, one line: epoch|overdue|overdue_detail|slots|postmaster_start_epoch|max_lateness
--   overdue: live rows past their effective deadline + tol, counted only from the later of
--            (deadline, hs, PostgreSQL's start); -1 when no node is healthy (not checked).
--   The effective lease deadline is the one the reaper uses (crates/store/src/postgres/mod.rs
--   `reap`): a lease that expired while PostgreSQL was down or no node could write counts from
--   max(lease_expires_at, pg_postmaster_start_time() + heartbeat timeout,
--       ledger_liveness.alive_since + heartbeat timeout).
--   slots:   key=running/limit for every concurrency limit (running rows of that key).
--   max_lateness: the largest lateness (s) of any live row past its deadline (within tol or not).
WITH s AS (
    SELECT clock_timestamp() AS now,
           CASE WHEN :hs > 0 THEN GREATEST(to_timestamp(:hs), pg_postmaster_start_time()) END AS hs,
           (SELECT chaos.ts(alive_since) FROM ledger_liveness) AS alive_since
), live AS (
    SELECT e.id, e.state, e.job,
           CASE WHEN e.state = 'queued' THEN chaos.ts(e.start_deadline)
                ELSE LEAST(chaos.ts(e.run_deadline),
                           COALESCE(chaos.ts(e.cancel_deadline), 'infinity'::timestamptz),
                           GREATEST(chaos.ts(e.lease_expires_at),
                                    pg_postmaster_start_time() + e.heartbeat_timeout_ms * interval '1 millisecond',
                                    s.alive_since + e.heartbeat_timeout_ms * interval '1 millisecond'))
           END AS due
    FROM executions e, s
    WHERE e.state IN ('queued', 'running')
), late AS (
    SELECT l.*, extract(epoch FROM s.now - GREATEST(l.due, s.hs))::numeric(10,1) AS over
    FROM live l, s
    WHERE s.hs IS NOT NULL AND s.now > GREATEST(l.due, s.hs) + :tol * interval '1 second'
)
SELECT extract(epoch FROM s.now)::numeric(16,3)
    || '|' || CASE WHEN s.hs IS NULL THEN -1 ELSE (SELECT count(*) FROM late) END
    || '|' || COALESCE((SELECT string_agg(id || ':' || job || ':' || state || ':+' || over || 's', ',' ORDER BY id)
                        FROM (SELECT * FROM late ORDER BY id LIMIT 8) x), '')
    || '|' || COALESCE((SELECT string_agg(c.key || '=' || (SELECT count(*) FROM executions r
                                                          WHERE r.state = 'running' AND r.concurrency_key = c.key)
                                           || '/' || c.max_running, ',' ORDER BY c.key)
                        FROM concurrency_limits c), '')
    || '|' || extract(epoch FROM pg_postmaster_start_time())::numeric(16,3)
    || '|' || COALESCE((SELECT max(extract(epoch FROM s.now - GREATEST(l.due, s.hs)))::numeric(10,1)
                        FROM live l WHERE s.hs IS NOT NULL AND s.now > GREATEST(l.due, s.hs))::text, '0')
FROM s;
