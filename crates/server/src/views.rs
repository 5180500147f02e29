//! Store rows as API views. The CLI's `--json` uses the same views, so there is one shape.

use jobward_core::{Schedule, State, Timestamp};
use jobward_protocol::{
    CleanupResponse, EventKind, EventView, ExecutionView, HealthMetricsView, HealthStatus,
    HealthView, JobStatus, JobView, Status, WorkerView,
};
use jobward_store::{
    CleanupReport, EventRow, ExecutionRow, HealthMetrics, JobRow, Serves, WorkerRow,
};

use crate::health::HealthSettings;

/// Node incarnation ids as people read them, `name (short id)`: tables, actors and messages
/// for humans use this; JSON keeps the ids.
#[derive(Debug, Default, Clone)]
pub struct NodeNames(std::collections::HashMap<String, String>);

impl NodeNames {
    pub fn new(nodes: &[jobward_store::NodeRow]) -> NodeNames {
        NodeNames::of(nodes.iter().map(|n| (n.id.as_str(), n.name.as_str())))
    }

    /// From (incarnation id, node name) pairs.
    pub fn of<'a>(nodes: impl Iterator<Item = (&'a str, &'a str)>) -> NodeNames {
        NodeNames(
            nodes
                .map(|(id, name)| {
                    let short: String = id.chars().take(8).collect();
                    (id.to_string(), format!("{name} ({short})"))
                })
                .collect(),
        )
    }

    /// `text` with every known incarnation id in it replaced by its node's name.
    pub fn human(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (id, name) in &self.0 {
            if out.contains(id.as_str()) {
                out = out.replace(id.as_str(), name);
            }
        }
        out
    }

    /// Where an execution runs or ran: its lease owner, else its node.
    pub fn where_of(&self, e: &ExecutionRow) -> String {
        e.lease_owner
            .as_deref()
            .or(e.node_id.as_deref())
            .map(|o| self.human(o))
            .unwrap_or_else(|| "—".into())
    }
}

/// How a running execution that nobody heartbeats for reads, everywhere.
pub fn silent_text(silence: std::time::Duration) -> String {
    format!(
        "running — no heartbeat for {} (lease expired)",
        jobward_core::duration::format_duration(silence)
    )
}

/// How a queued execution that is not due yet reads, everywhere: it is scheduled, not
/// waiting.
pub fn scheduled_text(at: Timestamp, now: Timestamp) -> String {
    format!(
        "scheduled for {} (in {})",
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        jobward_core::duration::format_duration(jobward_core::deadline::between(now, at))
    )
}

/// Why a completed run was too short for its expected duration, if it was.
pub fn too_short(e: &ExecutionRow) -> Option<String> {
    let min = e.expected_duration?.min?;
    let ran = jobward_core::deadline::between(e.started_at?, e.finished_at?);
    (ran < min).then(|| {
        format!(
            "job '{}' run #{} was too short: it completed in {}, expected at least {}",
            e.job,
            e.number,
            jobward_core::duration::format_duration(ran),
            jobward_core::duration::format_duration(min)
        )
    })
}

/// Whether a run ran (or runs) past the upper bound of its expected duration.
pub fn overdue(e: &ExecutionRow, now: Timestamp) -> bool {
    match (e.expected_duration.and_then(|b| b.max), e.runtime(now)) {
        (Some(max), Some(ran)) => e.overdue_at.is_some() || ran > max,
        _ => false,
    }
}

/// An execution's status for humans (CLI tables, API `status_text`, dashboard badges).
pub fn status_text(e: &ExecutionRow, now: Timestamp) -> String {
    let base = match (e.silent_for(now), e.state, e.cancel_reason) {
        (Some(silence), _, _) => silent_text(silence),
        (None, State::Running, Some(r)) => format!("running (cancelling: {r})"),
        (None, State::Queued, _) if e.run_after > now => scheduled_text(e.run_after, now),
        _ => e.state.to_string(),
    };
    let bound = |d: Option<std::time::Duration>| {
        d.map(jobward_core::duration::format_duration)
            .unwrap_or_default()
    };
    if overdue(e, now) {
        format!(
            "{base} — overdue (expected at most {})",
            bound(e.expected_duration.and_then(|b| b.max))
        )
    } else if e.state == State::Completed && too_short(e).is_some() {
        format!(
            "{base} — too short (expected at least {})",
            bound(e.expected_duration.and_then(|b| b.min))
        )
    } else {
        base
    }
}

/// A job's status for humans.
pub fn job_status_text(j: &JobRow, now: Timestamp) -> String {
    match (j.silent_for(now), j.scheduled_for(now)) {
        (Some(silence), _) => silent_text(silence),
        (None, Some(at)) => scheduled_text(at, now),
        (None, None) => j.status(),
    }
}

/// A ledger state as the wire says it.
pub fn status(s: State) -> Status {
    match s {
        State::Queued => Status::Queued,
        State::Running => Status::Running,
        State::Completed => Status::Completed,
        State::Failed => Status::Failed,
        State::TimedOut => Status::TimedOut,
        State::Cancelled => Status::Cancelled,
        State::Skipped => Status::Skipped,
    }
}

/// A job's status, derived from its executions.
pub fn job_status(j: &JobRow) -> JobStatus {
    j.state().map_or(JobStatus::NeverRun, |s| status(s).into())
}

pub fn event_kind(k: jobward_store::EventKind) -> EventKind {
    match k {
        jobward_store::EventKind::Transition => EventKind::Transition,
        jobward_store::EventKind::Refused => EventKind::Refused,
        jobward_store::EventKind::Note => EventKind::Note,
    }
}

pub fn execution(e: &ExecutionRow, now: Timestamp) -> ExecutionView {
    ExecutionView {
        id: e.id,
        job: e.job.clone(),
        number: e.number,
        attempt: e.attempt,
        max_attempts: e.max_attempts,
        status: status(e.state),
        status_text: status_text(e, now),
        lease_expired: e.silent_for(now).is_some(),
        heartbeat_age_ms: e
            .heartbeat_at
            .filter(|_| e.state == State::Running)
            .map(|h| jobward_core::deadline::between(h, now).as_millis() as u64),
        trigger: e.trigger.to_string(),
        scheduled_for: e.scheduled_for,
        queued_at: e.queued_at,
        started_at: e.started_at,
        finished_at: e.finished_at,
        heartbeat_at: e.heartbeat_at,
        lease_expires_at: e.lease_expires_at,
        run_deadline: e.run_deadline,
        runtime_ms: e.runtime(now).map(|d| d.as_millis() as u64),
        reason: e.reason.map(|r| r.to_string()),
        message: e.message.clone(),
        exit_code: e.exit_code,
        signal: e.signal,
        retry_of: e.retry_of,
        runner: e.runner.clone(),
        node_id: e.node_id.clone(),
        lease_owner: e.lease_owner.clone(),
        pid: e.process.as_ref().map(|p| p.pid),
        cancel_requested: e
            .cancel_reason
            .filter(|_| e.state == State::Running)
            .map(|r| r.to_string()),
        run_at: (e.state == State::Queued && e.run_after > e.queued_at).then_some(e.run_after),
        priority: e.priority,
        command: e.command.clone(),
        start_deadline: e.start_deadline.filter(|_| e.state == State::Queued),
        cancel_deadline: e.cancel_deadline.filter(|_| e.state == State::Running),
        pgid: e.process.as_ref().map(|p| p.pgid),
        expected_duration: e.expected_duration.map(|b| b.to_string()),
        overdue: overdue(e, now),
        too_short: too_short(e).is_some(),
        progress: e.progress,
        phase: e.phase.clone(),
        payload: e.payload.clone(),
    }
}

pub fn event(e: &EventRow) -> EventView {
    EventView {
        id: e.id,
        execution_id: e.execution_id,
        at: e.at,
        kind: event_kind(e.kind),
        from: e.from.map(status),
        to: e.to.map(status),
        reason: e.reason.clone(),
        message: e.message.clone(),
        actor: e.actor.clone(),
    }
}

pub fn job(j: &JobRow, now: Timestamp) -> JobView {
    let s = &j.spec;
    JobView {
        name: s.name.clone(),
        command: s.command.clone(),
        schedule_kind: match s.schedule {
            Schedule::Cron { .. } => "cron",
            Schedule::Every(_) => "every",
            Schedule::Manual => "manual",
        }
        .to_string(),
        schedule: s.schedule.describe(),
        next_fire_at: j.next_fire_at,
        status: job_status(j),
        status_text: job_status_text(j, now),
        lease_expired: j.silent_for(now).is_some(),
        paused: j.paused,
        defined: j.defined,
        overlap: s.overlap.to_string(),
        misfire: match s.misfire {
            jobward_core::Misfire::RunOnce => "run_once",
            jobward_core::Misfire::Skip => "skip",
        }
        .to_string(),
        concurrency_key: s.concurrency_key.clone(),
        runner: s.runner().to_string(),
        heartbeat_timeout_ms: s.timeouts.heartbeat.as_millis() as u64,
        run_timeout_ms: s.timeouts.run.as_millis() as u64,
        queue_timeout_ms: s.timeouts.queue.as_millis() as u64,
        max_attempts: s.retry.max_attempts,
        source: j.source.as_str().to_string(),
        priority: s.priority,
        expected_duration: s.expected_duration.map(|b| b.to_string()),
        ping_token_set: s.ping_token_sha256.is_some(),
        live: j.live.iter().map(run_ref).collect(),
        last_finished: j.last_finished.as_ref().map(run_ref),
    }
}

pub fn run_ref(e: &jobward_store::ExecutionSummary) -> jobward_protocol::RunRef {
    jobward_protocol::RunRef {
        id: e.id,
        number: e.number,
        attempt: e.attempt,
        status: status(e.state),
        reason: e.reason.map(|r| r.to_string()),
        queued_at: e.queued_at,
        started_at: e.started_at,
        finished_at: e.finished_at,
        run_at: e.run_after,
    }
}

/// A recorded change, its definitions in the form the API takes.
pub fn job_change(c: &jobward_store::JobChange) -> jobward_protocol::JobChangeView {
    let as_definition = |v: &Option<serde_json::Value>| {
        v.as_ref().map(|v| {
            serde_json::from_value::<jobward_core::JobSpec>(v.clone())
                .ok()
                .and_then(|spec| serde_json::to_value(crate::jobdef::definition(&spec)).ok())
                .unwrap_or_else(|| v.clone())
        })
    };
    jobward_protocol::JobChangeView {
        at: c.at,
        actor: c.actor.clone(),
        action: c.action.clone(),
        before: as_definition(&c.before),
        after: as_definition(&c.after),
    }
}

/// How far back a worker's last claim counts as serving its queues.
pub const WORKERS_RECENT: std::time::Duration = std::time::Duration::from_secs(300);

pub fn worker(w: &WorkerRow) -> WorkerView {
    let (handlers, commands) = match &w.serves {
        Serves::All => (None, true),
        Serves::Only { commands, handlers } => (Some(handlers.clone()), *commands),
    };
    WorkerView {
        id: w.id.clone(),
        queues: w.queues.clone(),
        handlers,
        commands,
        last_claim_at: w.last_claim_at,
    }
}

/// Who runs a job of a queue, among the workers seen recently: the ones that run it, and
/// the words for the job page (or why nobody runs it). `None` for a job a node runs.
pub fn served(
    j: &JobRow,
    recent: &[WorkerRow],
    now: Timestamp,
) -> Option<(String, Vec<WorkerView>)> {
    let s = &j.spec;
    let q = s.queue.as_deref()?;
    let on_queue: Vec<&WorkerRow> = recent
        .iter()
        .filter(|w| w.queues.iter().any(|x| x == q))
        .collect();
    let serving: Vec<WorkerView> = on_queue
        .iter()
        .filter(|w| w.serves.runs(&s.name, &s.command))
        .map(|w| worker(w))
        .collect();
    let what = if s.command.is_empty() {
        format!("a handler for '{}'", s.name)
    } else {
        "its command".to_string()
    };
    let plural = |n: usize| if n == 1 { "worker" } else { "workers" };
    let text = match (on_queue.len(), serving.len()) {
        (0, _) => format!(
            "no worker has claimed from queue '{q}' in the last {}",
            jobward_core::duration::format_duration(WORKERS_RECENT)
        ),
        (1, 0) => format!("1 worker claims from queue '{q}' but does not run {what}"),
        (n, 0) => format!("{n} workers claim from queue '{q}' but none runs {what}"),
        (_, n) => {
            let last = serving.iter().map(|w| w.last_claim_at).max().unwrap_or(now);
            format!(
                "served by {n} {} on queue '{q}' ({}; last claim {} ago)",
                plural(n),
                serving
                    .iter()
                    .map(|w| w.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                jobward_core::duration::format_duration(jobward_core::deadline::between(last, now))
            )
        }
    };
    Some((text, serving))
}

pub fn health(m: HealthMetrics, settings: &HealthSettings) -> HealthView {
    let warnings = crate::health::assess(&m, settings);
    HealthView {
        status: if warnings.is_empty() {
            HealthStatus::Healthy
        } else {
            HealthStatus::Warning
        },
        metrics: HealthMetricsView {
            running_executions: m.running_executions,
            queued_executions: m.queued_executions,
            long_running_executions: m.long_running_executions,
            stale_executions: m.stale_executions,
            overdue_queued_executions: m.overdue_queued_executions,
            recent_executions_24h: m.recent_executions_24h,
            live_nodes: m.live_nodes,
            timestamp: m.timestamp,
        },
        warnings,
    }
}

pub fn cleanup(
    r: &CleanupReport,
    stale_after: std::time::Duration,
    now: Timestamp,
) -> CleanupResponse {
    CleanupResponse {
        dry_run: r.dry_run,
        stale_after: jobward_core::duration::format_duration(stale_after),
        matched: r.candidates.len(),
        changed: r.changed.len(),
        raced: r.raced.len(),
        executions: r.candidates.iter().map(|e| execution(e, now)).collect(),
        changed_ids: r.changed.iter().map(|c| c.id).collect(),
        retries: r.changed.iter().filter_map(|c| c.retry).collect(),
        changed_messages: r.changed.iter().map(|c| c.message.clone()).collect(),
    }
}

pub fn node(n: &jobward_store::NodeRow, now: Timestamp) -> jobward_protocol::NodeView {
    jobward_protocol::NodeView {
        id: n.id.clone(),
        name: n.name.clone(),
        hostname: n.hostname.clone(),
        pid: n.pid,
        started_at: n.started_at,
        heartbeat_at: n.heartbeat_at,
        lease_expires_at: n.lease_expires_at,
        stopped_at: n.stopped_at,
        stop_reason: n.stop_reason.clone(),
        state: match (n.stopped_at, n.lease_expires_at > now) {
            (Some(_), _) => "stopped",
            (None, true) => "live",
            (None, false) => "lease_expired",
        }
        .to_string(),
    }
}

pub fn queue(q: &jobward_store::QueueRow, now: Timestamp) -> jobward_protocol::QueueView {
    jobward_protocol::QueueView {
        runner: q.runner.clone(),
        due: q.due,
        later: q.later,
        oldest_due_age_ms: q
            .oldest_due
            .map(|t| jobward_core::deadline::between(t, now).as_millis() as u64),
        running: q.running,
        claimed_5m: q.claimed_5m,
    }
}
