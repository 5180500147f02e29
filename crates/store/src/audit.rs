//! `jobward audit`: invariants 1-3 and 6 checked on the live data, without trusting the
//! schema's own constraints (they can be switched off). The queries and the judgement are
//! shared; each backend only runs the queries. Times are compared as epoch milliseconds.

use std::time::Duration;

use jobward_core::duration::format_duration;
use jobward_core::{Reason, State};

use crate::types::Violation;

/// The audit's queries for a backend; `t(col)` turns a time column into epoch milliseconds,
/// and `$1` is "a reaper tick ago" in epoch milliseconds.
pub(crate) struct Queries {
    pub bad_state: String,
    pub bad_reason: String,
    pub overdue: String,
    pub leaseless: String,
    pub over_limit: String,
    pub dead_owner: String,
    pub silent: String,
}

pub(crate) fn queries(t: fn(&str) -> String) -> Queries {
    Queries {
        bad_state: format!(
            "SELECT id, state, {} AS finished_at, reason, message FROM executions WHERE \
               state NOT IN ('queued', 'running', 'completed', 'failed', 'timed_out', 'cancelled', 'skipped') \
               OR (state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped') AND finished_at IS NULL) \
               OR (state IN ('queued', 'running') AND finished_at IS NOT NULL) \
               OR (state IN ('failed', 'timed_out', 'cancelled', 'skipped') AND (reason IS NULL OR message IS NULL OR message = '')) \
               OR (state IN ('queued', 'running', 'completed') AND reason IS NOT NULL) ORDER BY id",
            t("finished_at")
        ),
        bad_reason: "SELECT id, state, reason FROM executions WHERE reason IS NOT NULL \
                     AND state IN ('failed', 'timed_out', 'cancelled', 'skipped')"
            .into(),
        overdue: format!(
            "SELECT id, state, {sd} AS start_deadline, {le} AS lease_expires_at, {rd} AS run_deadline, {cd} AS cancel_deadline \
             FROM executions WHERE \
               (state = 'queued' AND (start_deadline IS NULL OR {sd} < $1)) \
               OR (state = 'running' AND (lease_expires_at IS NULL OR run_deadline IS NULL \
                   OR {le} < $1 OR {rd} < $1 OR {cd} < $1)) ORDER BY id",
            sd = t("start_deadline"),
            le = t("lease_expires_at"),
            rd = t("run_deadline"),
            cd = t("cancel_deadline"),
        ),
        leaseless: "SELECT id FROM executions WHERE state = 'running' AND (lease_owner IS NULL OR lease_token IS NULL) ORDER BY id"
            .into(),
        over_limit: "SELECT l.key, l.max_running, count(e.id) FROM concurrency_limits l \
                     JOIN executions e ON e.state = 'running' AND e.concurrency_key = l.key \
                     GROUP BY l.key, l.max_running HAVING count(e.id) > l.max_running"
            .into(),
        dead_owner: "SELECT e.id, e.node_id, n.stop_reason FROM executions e JOIN nodes n ON n.id = e.node_id \
                     WHERE e.state = 'running' AND n.stopped_at IS NOT NULL ORDER BY e.id"
            .into(),
        silent: "SELECT e.id, e.state FROM executions e WHERE e.finished_at IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM events v WHERE v.execution_id = e.id AND v.kind = 'transition' AND v.to_state = e.state) \
                 ORDER BY e.id"
            .into(),
    }
}

/// (id, state, finished_at, reason, message) of a row that breaks invariant 1.
pub(crate) type BadState = (i64, String, Option<i64>, Option<String>, Option<String>);
/// (id, state, start_deadline, lease_expires_at, run_deadline, cancel_deadline), in ms.
pub(crate) type Overdue = (
    i64,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// What the queries found.
#[derive(Default)]
pub(crate) struct Rows {
    pub bad_state: Vec<BadState>,
    pub bad_reason: Vec<(i64, String, String)>,
    pub overdue: Vec<Overdue>,
    pub leaseless: Vec<i64>,
    pub over_limit: Vec<(String, i64, i64)>,
    pub dead_owner: Vec<(i64, String, String)>,
    pub silent: Vec<(i64, String)>,
}

/// The violations in what the queries found; `now` and `late` are epoch milliseconds.
pub(crate) fn violations(rows: Rows, now: i64, late: i64) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |invariant: u8, execution_id: Option<i64>, message: String| {
        v.push(Violation {
            invariant,
            execution_id,
            message,
        })
    };
    for (id, state, finished, reason, message) in rows.bad_state {
        let problem = match state.parse::<State>() {
            Err(_) => format!("unknown state '{state}'"),
            Ok(s) if s.is_terminal() && finished.is_none() => {
                format!("{s} but finished_at is not set")
            }
            Ok(s) if s.is_live() && finished.is_some() => format!("{s} but finished_at is set"),
            Ok(s) if reason.is_none() || message.as_deref().unwrap_or("").is_empty() => {
                format!("{s} without a reason kind and message")
            }
            Ok(s) => format!("{s} but carries reason '{}'", reason.unwrap_or_default()),
        };
        push(1, Some(id), format!("execution {id}: {problem}"));
    }
    for (id, state, reason) in rows.bad_reason {
        match reason.parse::<Reason>() {
            Ok(r) if r.state().as_str() == state => {}
            _ => push(
                1,
                Some(id),
                format!("execution {id}: reason '{reason}' does not explain state {state}"),
            ),
        }
    }
    for (id, state, start, lease, run, cancel) in rows.overdue {
        let desc = |what: &str, at: Option<i64>| match at {
            None => format!("{state} without a {what}"),
            Some(at) => format!(
                "{state} past its {what} by {}",
                format_duration(Duration::from_millis((now - at).max(0) as u64))
            ),
        };
        let problem = if state == "queued" {
            desc("start deadline", start)
        } else if lease.is_none_or(|l| l < late) {
            desc("lease expiry", lease)
        } else if run.is_none_or(|r| r < late) {
            desc("run deadline", run)
        } else {
            desc("cancel deadline", cancel)
        };
        push(2, Some(id), format!("execution {id}: {problem}"));
    }
    for id in rows.leaseless {
        push(
            3,
            Some(id),
            format!("execution {id}: running without a lease owner and token"),
        );
    }
    for (key, limit, running) in rows.over_limit {
        push(
            3,
            None,
            format!(
                "concurrency key '{key}': {running} running executions hold slots, limit is {limit}"
            ),
        );
    }
    for (id, node, why) in rows.dead_owner {
        push(
            3,
            Some(id),
            format!(
                "execution {id}: running on node {node}, which stopped ({why}); its slot is held by nobody"
            ),
        );
    }
    for (id, state) in rows.silent {
        push(
            6,
            Some(id),
            format!("execution {id}: {state} without a transition event to {state}"),
        );
    }
    v
}
