//! The dashboard's markup. Every status is shown as colour, symbol and text together; every
//! time as an absolute UTC time with how long ago (or ahead) it is.

use crate::views::NodeNames;
use std::time::Duration;

use axum::http::StatusCode;
use jobward_core::{Schedule, State, Timestamp};
use jobward_protocol::HealthView;
use jobward_store::{EventKind, EventRow, ExecutionRow, JobRow};
use maud::{DOCTYPE, Markup, html};

use super::{POLL_MS, Viewer};

/// Nav entries: (path, label).
const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/executions", "Executions"),
    ("/queues", "Queues"),
    ("/workers", "Workers"),
    ("/nodes", "Nodes"),
    ("/stale", "Stale"),
];

pub(super) fn layout(
    v: Option<&Viewer>,
    title: &str,
    active: &str,
    poll: bool,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jobward" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-poll=[poll.then_some(POLL_MS)] {
                header.top {
                    a.brand href="/" { "jobward" }
                    @if let Some(v) = v {
                        nav.actions {
                            @for (path, label) in NAV {
                                a.active[path == active] href=(path) { (label) }
                            }
                        }
                        div.who {
                            @if poll { span.live #live-stamp { "live" } }
                            span { (v.name) " · " @if v.can_operate { "operate" } @else { "read only" } }
                            @if v.logged_in {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(v.csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Symbol and words of a state, so that it never depends on colour alone.
fn state_words(state: &str) -> (&'static str, String) {
    let sym = match state {
        "completed" | "healthy" => "✓",
        "failed" => "✗",
        "timed_out" => "◔",
        "warning" => "!",
        "running" => "▶",
        "queued" => "…",
        "cancelled" => "⊘",
        "skipped" => "↷",
        "paused" => "‖",
        _ => "○",
    };
    (sym, state.replace('_', " "))
}

pub fn badge(state: &str) -> Markup {
    let (sym, words) = state_words(state);
    let class = if state == "never run" { "never" } else { state };
    html! { span class={ "badge st-" (class) } { span.sym aria-hidden="true" { (sym) } " " (words) } }
}

/// An execution's badge; a running one that nobody heartbeats for says so.
pub(super) fn exec_badge(e: &ExecutionRow, now: Timestamp) -> Markup {
    let later = (e.state == State::Queued && e.run_after > now).then_some(e.run_after);
    let bounds = e
        .expected_duration
        .map(|b| b.to_string())
        .unwrap_or_default();
    html! {
        (silent_badge(&e.state.to_string(), e.silent_for(now))) (scheduled_tag(later, now))
        @if crate::views::overdue(e, now) {
            " " span.tag.overdue title={ "expected " (bounds) "; it is not stopped (its run timeout does that)" } { "overdue" }
        }
        @if e.state == State::Completed && crate::views::too_short(e).is_some() {
            " " span.tag.too-short title={ "expected " (bounds) } { "too short" }
        }
    }
}

/// A job's badge (its status is derived from its executions).
fn job_badge(j: &jobward_store::JobRow, now: Timestamp) -> Markup {
    html! { (silent_badge(&j.status(), j.silent_for(now))) (scheduled_tag(j.scheduled_for(now), now)) }
}

/// A run that is queued but not due yet is scheduled, not waiting.
fn scheduled_tag(at: Option<Timestamp>, now: Timestamp) -> Markup {
    html! {
        @if let Some(at) = at {
            " " span.tag.scheduled title={ "not before " (at.format("%Y-%m-%d %H:%M:%S UTC")) } {
                "scheduled for " (at.format("%Y-%m-%d %H:%M:%S UTC")) " (" (when(Some(at), now)) ")"
            }
        }
    }
}

pub(super) fn silent_badge(state: &str, silence: Option<Duration>) -> Markup {
    html! {
        (badge(state))
        @if let Some(d) = silence {
            " " span.tag.stale title="its lease expired: nobody heartbeats for it; the reaper settles it at its next tick" {
                "no heartbeat for " (dur(d)) " (lease expired)"
            }
        }
    }
}

/// `2h 03m`, `4m 05s`, `12.3s`, `850ms`.
pub fn dur(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else if d.as_millis() >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn between(a: Timestamp, b: Timestamp) -> Duration {
    jobward_core::deadline::between(a, b)
}

/// "3m 04s ago" or "in 12s".
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    if t <= now {
        format!("{} ago", dur(between(t, now)))
    } else {
        format!("in {}", dur(between(now, t)))
    }
}

/// An absolute time with its relative distance from now.
pub(super) fn when(t: Option<Timestamp>, now: Timestamp) -> Markup {
    match t {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let iso = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            html! {
                time datetime=(iso) title=(iso) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
                " " span.rel { "(" (relative(t, now)) ")" }
            }
        }
    }
}

pub(super) fn ago(t: Option<Timestamp>, now: Timestamp) -> Markup {
    match t {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let iso = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            html! { time datetime=(iso) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (relative(t, now)) } }
        }
    }
}

pub(super) fn reason(e: &ExecutionRow) -> Markup {
    html! {
        @if let Some(r) = e.reason {
            code { (r) }
            @if is_recovery(&r.to_string()) { " " span.tag.recovered title="settled by jobward for a runner that could not report" { "recovered" } }
        } @else { span.muted { "—" } }
    }
}

/// Reasons written when jobward settled an execution whose runner could not.
fn is_recovery(reason: &str) -> bool {
    matches!(
        reason,
        "heartbeat_timeout" | "node_restarted" | "node_lost" | "manual_cleanup"
    )
}

pub(super) fn exec_link(e: &ExecutionRow) -> Markup {
    html! { a href={ "/executions/" (e.id) } { "#" (e.number) } }
}

pub(super) fn job_link(name: &str) -> Markup {
    html! { a href={ "/jobs/" (name) } { (name) } }
}

pub(super) fn button(
    v: &Viewer,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(v.csrf);
            button class=(class) type="submit" { (label) }
        }
    }
}

pub fn overview(
    v: &Viewer,
    names: &NodeNames,
    now: Timestamp,
    health: &HealthView,
    running: &[ExecutionRow],
    failures: &[ExecutionRow],
) -> Markup {
    let m = &health.metrics;
    let figures = [
        (m.running_executions, "running"),
        (m.queued_executions, "queued"),
        (m.long_running_executions, "running long"),
        (m.stale_executions, "stale heartbeats"),
        (m.overdue_queued_executions, "queued past deadline"),
        (m.recent_executions_24h, "executions in 24 h"),
        (m.live_nodes, "live nodes"),
    ];
    let body = html! {
        h1 { "Overview" }
        section.card #health data-live {
            h2 { "Health " (badge(health.status.as_str())) }
            div.figures {
                @for (n, label) in figures {
                    div.figure { b { (n) } span { (label) } }
                }
            }
            @if !health.warnings.is_empty() {
                ul.warnings { @for w in &health.warnings { li { (w) } } }
            }
        }
        section.card #running data-live {
            h2 { "Running now (" (running.len()) ")" }
            @if running.is_empty() {
                p.muted { "Nothing is running." }
            } @else {
                div.scroll { table.stack {
                    thead { tr { th { "Job" } th { "Run" } th { "Attempt" } th { "Runtime" } th { "Last heartbeat" } th { "Progress" } th.hide-narrow { "Where" } } }
                    tbody { @for e in running {
                        tr data-execution=(e.id) {
                            td data-label="Job" { (job_link(&e.job)) }
                            td data-label="Run" { (exec_link(e)) " " (exec_badge(e, now)) }
                            td.num data-label="Attempt" { (e.attempt) " of " (e.max_attempts) }
                            td.num data-label="Runtime" { (e.runtime(now).map(dur).unwrap_or_default()) }
                            td.num data-label="Heartbeat" { (ago(e.heartbeat_at, now)) }
                            td data-label="Progress" { (progress(e)) }
                            td.hide-narrow { code { (names.where_of(e)) } }
                        }
                    } }
                } }
            }
        }
        section.card #failures data-live {
            h2 { "Recent failures and recoveries" }
            @if failures.is_empty() {
                p.muted { "No failures." }
            } @else {
                div.scroll { table.stack {
                    thead { tr { th { "Job" } th { "Run" } th { "Status" } th { "Reason" } th { "Finished" } th.hide-narrow { "Message" } } }
                    tbody { @for e in failures {
                        tr data-execution=(e.id) {
                            td data-label="Job" { (job_link(&e.job)) }
                            td data-label="Run" { (exec_link(e)) " · attempt " (e.attempt) }
                            td data-label="Status" { (badge(&e.state.to_string())) }
                            td data-label="Reason" { (reason(e)) }
                            td data-label="Finished" { (when(e.finished_at, now)) }
                            td.hide-narrow { (e.message.as_deref().unwrap_or("")) }
                        }
                    } }
                } }
            }
        }
    };
    layout(Some(v), "Overview", "/", true, body)
}

fn progress(e: &ExecutionRow) -> Markup {
    html! {
        @if let Some(p) = e.progress {
            progress max="1" value=(p) { (format!("{:.0}%", p * 100.0)) }
            " " (format!("{:.0}%", p * 100.0))
        }
        @if let Some(ph) = &e.phase { " " span.tag { (ph) } }
        @if e.progress.is_none() && e.phase.is_none() { span.muted { "—" } }
    }
}

/// Completed share of a job's recent terminal executions (skips and cancels not counted).
pub struct SuccessRate {
    pub completed: usize,
    pub counted: usize,
}

impl SuccessRate {
    pub fn of(recent: &[ExecutionRow]) -> SuccessRate {
        let counted: Vec<_> = recent
            .iter()
            .filter(|e| matches!(e.state, State::Completed | State::Failed | State::TimedOut))
            .collect();
        SuccessRate {
            completed: counted
                .iter()
                .filter(|e| e.state == State::Completed)
                .count(),
            counted: counted.len(),
        }
    }

    fn render(&self) -> Markup {
        html! {
            @if self.counted == 0 { span.muted { "no runs yet" } }
            @else {
                b { (self.completed * 100 / self.counted) "%" }
                " " span.rel { "(" (self.completed) " of " (self.counted) " recent)" }
            }
        }
    }
}

fn is_cron(s: &Schedule) -> bool {
    matches!(s, Schedule::Cron { .. })
}

/// A schedule in words.
pub fn schedule_words(s: &Schedule) -> String {
    match s {
        Schedule::Manual => "only when triggered".into(),
        Schedule::Every(d) => format!("every {}", jobward_core::duration::format_duration(*d)),
        Schedule::Cron { pattern, tz, .. } => match cron_words(pattern) {
            Some(w) => format!("{w} ({tz})"),
            None => format!("cron {pattern} ({tz})"),
        },
    }
}

/// Plain words for a cron pattern, where cronspeak can say it; seconds are said here.
fn cron_words(pattern: &str) -> Option<String> {
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    match fields.as_slice() {
        [sec, rest @ ..] if rest.len() == 5 => {
            let rest = rest.join(" ");
            if rest == "* * * * *" {
                return match *sec {
                    "*" => Some("every second".into()),
                    s => s
                        .strip_prefix("*/")
                        .and_then(|n| n.parse::<u32>().ok())
                        .map(|n| format!("every {n} seconds")),
                };
            }
            let words = cronspeak::describe(&rest).ok()?;
            match *sec {
                "0" => Some(words),
                s if s.parse::<u32>().is_ok() => Some(format!("{words}, at second {s}")),
                _ => None,
            }
        }
        _ => cronspeak::describe(pattern).ok(),
    }
}

pub fn jobs(v: &Viewer, now: Timestamp, jobs: &[(JobRow, SuccessRate)]) -> Markup {
    let body = html! {
        h1 { "Jobs" }
        section.card #jobs data-live {
            @if jobs.is_empty() { p.muted { "No jobs are defined." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Job" } th { "Schedule" } th { "Next fire" } th { "Status" } th { "Success" } @if v.can_operate { th { "Actions" } } } }
                    tbody { @for (j, rate) in jobs {
                        tr data-job=(j.spec.name) {
                            td data-label="Job" {
                                (job_link(&j.spec.name))
                                @if j.source == jobward_store::JobSource::Api { " " span.tag.source title="defined through the API" { "api" } }
                                @if !j.defined { " " span.tag { @if j.source == jobward_store::JobSource::Api { "deleted" } @else { "removed from config" } } }
                            }
                            td data-label="Schedule" { (schedule_words(&j.spec.schedule)) @if is_cron(&j.spec.schedule) { br; code.rel.hide-narrow { (j.spec.schedule.describe()) } } }
                            td data-label="Next fire" { @if j.paused { span.muted { "paused" } } @else { (when(j.next_fire_at, now)) } }
                            td data-label="Status" { (job_badge(j, now)) @if j.paused { " " (badge("paused")) } }
                            td data-label="Success" { (rate.render()) }
                            @if v.can_operate { td data-label="Actions" { (job_buttons(v, j)) } }
                        }
                    } }
                } }
            }
        }
    };
    layout(Some(v), "Jobs", "/jobs", true, body)
}

fn job_buttons(v: &Viewer, j: &JobRow) -> Markup {
    let name = &j.spec.name;
    html! {
        @if j.defined {
            div.actions {
                (button(v, &format!("/jobs/{name}/trigger"), "Trigger", "primary", None))
                @if j.paused { (button(v, &format!("/jobs/{name}/resume"), "Resume", "", None)) }
                @else { (button(v, &format!("/jobs/{name}/pause"), "Pause", "", Some("Pause this job? Its fires will be recorded as skipped."))) }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn job(
    v: &Viewer,
    now: Timestamp,
    j: &JobRow,
    served: Option<&str>,
    changes: &[jobward_store::JobChange],
    rate: &SuccessRate,
    chart_rows: &[ExecutionRow],
    history: &[ExecutionRow],
    paged: bool,
    next_before: Option<i64>,
) -> Markup {
    let s = &j.spec;
    let body = html! {
        h1 #title data-live { (s.name) " " (job_badge(j, now)) @if j.paused { (badge("paused")) } }
        @if v.can_operate { div.actions { (job_buttons(v, j)) } }
        section.card #job-fields data-live {
            dl.fields {
                dt { "Defined" } dd #source { @if j.source == jobward_store::JobSource::File { "in the configuration file" } @else { "through the API" } }
                dt { "Command" } dd { @if s.command.is_empty() { "none: a worker's handler for " code { (s.name) } " runs it" } @else { code { (s.command) } } }
                dt { "Schedule" } dd { (schedule_words(&s.schedule)) @if is_cron(&s.schedule) { " " code.rel { (s.schedule.describe()) } } }
                dt { "Next fire" } dd { @if j.paused { "paused" } @else { (when(j.next_fire_at, now)) } }
                dt { "Runs on" } dd { @if s.external { "outside jobward (" code { "jobward exec" } " or pings); a missed instant is recorded after its grace of " (dur(s.timeouts.queue)) } @else if let Some(q) = &s.queue { "remote workers, queue " code { (q) } } @else { "a node" } }
                @if let Some(w) = served { dt { "Workers" } dd #served { (w) } }
                dt { "Overlap" } dd { (s.overlap) }
                dt { "Timeouts" } dd { "heartbeat " (dur(s.timeouts.heartbeat)) ", run " (dur(s.timeouts.run)) ", queue " (dur(s.timeouts.queue)) }
                @if let Some(b) = s.expected_duration { dt { "Expected duration" } dd { (b.to_string()) } }
                dt { "Retries" } dd { "up to " (s.retry.max_attempts) @if s.retry.max_attempts == 1 { " attempt" } @else { " attempts" } }
                @if let Some(k) = &s.concurrency_key { dt { "Concurrency key" } dd { code { (k) } } }
                dt { "Success" } dd { (rate.render()) }
            }
        }
        section.card #chart data-live {
            h2 { "Recent durations and outcomes" }
            (chart(chart_rows, now, s.expected_duration))
        }
        @if !changes.is_empty() && !paged {
            section.card #changes {
                h2 { "Changes" }
                div.scroll { table.stack {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th { "Fields changed" } } }
                    tbody { @for c in changes.iter().take(20) {
                        tr {
                            td data-label="When" { (when(Some(c.at), now)) }
                            td data-label="Who" { code { (c.actor) } }
                            td data-label="What" { (c.action) }
                            td data-label="Fields changed" { (changed_fields(c)) }
                        }
                    } }
                } }
            }
        }
        section.card #history data-live {
            h2 { "History" @if paged { " (older)" } }
            @if history.is_empty() { p.muted { "No executions." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Run" } th { "Attempt" } th { "Status" } th { "Started" } th { "Finished" } th { "Duration" } th { "Reason" } } }
                    tbody { @for e in history {
                        tr data-execution=(e.id) {
                            td data-label="Run" { (exec_link(e)) }
                            td.num data-label="Attempt" { (e.attempt) }
                            td data-label="Status" { (exec_badge(e, now)) }
                            td data-label="Started" { (when(e.started_at, now)) }
                            td data-label="Finished" { (when(e.finished_at, now)) }
                            td.num data-label="Duration" { (e.runtime(now).map(dur).unwrap_or_default()) }
                            td data-label="Reason" { (reason(e)) }
                        }
                    } }
                } }
            }
            div.pager {
                @if paged { a href={ "/jobs/" (s.name) } { "← Newest" } }
                @if let Some(b) = next_before { a href={ "/jobs/" (s.name) "?before=" (b) } { "Older →" } }
            }
        }
    };
    layout(Some(v), &s.name, "/jobs", !paged, body)
}

/// The fields a recorded change changed, `field: before → after`.
fn changed_fields(c: &jobward_store::JobChange) -> Markup {
    let def = |v: &Option<serde_json::Value>| -> serde_json::Map<String, serde_json::Value> {
        v.as_ref()
            .and_then(|v| serde_json::from_value::<jobward_core::JobSpec>(v.clone()).ok())
            .and_then(|s| serde_json::to_value(crate::jobdef::definition(&s)).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    };
    let (before, after) = (def(&c.before), def(&c.after));
    if c.before.is_none() || c.after.is_none() {
        return html! { "—" };
    }
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| match v {
        None => "(default)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    html! {
        @for k in keys.into_iter().filter(|k| before.get(*k) != after.get(*k)) {
            div { code { (k) } ": " (show(before.get(k))) " → " (show(after.get(k))) }
        }
    }
}

/// Bars of the recent executions' durations, oldest left, on a time axis; failures also carry
/// an ✗ mark; dashed lines at the median and the 95th percentile of the runs that ended, and
/// the bounds of the job's expected duration where it has them.
fn chart(
    rows: &[ExecutionRow],
    now: Timestamp,
    bounds: Option<jobward_core::DurationBounds>,
) -> Markup {
    let rows: Vec<&ExecutionRow> = rows.iter().rev().collect();
    if rows.is_empty() {
        return html! { p.muted { "No executions yet." } };
    }
    let (left, w, h, top) = (52.0_f64, 600.0_f64, 140.0_f64, 14.0_f64);
    let durations: Vec<f64> = rows
        .iter()
        .map(|e| e.runtime(now).map(|d| d.as_secs_f64()).unwrap_or(0.0))
        .collect();
    let mut ended: Vec<f64> = rows
        .iter()
        .zip(&durations)
        .filter(|(e, _)| e.state.is_terminal() && e.started_at.is_some())
        .map(|(_, d)| *d)
        .collect();
    ended.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> Option<f64> {
        (!ended.is_empty()).then(|| ended[((ended.len() as f64 - 1.0) * p).round() as usize])
    };
    let (p50, p95) = (pct(0.5), pct(0.95));
    let lines: Vec<(&str, &str, f64)> = [
        ("p50", "median", p50),
        ("p95", "95th percentile", p95),
        (
            "min",
            "expected at least",
            bounds.and_then(|b| b.min).map(|d| d.as_secs_f64()),
        ),
        (
            "max",
            "expected at most",
            bounds.and_then(|b| b.max).map(|d| d.as_secs_f64()),
        ),
    ]
    .into_iter()
    .filter_map(|(k, words, v)| v.map(|v| (k, words, v)))
    .collect();
    let max = durations
        .iter()
        .chain(lines.iter().map(|(_, _, v)| v))
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let plot = w - left;
    let slot = plot / rows.len().max(20) as f64;
    let y = |v: f64| h - (v / max) * (h - top);
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h + 18.0) } role="img" aria-label="durations of recent executions, oldest first, with their median and 95th percentile" {
            // The time axis: zero, the half and the top, labelled.
            @for frac in [0.0_f64, 0.5, 1.0] {
                @let v = max * frac;
                line x1=(left) y1=(format!("{:.1}", y(v))) x2=(w) y2=(format!("{:.1}", y(v))) stroke="#e5e7eb" {}
                text.axis x="0" y=(format!("{:.1}", y(v) + 4.0)) { (dur(Duration::from_secs_f64(v))) }
            }
            line x1=(left) y1=(h) x2=(w) y2=(h) stroke="#9ca3af" {}
            text.axis x=(left) y=(h + 15.0) { "oldest" }
            text.axis x=(w - 40.0) y=(h + 15.0) { "newest" }
            @for (i, (e, d)) in rows.iter().zip(&durations).enumerate() {
                @let bar = ((d / max) * (h - top)).max(2.0);
                @let x = left + i as f64 * slot + 1.0;
                g {
                    title { "#" (e.number) " attempt " (e.attempt) ": " (e.state) ", " (dur(Duration::from_secs_f64(*d))) }
                    rect class={ "st-" (e.state) } x=(format!("{x:.1}")) y=(format!("{:.1}", h - bar)) width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{bar:.1}")) {}
                    @if matches!(e.state, State::Failed | State::TimedOut) {
                        text.mark x=(format!("{:.1}", x + slot / 2.0 - 4.0)) y=(format!("{:.1}", h - bar - 2.0)) { "✗" }
                    }
                }
            }
            @for (k, words, v) in &lines {
                g class={ "ref ref-" (k) } {
                    title { (words) ": " (dur(Duration::from_secs_f64(*v))) }
                    line x1=(left) y1=(format!("{:.1}", y(*v))) x2=(w) y2=(format!("{:.1}", y(*v))) stroke-dasharray="4 3" {}
                    // Labels alternate sides, so that close lines stay readable.
                    @if matches!(*k, "p50" | "min") {
                        text.axis x=(left + 4.0) y=(format!("{:.1}", y(*v) - 2.0)) { (k) " " (dur(Duration::from_secs_f64(*v))) }
                    } @else {
                        text.axis x=(w - 2.0) y=(format!("{:.1}", y(*v) - 2.0)) text-anchor="end" { (k) " " (dur(Duration::from_secs_f64(*v))) }
                    }
                }
            }
        }
    }
}

pub fn execution(
    v: &Viewer,
    names: &NodeNames,
    now: Timestamp,
    e: &ExecutionRow,
    events: &[EventRow],
    log: Option<&str>,
) -> Markup {
    let live = e.state.is_live();
    let body = html! {
        h1 { (job_link(&e.job)) " #" (e.number) " " span #status data-live { (exec_badge(e, now)) } }
        section.card #fields data-live {
            @if v.can_operate {
                div.actions {
                    @if live { (button(v, &format!("/executions/{}/cancel", e.id), "Cancel", "danger", Some("Cancel this execution? A running process gets SIGTERM, then SIGKILL."))) }
                    (super::fleet::execution_buttons(v, e))
                }
            }
            dl.fields {
                dt { "Execution" } dd { (e.id) " (attempt " (e.attempt) " of " (e.max_attempts) ")" @if let Some(r) = e.retry_of { ", retry of " a href={ "/executions/" (r) } { (r) } } }
                dt { "Status" } dd { (exec_badge(e, now)) @if e.cancel_reason.is_some() && live { " " span.tag { "cancel requested" } } }
                dt { "Reason" } dd { (reason(e)) }
                @if let Some(m) = &e.message { dt { "Message" } dd { (names.human(m)) } }
                dt { "Trigger" } dd { (e.trigger) @if let Some(s) = e.scheduled_for { " for " (when(Some(s), now)) } }
                dt { "Queued" } dd { (when(Some(e.queued_at), now)) }
                dt { "Started" } dd { (when(e.started_at, now)) }
                dt { "Finished" } dd { (when(e.finished_at, now)) }
                dt { "Runtime" } dd { (e.runtime(now).map(dur).unwrap_or_else(|| "—".into())) }
                @if live {
                    dt { "Last heartbeat" } dd { (when(e.heartbeat_at, now)) }
                    dt { "Lease expires" } dd { (when(e.lease_expires_at, now)) }
                    dt { "Run deadline" } dd { (when(e.run_deadline, now)) }
                    dt { "Progress" } dd { (progress(e)) }
                }
                dt { "Runner" } dd { code { (e.runner) } @if e.lease_owner.is_some() || e.node_id.is_some() { " on " code { (names.where_of(e)) } } }
                @if let Some(p) = &e.process { dt { "Process" } dd { "pid " (p.pid) } }
                @if let Some(c) = e.exit_code { dt { "Exit code" } dd { (c) } }
                @if let Some(s) = e.signal { dt { "Signal" } dd { (s) } }
                dt { "Command" } dd { code { (e.command) } }
            }
        }
        section.card #events data-live {
            h2 { "Events" }
            div.scroll { table.stack {
                thead { tr { th { "Time" } th { "Event" } th { "Reason" } th { "Actor" } th { "Message" } } }
                tbody { @for ev in events {
                    tr.refused[ev.kind == EventKind::Refused] {
                        td { (when(Some(ev.at), now)) }
                        td { @match ev.kind {
                            EventKind::Transition => { (ev.from.map(|s| s.to_string()).unwrap_or_else(|| "created".into())) " → " (badge(&ev.to.map(|s| s.to_string()).unwrap_or_default())) }
                            EventKind::Refused => { span.badge.st-failed { span.sym aria-hidden="true" { "✗" } " refused" } }
                            EventKind::Note => { span.tag { "note" } }
                        } }
                        td { (ev.reason.as_deref().unwrap_or("")) }
                        td { code { (names.human(&ev.actor)) } }
                        td { (names.human(&ev.message)) }
                    }
                } }
            } }
        }
        section.card #log data-live {
            h2 { "Log (last " (super::LOG_TAIL / 1024) " KB)" }
            @match log {
                Some(l) if !l.is_empty() => pre.log { (l) },
                _ => p.muted { @if live { "No output yet." } @else { "No output." } },
            }
        }
    };
    layout(Some(v), &format!("{} #{}", e.job, e.number), "", live, body)
}

pub fn stale(
    v: &Viewer,
    names: &NodeNames,
    now: Timestamp,
    stale_after: &str,
    rows: &[ExecutionRow],
    applied: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Stale executions" }
        @if let Some(n) = applied {
            p.flash { "Cleanup applied: " (n) " execution(s) marked " code { "timed_out" } " (" code { "manual_cleanup" } ")." }
        }
        section.card {
            form method="get" action="/stale" {
                label { "Running with no heartbeat for at least "
                    input type="text" name="stale_after" value=(stale_after) size="6" aria-label="stale after";
                }
                " " button type="submit" { "Look again" }
            }
            p.muted { "A dry run: nothing below has been changed." }
        }
        section.card #stale {
            @if rows.is_empty() { p { "No running execution has gone " (stale_after) " without a heartbeat." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Job" } th { "Run" } th { "Started" } th { "Last heartbeat" } th { "Lease expires" } th { "Where" } } }
                    tbody { @for e in rows {
                        tr data-execution=(e.id) {
                            td { (job_link(&e.job)) }
                            td { (exec_link(e)) " · attempt " (e.attempt) }
                            td { (when(e.started_at, now)) }
                            td { (when(e.heartbeat_at, now)) }
                            td { (when(e.lease_expires_at, now)) }
                            td { code { (names.where_of(e)) } }
                        }
                    } }
                } }
                @if v.can_operate {
                    form method="post" action="/stale" {
                        input type="hidden" name="csrf" value=(v.csrf);
                        input type="hidden" name="stale_after" value=(stale_after);
                        label.confirm {
                            input type="checkbox" name="confirm" value="yes" required;
                            span { "Mark these " (rows.len()) " execution(s) " b { "timed_out" } " (manual_cleanup). Their late reports will be refused and their processes killed by their owners." }
                        }
                        button.danger type="submit" { "Apply cleanup" }
                    }
                }
            }
        }
    };
    layout(Some(v), "Stale executions", "/stale", false, body)
}

pub fn login(tokens: bool, next: &str, error: Option<&str>) -> Markup {
    let body = html! {
        section.card.login {
            h1 { "Log in" }
            @if !tokens {
                p { "No tokens are configured: everyone who can reach this loopback address may operate." }
                a href=(next) { "Continue" }
            } @else {
                @if let Some(e) = error { p.flash.error { (e) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "A read or operate token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button.primary type="submit" { "Log in" }
                }
                p.muted { "The token is kept in a secure, HTTP-only cookie for 12 hours." }
            }
        }
    };
    layout(None, "Log in", "", false, body)
}

pub fn error(status: StatusCode, message: &str) -> Markup {
    let body = html! {
        section.card {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.flash.error { (message) }
            p { a href="/" { "Overview" } }
        }
    };
    layout(None, "Error", "", false, body)
}
