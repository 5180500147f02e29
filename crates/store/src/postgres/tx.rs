//! The ledger's row-level primitives on PostgreSQL. Writers run concurrently here, so the
//! primitives that the shared logic relies on being serialised take row locks: a job row is
//! locked before its executions are created, due jobs and due nodes are taken with
//! `FOR UPDATE SKIP LOCKED` so that each is handled by one node.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jobward_core::{Reason, Timestamp};
use sqlx::PgConnection;

use super::{EXEC, NODE, pg_err};
use crate::error::corrupt;
use crate::ledger::{End, JobState, NewEvent, RowValues, StopNodes, StoredJob, Tx};
use crate::rows::{ExecRecord, NodeRecord, decode_all, dur_ms};
use crate::sql;
use crate::types::*;
use crate::{Result, StoreError};

pub(crate) struct PgTx<'c> {
    pub conn: &'c mut PgConnection,
    /// PostgreSQL's clock when the transaction began (plus the test offset).
    pub now: Timestamp,
    /// The store clock's offset (tests only), added to `clock_timestamp()`.
    pub offset_ms: i64,
}

/// The compare-and-set guard of invariant 4, from parameter `$first` on.
fn cas(first: usize) -> String {
    format!(
        "id = ${} AND state = ${} AND attempt = ${} AND lease_token IS NOT DISTINCT FROM ${}",
        first,
        first + 1,
        first + 2,
        first + 3
    )
}

impl PgTx<'_> {
    async fn rows(&mut self, condition: &str, binds: &[Bind<'_>]) -> Result<Vec<ExecutionRow>> {
        let mut q = sqlx::query_as::<_, ExecRecord>(sql(format!(
            "SELECT {} FROM executions WHERE {condition}",
            *EXEC
        )));
        for b in binds {
            q = match b {
                Bind::I(v) => q.bind(*v),
                Bind::S(v) => q.bind(v.to_string()),
                Bind::T(v) => q.bind(*v),
            };
        }
        decode_all(q.fetch_all(&mut *self.conn).await.map_err(pg_err)?)
    }

    async fn one(&mut self, condition: &str, binds: &[Bind<'_>]) -> Result<Option<ExecutionRow>> {
        Ok(self.rows(condition, binds).await?.into_iter().next())
    }
}

pub(crate) enum Bind<'a> {
    I(i64),
    S(&'a str),
    T(Timestamp),
}

#[async_trait]
impl Tx for PgTx<'_> {
    fn now(&self) -> Timestamp {
        self.now
    }

    async fn load(&mut self, id: ExecutionId) -> Result<Option<ExecutionRow>> {
        self.one("id = $1", &[Bind::I(id)]).await
    }

    async fn load_job(&mut self, name: &str) -> Result<Option<JobState>> {
        let row: Option<(String, bool, bool)> =
            sqlx::query_as("SELECT spec, defined, paused FROM jobs WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        row.map(|(spec, defined, paused)| {
            let spec = serde_json::from_str(&spec)
                .map_err(|e| corrupt(format!("job '{name}' definition: {e}")))?;
            Ok(JobState {
                spec,
                defined,
                paused,
            })
        })
        .transpose()
    }

    async fn next_number(&mut self, job: &str) -> Result<i64> {
        let n: Option<i64> = sqlx::query_scalar("UPDATE jobs SET next_number = next_number + 1 WHERE name = $1 RETURNING next_number - 1")
            .bind(job)
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        n.ok_or_else(|| StoreError::JobNotFound(job.to_string()))
    }

    async fn insert_execution(&mut self, v: &RowValues) -> Result<ExecutionRow> {
        let rec: ExecRecord = sqlx::query_as(sql(format!(
            "INSERT INTO executions (job, number, attempt, max_attempts, retry_of, trigger, scheduled_for, state, \
             command, runner, concurrency_key, overlap, heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, \
             kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after, start_deadline, finished_at, reason, \
             message, payload, idempotency_key, checkpoint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, \
             $24, $25, $26, $27) RETURNING {}",
            *EXEC
        )))
        .bind(&v.job)
        .bind(v.number)
        .bind(v.attempt as i64)
        .bind(v.max_attempts as i64)
        .bind(v.retry_of)
        .bind(v.trigger.as_str())
        .bind(v.scheduled_for)
        .bind(v.state.as_str())
        .bind(&v.command)
        .bind(&v.runner)
        .bind(v.concurrency_key.as_deref())
        .bind(v.overlap.as_str())
        .bind(dur_ms(v.timeouts.heartbeat))
        .bind(dur_ms(v.timeouts.run))
        .bind(dur_ms(v.timeouts.queue))
        .bind(dur_ms(v.timeouts.kill_grace))
        .bind(dur_ms(v.retry.backoff))
        .bind(dur_ms(v.retry.max_backoff))
        .bind(v.queued_at)
        .bind(v.run_after)
        .bind(v.start_deadline)
        .bind(v.finished_at)
        .bind(v.reason.map(Reason::as_str))
        .bind(v.message.as_deref())
        .bind(v.payload.as_ref().map(|p| p.to_string()))
        .bind(v.idempotency_key.as_deref())
        .bind(v.checkpoint.as_ref().map(|c| c.to_string()))
        .fetch_one(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        if v.state == jobward_core::State::Queued {
            // Wakes claimers on every node when this transaction commits.
            sqlx::query("SELECT pg_notify('jobward_work', $1)")
                .bind(&v.runner)
                .execute(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        }
        rec.into_row()
    }

    async fn event(&mut self, e: &NewEvent<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (execution_id, at, kind, from_state, to_state, reason, message, actor) \
             VALUES ($1, clock_timestamp() + $8 * interval '1 millisecond', $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.id)
        .bind(e.kind.as_str())
        .bind(e.from.map(|s| s.as_str()))
        .bind(e.to.map(|s| s.as_str()))
        .bind(e.reason)
        .bind(e.message)
        .bind(e.actor)
        .bind(self.offset_ms as f64)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn cas_end(&mut self, row: &ExecutionRow, end: &End<'_>) -> Result<bool> {
        let res = sqlx::query(sql(format!(
            "UPDATE executions SET state = $1, reason = $2, message = $3, finished_at = clock_timestamp() + $11 * interval '1 millisecond', \
             exit_code = COALESCE($5, exit_code), signal = COALESCE($6, signal), ended_by = $4, \
             progress = CASE WHEN $1 = 'completed' AND progress IS NOT NULL THEN 1.0 ELSE progress END WHERE {}",
            cas(7)
        )))
        .bind(end.state.as_str())
        .bind(end.reason.map(Reason::as_str))
        .bind(end.message.as_deref())
        .bind(end.actor)
        .bind(end.exit_code.map(i64::from))
        .bind(end.signal.map(i64::from))
        .bind(row.id)
        .bind(row.state.as_str())
        .bind(row.attempt as i64)
        .bind(row.lease_token.as_deref())
        .bind(self.offset_ms as f64)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        let done = res.rows_affected() == 1;
        // A run that held a concurrency slot (or blocked a queued overlap) frees it: every
        // node's claimers hear of it, not only the owner's own, so the next run goes to
        // whichever node is free rather than always to the one that finished.
        if done
            && row.state == jobward_core::State::Running
            && (row.concurrency_key.is_some() || row.overlap == jobward_core::Overlap::Queue)
        {
            sqlx::query("SELECT pg_notify('jobward_work', $1)")
                .bind(&row.runner)
                .execute(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        }
        Ok(done)
    }

    async fn cas_cancel_request(
        &mut self,
        row: &ExecutionRow,
        reason: Reason,
        message: &str,
        deadline: Timestamp,
    ) -> Result<bool> {
        let res = sqlx::query(sql(format!(
            "UPDATE executions SET cancel_requested_at = $1, cancel_reason = $2, cancel_message = $3, cancel_deadline = $4 WHERE {}",
            cas(5)
        )))
        .bind(self.now)
        .bind(reason.as_str())
        .bind(message)
        .bind(deadline)
        .bind(row.id)
        .bind(row.state.as_str())
        .bind(row.attempt as i64)
        .bind(row.lease_token.as_deref())
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn cas_progress(
        &mut self,
        lease: &LeaseRef,
        progress: Option<f64>,
        phase: Option<&str>,
        checkpoint: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE executions SET progress = COALESCE($1, progress), phase = COALESCE($2, phase), \
             checkpoint = COALESCE($3, checkpoint) WHERE id = $4 AND state = 'running' AND attempt = $5 AND lease_token = $6",
        )
        .bind(progress)
        .bind(phase)
        .bind(checkpoint.map(|c| c.to_string()))
        .bind(lease.id)
        .bind(lease.attempt as i64)
        .bind(&lease.token)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn live_of_job(&mut self, job: &str) -> Result<Vec<ExecutionRow>> {
        self.rows(
            "job = $1 AND state IN ('queued', 'running') ORDER BY id",
            &[Bind::S(job)],
        )
        .await
    }

    async fn by_idempotency_key(&mut self, job: &str, key: &str) -> Result<Option<ExecutionRow>> {
        self.one(
            "job = $1 AND idempotency_key = $2 AND attempt = 1",
            &[Bind::S(job), Bind::S(key)],
        )
        .await
    }

    async fn next_attempt_of(
        &mut self,
        id: ExecutionId,
        attempt: u32,
    ) -> Result<Option<ExecutionRow>> {
        self.one(
            "retry_of = $1 AND attempt = $2",
            &[Bind::I(id), Bind::I(attempt as i64 + 1)],
        )
        .await
    }

    async fn fired_already(&mut self, job: &str, at: Timestamp) -> Result<bool> {
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM executions WHERE job = $1 AND scheduled_for = $2 AND attempt = 1)",
        )
        .bind(job)
        .bind(at)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(found)
    }

    async fn key_full(&mut self, key: &str) -> Result<bool> {
        let full: Option<bool> = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM executions WHERE state = 'running' AND concurrency_key = $1) >= max_running \
             FROM concurrency_limits WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(full == Some(true))
    }

    async fn stored_jobs(&mut self) -> Result<Vec<StoredJob>> {
        let rows: Vec<(String, String, String, bool)> =
            sqlx::query_as("SELECT name, spec, schedule, defined FROM jobs FOR UPDATE")
                .fetch_all(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        Ok(rows
            .into_iter()
            .map(|(name, spec_json, schedule_json, defined)| StoredJob {
                name,
                spec_json,
                schedule_json,
                defined,
            })
            .collect())
    }

    async fn insert_job(
        &mut self,
        name: &str,
        spec: &str,
        schedule: &str,
        first: Option<Timestamp>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (name, spec, schedule, defined, next_fire_at, updated_at) VALUES ($1, $2, $3, true, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, schedule = EXCLUDED.schedule, defined = true, \
             next_fire_at = EXCLUDED.next_fire_at, updated_at = EXCLUDED.updated_at",
        )
        .bind(name)
        .bind(spec)
        .bind(schedule)
        .bind(first)
        .bind(self.now)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn update_job(
        &mut self,
        name: &str,
        spec: &str,
        schedule: &str,
        reset_cursor: bool,
        first: Option<Timestamp>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET spec = $1, schedule = $2, defined = true, updated_at = $3, \
             next_fire_at = CASE WHEN $4 THEN $5 ELSE next_fire_at END WHERE name = $6",
        )
        .bind(spec)
        .bind(schedule)
        .bind(self.now)
        .bind(reset_cursor)
        .bind(first)
        .bind(name)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn undefine_job(&mut self, name: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET defined = false, next_fire_at = NULL, updated_at = $1 WHERE name = $2",
        )
        .bind(self.now)
        .bind(name)
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn replace_limits(&mut self, limits: &BTreeMap<String, u32>) -> Result<()> {
        let keys: Vec<String> = limits.keys().cloned().collect();
        sqlx::query("DELETE FROM concurrency_limits WHERE NOT (key = ANY($1))")
            .bind(&keys)
            .execute(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        for (key, limit) in limits {
            sqlx::query("INSERT INTO concurrency_limits (key, max_running) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET max_running = $2")
                .bind(key)
                .bind(*limit as i64)
                .execute(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        }
        Ok(())
    }

    async fn due_jobs(&mut self) -> Result<Vec<(String, Timestamp)>> {
        let due: Vec<(String, Timestamp)> = sqlx::query_as(
            "SELECT name, next_fire_at FROM jobs WHERE defined AND next_fire_at IS NOT NULL AND next_fire_at <= $1 \
             ORDER BY next_fire_at FOR UPDATE SKIP LOCKED",
        )
        .bind(self.now)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(due)
    }

    async fn move_cursor(
        &mut self,
        name: &str,
        old: Timestamp,
        new: Option<Timestamp>,
    ) -> Result<bool> {
        let res =
            sqlx::query("UPDATE jobs SET next_fire_at = $1 WHERE name = $2 AND next_fire_at = $3")
                .bind(new)
                .bind(name)
                .bind(old)
                .execute(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        Ok(res.rows_affected() == 1)
    }

    async fn earliest_cursor(&mut self) -> Result<Option<Timestamp>> {
        let next: Option<Timestamp> =
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM jobs WHERE defined")
                .fetch_one(&mut *self.conn)
                .await
                .map_err(pg_err)?;
        Ok(next)
    }

    async fn live_node_named(&mut self, name: &str, except: &str) -> Result<Option<NodeRow>> {
        // Two nodes starting under one name at once take their turns.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jobward:node:' || $1))")
            .bind(name)
            .execute(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        let rec: Option<NodeRecord> = sqlx::query_as(sql(format!(
            "SELECT {} FROM nodes WHERE name = $1 AND stopped_at IS NULL AND lease_expires_at > $2 AND id <> $3 LIMIT 1",
            *NODE
        )))
        .bind(name)
        .bind(self.now)
        .bind(except)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        rec.map(NodeRecord::into_row).transpose()
    }

    async fn insert_node(&mut self, node: &NewNode) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (id, name, hostname, pid, proc_start_ticks, boot_id, started_at, heartbeat_at, lease_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(&node.hostname)
        .bind(node.pid as i64)
        .bind(node.start_ticks.map(|t| t as i64))
        .bind(node.boot_id.as_deref())
        .bind(self.now)
        .bind(jobward_core::deadline::add(self.now, node.lease))
        .execute(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn stop_nodes(&mut self, which: StopNodes<'_>, reason: &str) -> Result<()> {
        let q = match which {
            StopNodes::One { id, name } => sqlx::query(
                "UPDATE nodes SET stopped_at = $1, stop_reason = $2 WHERE id = $3 AND ($4::text IS NULL OR name = $4) AND stopped_at IS NULL",
            )
            .bind(self.now)
            .bind(reason)
            .bind(id)
            .bind(name),
            StopNodes::AllNamedExcept { name, except } => {
                sqlx::query("UPDATE nodes SET stopped_at = $1, stop_reason = $2 WHERE name = $3 AND id <> $4 AND stopped_at IS NULL")
                    .bind(self.now)
                    .bind(reason)
                    .bind(name)
                    .bind(except)
            }
        };
        q.execute(&mut *self.conn).await.map_err(pg_err)?;
        Ok(())
    }

    async fn expired_nodes(&mut self) -> Result<Vec<NodeRow>> {
        // A node could not renew its lease while PostgreSQL itself was down: it gets one lease
        // length after the database came back before it counts as lost.
        let recs: Vec<NodeRecord> = sqlx::query_as(sql(format!(
            "SELECT {} FROM nodes WHERE stopped_at IS NULL AND lease_expires_at <= $1 \
             AND $1 >= pg_postmaster_start_time() + (lease_expires_at - heartbeat_at) \
             AND $1 >= (SELECT alive_since FROM ledger_liveness) + (lease_expires_at - heartbeat_at) \
             ORDER BY started_at FOR UPDATE SKIP LOCKED",
            *NODE
        )))
        .bind(self.now)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(pg_err)?;
        recs.into_iter().map(NodeRecord::into_row).collect()
    }

    async fn running_on_node(&mut self, node_id: &str) -> Result<Vec<ExecutionRow>> {
        self.rows(
            "state = 'running' AND node_id = $1 ORDER BY id FOR UPDATE",
            &[Bind::S(node_id)],
        )
        .await
    }
}
