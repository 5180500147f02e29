//! Decoding ledger rows into the store's types, written once for every backend: times are
//! integer milliseconds since the Unix epoch in both schemas.

use std::time::Duration;

use jobward_core::{Execution, Reason, RetryPolicy, State, Timeouts, Timestamp};

use crate::Result;
use crate::error::corrupt;
use crate::sql::Row;
use crate::types::*;

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> Result<Timestamp> {
    chrono::DateTime::from_timestamp_millis(v)
        .ok_or_else(|| corrupt(format!("timestamp {v} out of range")))
}

fn dur(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

pub(crate) fn dur_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(crate) fn parse<T: std::str::FromStr>(what: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| corrupt(format!("{what}: {e}")))
}

fn opt_parse<T: std::str::FromStr>(what: &str, v: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|v| parse(what, &v)).transpose()
}

fn json(what: &str, v: Option<String>) -> Result<Option<serde_json::Value>> {
    v.map(|p| serde_json::from_str(&p).map_err(|e| corrupt(format!("{what}: {e}"))))
        .transpose()
}

/// The columns of `executions`, in the order `execution` reads them.
pub(crate) const EXEC_COLUMNS: &str = "id, job, number, attempt, max_attempts, retry_of, trigger, \
    scheduled_for, state, reason, message, command, runner, concurrency_key, overlap, \
    heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, \
    queued_at, run_after, start_deadline, started_at, heartbeat_at, lease_owner, lease_token, \
    lease_expires_at, run_deadline, node_id, cancel_requested_at, cancel_reason, cancel_message, \
    cancel_deadline, pid, pgid, proc_start_ticks, boot_id, exit_code, signal, finished_at, payload, \
    idempotency_key, progress, phase, checkpoint, ended_by, priority, expected_min_ms, \
    expected_max_ms, overdue_at";

/// An execution from a row of `EXEC_COLUMNS`.
pub(crate) fn execution(r: &Row) -> Result<ExecutionRow> {
    let process = match (r.opt_i64(35)?, r.opt_i64(36)?, r.opt_i64(37)?) {
        (Some(pid), Some(pgid), Some(ticks)) => Some(ProcessInfo {
            pid: pid as i32,
            pgid: pgid as i32,
            start_ticks: ticks as u64,
            boot_id: r.opt_text(38)?,
        }),
        _ => None,
    };
    Ok(ExecutionRow {
        id: r.i64(0)?,
        job: r.text(1)?,
        number: r.i64(2)?,
        attempt: r.i64(3)? as u32,
        max_attempts: r.i64(4)? as u32,
        retry_of: r.opt_i64(5)?,
        trigger: parse("trigger", &r.text(6)?)?,
        scheduled_for: r.opt_time(7)?,
        state: parse("state", &r.text(8)?)?,
        reason: opt_parse::<Reason>("reason", r.opt_text(9)?)?,
        message: r.opt_text(10)?,
        command: r.text(11)?,
        runner: r.text(12)?,
        concurrency_key: r.opt_text(13)?,
        overlap: parse("overlap", &r.text(14)?)?,
        timeouts: Timeouts {
            heartbeat: dur(r.i64(15)?),
            run: dur(r.i64(16)?),
            queue: dur(r.i64(17)?),
            kill_grace: dur(r.i64(18)?),
        },
        retry: RetryPolicy {
            max_attempts: r.i64(4)? as u32,
            backoff: dur(r.i64(19)?),
            max_backoff: dur(r.i64(20)?),
        },
        queued_at: r.time(21)?,
        run_after: r.time(22)?,
        start_deadline: r.opt_time(23)?,
        started_at: r.opt_time(24)?,
        heartbeat_at: r.opt_time(25)?,
        lease_owner: r.opt_text(26)?,
        lease_token: r.opt_text(27)?,
        lease_expires_at: r.opt_time(28)?,
        run_deadline: r.opt_time(29)?,
        node_id: r.opt_text(30)?,
        cancel_requested_at: r.opt_time(31)?,
        cancel_reason: opt_parse::<Reason>("cancel_reason", r.opt_text(32)?)?,
        cancel_message: r.opt_text(33)?,
        cancel_deadline: r.opt_time(34)?,
        process,
        exit_code: r.opt_i64(39)?.map(|v| v as i32),
        signal: r.opt_i64(40)?.map(|v| v as i32),
        finished_at: r.opt_time(41)?,
        payload: json("payload", r.opt_text(42)?)?,
        idempotency_key: r.opt_text(43)?,
        progress: r.opt_f64(44)?,
        phase: r.opt_text(45)?,
        checkpoint: json("checkpoint", r.opt_text(46)?)?,
        ended_by: r.opt_text(47)?,
        priority: r.i64(48)? as i32,
        expected_duration: match (r.opt_i64(49)?, r.opt_i64(50)?) {
            (None, None) => None,
            (min, max) => Some(jobward_core::DurationBounds {
                min: min.map(dur),
                max: max.map(dur),
            }),
        },
        overdue_at: r.opt_time(51)?,
    })
}

pub(crate) fn executions(rows: Vec<Row>) -> Result<Vec<ExecutionRow>> {
    rows.iter().map(execution).collect()
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

/// The columns of `events`, in the order `event` reads them.
pub(crate) const EVENT_COLUMNS: &str =
    "id, execution_id, at, kind, from_state, to_state, reason, message, actor";

pub(crate) fn event(r: &Row) -> Result<EventRow> {
    Ok(EventRow {
        id: r.i64(0)?,
        execution_id: r.i64(1)?,
        at: r.time(2)?,
        kind: parse("event kind", &r.text(3)?)?,
        from: opt_parse("from_state", r.opt_text(4)?)?,
        to: opt_parse("to_state", r.opt_text(5)?)?,
        reason: r.opt_text(6)?,
        message: r.text(7)?,
        actor: r.text(8)?,
    })
}

/// The columns of `nodes`, in the order `node` reads them.
pub(crate) const NODE_COLUMNS: &str = "id, name, hostname, pid, proc_start_ticks, boot_id, started_at, heartbeat_at, \
    lease_expires_at, stopped_at, stop_reason";

pub(crate) fn node(r: &Row) -> Result<NodeRow> {
    Ok(NodeRow {
        id: r.text(0)?,
        name: r.text(1)?,
        hostname: r.text(2)?,
        pid: r.i64(3)? as i32,
        start_ticks: r.opt_i64(4)?.map(|v| v as u64),
        boot_id: r.opt_text(5)?,
        started_at: r.time(6)?,
        heartbeat_at: r.time(7)?,
        lease_expires_at: r.time(8)?,
        stopped_at: r.opt_time(9)?,
        stop_reason: r.opt_text(10)?,
    })
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
        run_after: row.run_after,
    }
}
