//! `jobward audit`: invariants 1-3 and 6 checked on the live data, without trusting the
//! schema's own constraints (they can be switched off). The queries and the judgement are
//! written once; times are compared as epoch milliseconds.

use std::time::Duration;

use jobward_core::duration::format_duration;
use jobward_core::{Reason, State};

use crate::Result;
use crate::sql::Row;
use crate::types::Violation;

/// The audit's queries; `$1` is "a reaper tick ago" in epoch milliseconds. Times are epoch
/// milliseconds in both schemas.
pub(crate) struct Queries {
    pub bad_state: &'static str,
    pub bad_reason: &'static str,
    pub overdue: &'static str,
    pub leaseless: &'static str,
    pub over_limit: &'static str,
    pub dead_owner: &'static str,
    pub silent: &'static str,
}

pub(crate) const QUERIES: Queries = Queries {
    // (id, state, finished_at, reason, message)
    bad_state: "SELECT id, state, finished_at, reason, message FROM executions WHERE \
        state NOT IN ('queued', 'running', 'completed', 'failed', 'timed_out', 'cancelled', 'skipped') \
        OR (state IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped') AND finished_at IS NULL) \
        OR (state IN ('queued', 'running') AND finished_at IS NOT NULL) \
        OR (state IN ('failed', 'timed_out', 'cancelled', 'skipped') AND (reason IS NULL OR message IS NULL OR message = '')) \
        OR (state IN ('queued', 'running', 'completed') AND reason IS NOT NULL) ORDER BY id",
    // (id, state, reason)
    bad_reason: "SELECT id, state, reason FROM executions WHERE reason IS NOT NULL \
        AND state IN ('failed', 'timed_out', 'cancelled', 'skipped')",
    // (id, state, start_deadline, lease_expires_at, run_deadline, cancel_deadline)
    overdue: "SELECT id, state, start_deadline, lease_expires_at, run_deadline, cancel_deadline \
        FROM executions WHERE \
        (state = 'queued' AND (start_deadline IS NULL OR start_deadline < $1)) \
        OR (state = 'running' AND (lease_expires_at IS NULL OR run_deadline IS NULL \
            OR lease_expires_at < $1 OR run_deadline < $1 OR cancel_deadline < $1)) ORDER BY id",
    // (id)
    leaseless: "SELECT id FROM executions WHERE state = 'running' \
        AND (lease_owner IS NULL OR lease_token IS NULL) ORDER BY id",
    // (key, limit, running)
    over_limit: "SELECT l.key, l.max_running, count(e.id) FROM concurrency_limits l \
        JOIN executions e ON e.state = 'running' AND e.concurrency_key = l.key \
        GROUP BY l.key, l.max_running HAVING count(e.id) > l.max_running",
    // (id, node, stop reason)
    dead_owner: "SELECT e.id, e.node_id, n.stop_reason FROM executions e JOIN nodes n ON n.id = e.node_id \
        WHERE e.state = 'running' AND n.stopped_at IS NOT NULL ORDER BY e.id",
    // (id, state)
    silent: "SELECT e.id, e.state FROM executions e WHERE e.finished_at IS NOT NULL AND NOT EXISTS \
        (SELECT 1 FROM events v WHERE v.execution_id = e.id AND v.kind = 'transition' \
        AND v.to_state = e.state) ORDER BY e.id",
};

/// What the queries found.
#[derive(Default)]
pub(crate) struct Rows {
    pub bad_state: Vec<Row>,
    pub bad_reason: Vec<Row>,
    pub overdue: Vec<Row>,
    pub leaseless: Vec<Row>,
    pub over_limit: Vec<Row>,
    pub dead_owner: Vec<Row>,
    pub silent: Vec<Row>,
}

/// The violations in what the queries found; `now` and `late` are epoch milliseconds.
pub(crate) fn violations(rows: Rows, now: i64, late: i64) -> Result<Vec<Violation>> {
    let mut v = Vec::new();
    let mut push = |invariant: u8, execution_id: Option<i64>, message: String| {
        v.push(Violation {
            invariant,
            execution_id,
            message,
        })
    };
    for r in &rows.bad_state {
        let (id, state, finished, reason, message) = (
            r.i64(0)?,
            r.text(1)?,
            r.opt_i64(2)?,
            r.opt_text(3)?,
            r.opt_text(4)?,
        );
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
    for r in &rows.bad_reason {
        let (id, state, reason) = (r.i64(0)?, r.text(1)?, r.text(2)?);
        match reason.parse::<Reason>() {
            Ok(r) if r.state().as_str() == state => {}
            _ => push(
                1,
                Some(id),
                format!("execution {id}: reason '{reason}' does not explain state {state}"),
            ),
        }
    }
    for r in &rows.overdue {
        let (id, state, start, lease, run, cancel) = (
            r.i64(0)?,
            r.text(1)?,
            r.opt_i64(2)?,
            r.opt_i64(3)?,
            r.opt_i64(4)?,
            r.opt_i64(5)?,
        );
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
    for r in &rows.leaseless {
        let id = r.i64(0)?;
        push(
            3,
            Some(id),
            format!("execution {id}: running without a lease owner and token"),
        );
    }
    for r in &rows.over_limit {
        let (key, limit, running) = (r.text(0)?, r.i64(1)?, r.i64(2)?);
        push(
            3,
            None,
            format!(
                "concurrency key '{key}': {running} running executions hold slots, limit is {limit}"
            ),
        );
    }
    for r in &rows.dead_owner {
        let (id, node, why) = (r.i64(0)?, r.text(1)?, r.opt_text(2)?.unwrap_or_default());
        push(
            3,
            Some(id),
            format!(
                "execution {id}: running on node {node}, which stopped ({why}); its slot is held by nobody"
            ),
        );
    }
    for r in &rows.silent {
        let (id, state) = (r.i64(0)?, r.text(1)?);
        push(
            6,
            Some(id),
            format!("execution {id}: {state} without a transition event to {state}"),
        );
    }
    Ok(v)
}
