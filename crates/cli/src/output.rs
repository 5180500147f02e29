//! Tables and JSON for the CLI.

use std::time::Duration;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, ContentArrangement, Table};
use jobward_core::duration::format_duration;
use jobward_core::{Timestamp, deadline};
use jobward_store::ExecutionRow;
use serde::Serialize;

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| Cell::new(*h)));
    t
}

/// `2026-11-22 21:03:04Z`.
pub fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `4.1s ago`, `in 3m`.
pub fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t <= now => format!("{} ago", format_duration(deadline::between(t, now))),
        Some(t) => format!("in {}", format_duration(deadline::between(now, t))),
    }
}

pub fn dur(d: Option<Duration>) -> String {
    d.map(format_duration).unwrap_or_else(|| "-".into())
}

pub fn status(e: &ExecutionRow) -> String {
    match (e.state, e.cancel_reason, e.finished_at) {
        (jobward_core::State::Running, Some(r), None) => format!("running (cancelling: {r})"),
        _ => e.state.to_string(),
    }
}

/// The `runs list` table.
pub fn runs_table(rows: &[ExecutionRow], now: Timestamp) -> String {
    let mut t = table(&[
        "ID",
        "JOB",
        "RUN",
        "ATTEMPT",
        "STATUS",
        "STARTED",
        "FINISHED",
        "RUNTIME",
        "LAST HEARTBEAT",
        "REASON",
    ]);
    for e in rows {
        t.add_row(vec![
            e.id.to_string(),
            e.job.clone(),
            format!("#{}", e.number),
            format!("{}/{}", e.attempt, e.max_attempts),
            status(e),
            time(e.started_at),
            time(e.finished_at),
            dur(e.runtime(now)),
            if e.state == jobward_core::State::Running {
                ago(now, e.heartbeat_at)
            } else {
                "-".into()
            },
            e.reason
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.to_string()
}

/// One execution in `--json` output.
#[derive(Debug, Serialize)]
pub struct RunJson<'a> {
    pub id: i64,
    pub job: &'a str,
    pub number: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub status: &'a str,
    pub trigger: &'a str,
    pub scheduled_for: Option<Timestamp>,
    pub queued_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
    pub run_deadline: Option<Timestamp>,
    pub runtime_ms: Option<u128>,
    pub reason: Option<String>,
    pub message: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub retry_of: Option<i64>,
    pub node_id: Option<&'a str>,
    pub lease_owner: Option<&'a str>,
    pub pid: Option<i32>,
    pub cancel_requested: Option<String>,
}

pub fn run_json(e: &ExecutionRow, now: Timestamp) -> RunJson<'_> {
    RunJson {
        id: e.id,
        job: &e.job,
        number: e.number,
        attempt: e.attempt,
        max_attempts: e.max_attempts,
        status: e.state.as_str(),
        trigger: e.trigger.as_str(),
        scheduled_for: e.scheduled_for,
        queued_at: e.queued_at,
        started_at: e.started_at,
        finished_at: e.finished_at,
        heartbeat_at: e.heartbeat_at,
        lease_expires_at: e.lease_expires_at,
        run_deadline: e.run_deadline,
        runtime_ms: e.runtime(now).map(|d| d.as_millis()),
        reason: e.reason.map(|r| r.to_string()),
        message: e.message.as_deref(),
        exit_code: e.exit_code,
        signal: e.signal,
        retry_of: e.retry_of,
        node_id: e.node_id.as_deref(),
        lease_owner: e.lease_owner.as_deref(),
        pid: e.process.as_ref().map(|p| p.pid),
        cancel_requested: e
            .cancel_reason
            .filter(|_| e.finished_at.is_none())
            .map(|r| r.to_string()),
    }
}

pub fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}
