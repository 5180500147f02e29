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

/// The status as every read surface says it (see `views::status_text`).
pub fn status(e: &ExecutionRow, now: Timestamp) -> String {
    jobward_server::http::views::status_text(e, now)
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
            status(e, now),
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

/// One execution in `--json` output: the API's view, so the CLI and the API agree.
pub fn run_json(e: &ExecutionRow, now: Timestamp) -> jobward_protocol::ExecutionView {
    jobward_server::http::views::execution(e, now)
}

pub fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}
