//! Decoding ledger rows into the store's types, for every backend: times arrive as integer
//! milliseconds since the Unix epoch (PostgreSQL converts its timestamptz columns in the query).

use std::time::Duration;

use jobward_core::{Execution, Reason, RetryPolicy, State, Timeouts, Timestamp};
use sqlx::FromRow;

use crate::Result;
use crate::error::corrupt;
use crate::types::*;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> Result<Timestamp> {
    chrono::DateTime::from_timestamp_millis(v)
        .ok_or_else(|| corrupt(format!("timestamp {v} out of range")))
}

fn opt_ts(v: Option<i64>) -> Result<Option<Timestamp>> {
    v.map(from_ms).transpose()
}

fn dur(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

pub(crate) fn dur_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn parse<T: std::str::FromStr>(what: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| corrupt(format!("{what}: {e}")))
}

fn opt_parse<T: std::str::FromStr>(what: &str, v: Option<&str>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|v| parse(what, v)).transpose()
}

/// The columns of `executions`, in the order `ExecRecord` reads them.
pub(crate) const EXEC_COLUMNS: &str = "id, job, number, attempt, max_attempts, retry_of, trigger, \
    scheduled_for, state, reason, message, command, runner, concurrency_key, overlap, \
    heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, \
    queued_at, run_after, start_deadline, started_at, heartbeat_at, lease_owner, lease_token, \
    lease_expires_at, run_deadline, node_id, cancel_requested_at, cancel_reason, cancel_message, \
    cancel_deadline, pid, pgid, proc_start_ticks, boot_id, exit_code, signal, finished_at, payload, \
    idempotency_key, progress, phase, checkpoint, ended_by";

#[derive(FromRow)]
pub(crate) struct ExecRecord {
    id: i64,
    job: String,
    number: i64,
    attempt: i64,
    max_attempts: i64,
    retry_of: Option<i64>,
    trigger: String,
    scheduled_for: Option<i64>,
    state: String,
    reason: Option<String>,
    message: Option<String>,
    command: String,
    runner: String,
    concurrency_key: Option<String>,
    overlap: String,
    heartbeat_timeout_ms: i64,
    run_timeout_ms: i64,
    queue_timeout_ms: i64,
    kill_grace_ms: i64,
    backoff_ms: i64,
    max_backoff_ms: i64,
    queued_at: i64,
    run_after: i64,
    start_deadline: Option<i64>,
    started_at: Option<i64>,
    heartbeat_at: Option<i64>,
    lease_owner: Option<String>,
    lease_token: Option<String>,
    lease_expires_at: Option<i64>,
    run_deadline: Option<i64>,
    node_id: Option<String>,
    cancel_requested_at: Option<i64>,
    cancel_reason: Option<String>,
    cancel_message: Option<String>,
    cancel_deadline: Option<i64>,
    pid: Option<i64>,
    pgid: Option<i64>,
    proc_start_ticks: Option<i64>,
    boot_id: Option<String>,
    exit_code: Option<i64>,
    signal: Option<i64>,
    finished_at: Option<i64>,
    payload: Option<String>,
    idempotency_key: Option<String>,
    progress: Option<f64>,
    phase: Option<String>,
    checkpoint: Option<String>,
    ended_by: Option<String>,
}

impl ExecRecord {
    pub(crate) fn into_row(self) -> Result<ExecutionRow> {
        let process = match (self.pid, self.pgid, self.proc_start_ticks) {
            (Some(pid), Some(pgid), Some(ticks)) => Some(ProcessInfo {
                pid: pid as i32,
                pgid: pgid as i32,
                start_ticks: ticks as u64,
                boot_id: self.boot_id,
            }),
            _ => None,
        };
        Ok(ExecutionRow {
            id: self.id,
            job: self.job,
            number: self.number,
            attempt: self.attempt as u32,
            max_attempts: self.max_attempts as u32,
            retry_of: self.retry_of,
            trigger: parse("trigger", &self.trigger)?,
            scheduled_for: opt_ts(self.scheduled_for)?,
            state: parse("state", &self.state)?,
            reason: opt_parse::<Reason>("reason", self.reason.as_deref())?,
            message: self.message,
            command: self.command,
            runner: self.runner,
            concurrency_key: self.concurrency_key,
            overlap: parse("overlap", &self.overlap)?,
            timeouts: Timeouts {
                heartbeat: dur(self.heartbeat_timeout_ms),
                run: dur(self.run_timeout_ms),
                queue: dur(self.queue_timeout_ms),
                kill_grace: dur(self.kill_grace_ms),
            },
            retry: RetryPolicy {
                max_attempts: self.max_attempts as u32,
                backoff: dur(self.backoff_ms),
                max_backoff: dur(self.max_backoff_ms),
            },
            queued_at: from_ms(self.queued_at)?,
            run_after: from_ms(self.run_after)?,
            start_deadline: opt_ts(self.start_deadline)?,
            started_at: opt_ts(self.started_at)?,
            heartbeat_at: opt_ts(self.heartbeat_at)?,
            lease_owner: self.lease_owner,
            lease_token: self.lease_token,
            lease_expires_at: opt_ts(self.lease_expires_at)?,
            run_deadline: opt_ts(self.run_deadline)?,
            node_id: self.node_id,
            cancel_requested_at: opt_ts(self.cancel_requested_at)?,
            cancel_reason: opt_parse::<Reason>("cancel_reason", self.cancel_reason.as_deref())?,
            cancel_message: self.cancel_message,
            cancel_deadline: opt_ts(self.cancel_deadline)?,
            process,
            exit_code: self.exit_code.map(|v| v as i32),
            signal: self.signal.map(|v| v as i32),
            finished_at: opt_ts(self.finished_at)?,
            payload: self
                .payload
                .map(|p| serde_json::from_str(&p).map_err(|e| corrupt(format!("payload: {e}"))))
                .transpose()?,
            idempotency_key: self.idempotency_key,
            progress: self.progress,
            phase: self.phase,
            checkpoint: self
                .checkpoint
                .map(|p| serde_json::from_str(&p).map_err(|e| corrupt(format!("checkpoint: {e}"))))
                .transpose()?,
            ended_by: self.ended_by,
        })
    }
}

/// The core model of a row, for `due()` and `transition`.
pub(crate) fn to_core(row: &ExecutionRow) -> Execution {
    Execution {
        attempt: row.attempt,
        state: row.state,
        reason: row.reason,
        message: row.message.clone(),
        timeouts: row.timeouts,
        queued_at: row.queued_at,
        run_after: row.run_after,
        start_deadline: row.start_deadline,
        started_at: row.started_at,
        heartbeat_at: row.heartbeat_at,
        lease_owner: row.lease_owner.clone(),
        lease_token: row.lease_token.clone(),
        lease_expires_at: row.lease_expires_at,
        run_deadline: row.run_deadline,
        pending_cancel: row.cancel_reason.filter(|_| row.state == State::Running),
        cancel_deadline: row.cancel_deadline.filter(|_| row.state == State::Running),
        finished_at: row.finished_at,
    }
}

#[derive(FromRow)]
pub(crate) struct EventRecord {
    id: i64,
    execution_id: i64,
    at: i64,
    kind: String,
    from_state: Option<String>,
    to_state: Option<String>,
    reason: Option<String>,
    message: String,
    actor: String,
}

impl EventRecord {
    pub(crate) fn into_row(self) -> Result<EventRow> {
        Ok(EventRow {
            id: self.id,
            execution_id: self.execution_id,
            at: from_ms(self.at)?,
            kind: parse("event kind", &self.kind)?,
            from: opt_parse("from_state", self.from_state.as_deref())?,
            to: opt_parse("to_state", self.to_state.as_deref())?,
            reason: self.reason,
            message: self.message,
            actor: self.actor,
        })
    }
}

/// The columns of `nodes`, in the order `NodeRecord` reads them.
pub(crate) const NODE_COLUMNS: &str = "id, name, hostname, pid, proc_start_ticks, boot_id, started_at, heartbeat_at, \
    lease_expires_at, stopped_at, stop_reason";

#[derive(FromRow)]
pub(crate) struct NodeRecord {
    id: String,
    name: String,
    hostname: String,
    pid: i64,
    proc_start_ticks: Option<i64>,
    boot_id: Option<String>,
    started_at: i64,
    heartbeat_at: i64,
    lease_expires_at: i64,
    stopped_at: Option<i64>,
    stop_reason: Option<String>,
}

impl NodeRecord {
    pub(crate) fn into_row(self) -> Result<NodeRow> {
        Ok(NodeRow {
            id: self.id,
            name: self.name,
            hostname: self.hostname,
            pid: self.pid as i32,
            start_ticks: self.proc_start_ticks.map(|v| v as u64),
            boot_id: self.boot_id,
            started_at: from_ms(self.started_at)?,
            heartbeat_at: from_ms(self.heartbeat_at)?,
            lease_expires_at: from_ms(self.lease_expires_at)?,
            stopped_at: opt_ts(self.stopped_at)?,
            stop_reason: self.stop_reason,
        })
    }
}

pub(crate) fn summary(row: &ExecutionRow) -> ExecutionSummary {
    ExecutionSummary {
        id: row.id,
        number: row.number,
        attempt: row.attempt,
        state: row.state,
        reason: row.reason,
        queued_at: row.queued_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        heartbeat_at: row.heartbeat_at,
        lease_expires_at: row.lease_expires_at,
    }
}

pub(crate) fn decode_all(records: Vec<ExecRecord>) -> Result<Vec<ExecutionRow>> {
    records.into_iter().map(ExecRecord::into_row).collect()
}
