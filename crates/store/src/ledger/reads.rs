//! The ledger's reads, written once: lists, single rows, health, metrics and the audit.

use std::time::Duration;

use jobward_core::deadline::sub;
use jobward_core::{JobSpec, Reason, State, Timestamp};

use super::table;
use crate::Result;
use crate::error::corrupt;
use crate::rows::{self, EVENT_COLUMNS, dur_ms, ms, summary};
use crate::sql::{Arg, Conn};
use crate::types::*;

/// Running executions of earlier incarnations with this node name.
pub(crate) async fn orphans_of(
    tx: &mut dyn Conn,
    name: &str,
    node_id: &str,
) -> Result<Vec<ExecutionRow>> {
    table::executions(
        tx,
        "state = 'running' AND node_id IN (SELECT id FROM nodes WHERE name = $1 AND id <> $2) \
         ORDER BY id",
        &[name.into(), node_id.into()],
    )
    .await
}

pub(crate) async fn job_names(tx: &mut dyn Conn) -> Result<Vec<String>> {
    tx.fetch("SELECT name FROM jobs ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect()
}

pub(crate) async fn get_job(tx: &mut dyn Conn, name: &str) -> Result<Option<JobRow>> {
    let Some(r) = tx
        .one(
            "SELECT spec, defined, paused, next_fire_at, source FROM jobs WHERE name = $1",
            &[name.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let spec: JobSpec = serde_json::from_str(&r.text(0)?)
        .map_err(|e| corrupt(format!("job '{name}' definition: {e}")))?;
    let live = table::live_of_job(tx, name).await?;
    // The job's latest terminal execution, from its (job, finished_at) index.
    let last = table::executions(
        tx,
        "job = $1 AND finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1",
        &[name.into()],
    )
    .await?;
    Ok(Some(JobRow {
        spec,
        source: r.text(4)?.parse().map_err(corrupt)?,
        defined: r.bool(1)?,
        paused: r.bool(2)?,
        next_fire_at: r.opt_time(3)?,
        live: live.iter().map(summary).collect(),
        last_finished: last.first().map(summary),
    }))
}

pub(crate) async fn list_executions(
    tx: &mut dyn Conn,
    f: &ExecutionFilter,
) -> Result<Vec<ExecutionRow>> {
    let mut args: Vec<Arg<'_>> = Vec::new();
    let mut condition = filter_condition(tx.now(), f, &mut args);
    fn arg<'a>(args: &mut Vec<Arg<'a>>, a: Arg<'a>) -> String {
        args.push(a);
        format!("${}", args.len())
    }
    let n = arg(&mut args, i64::from(f.limit.max(1)).into());
    condition.push_str(&format!(" ORDER BY id DESC LIMIT {n}"));
    // One job's finished executions of one state, newest first: their own index range, not
    // the state index across every job (SQLite's planner, without statistics, takes that one
    // and walks the other jobs' rows).
    if f.job.is_some() && f.states.len() == 1 && f.states[0].is_terminal() {
        let sql = format!(
            "SELECT {} FROM executions /*sqlite: INDEXED BY executions_job_state*/ WHERE {condition}",
            rows::EXEC_COLUMNS
        );
        return rows::executions(tx.fetch(&sql, &args).await?);
    }
    table::executions(tx, &condition, &args).await
}

/// The WHERE condition of an execution filter (without paging), its arguments pushed to `args`.
fn filter_condition<'a>(now: Timestamp, f: &'a ExecutionFilter, args: &mut Vec<Arg<'a>>) -> String {
    let mut condition = String::from("1 = 1");
    fn arg<'a>(args: &mut Vec<Arg<'a>>, a: Arg<'a>) -> String {
        args.push(a);
        format!("${}", args.len())
    }
    if let Some(job) = &f.job {
        let n = arg(args, job.as_str().into());
        condition.push_str(&format!(" AND job = {n}"));
    }
    if !f.states.is_empty() {
        let list: Vec<String> = f
            .states
            .iter()
            .map(|s| arg(args, s.as_str().into()))
            .collect();
        condition.push_str(&format!(" AND state IN ({})", list.join(", ")));
        // Terminal states only: the state index holds terminal executions (invariant 1 makes
        // this the same rows; it lets the planner use that index).
        if f.states.iter().all(|s| s.is_terminal()) {
            condition.push_str(" AND finished_at IS NOT NULL");
        }
        // Live states only: read the few live rows through the partial index of live
        // executions, never the history (without it SQLite walks the table by id).
        if f.states.iter().all(|s| !s.is_terminal()) {
            condition.push_str(
                " AND id IN (SELECT id FROM executions /*sqlite: INDEXED BY executions_live_job*/ \
                 WHERE finished_at IS NULL)",
            );
        }
    }
    if let Some(d) = f.stale_after {
        let n = arg(args, sub(now, d).into());
        condition.push_str(&format!(" AND state = 'running' AND heartbeat_at <= {n}"));
    }
    if let Some(since) = f.since {
        let n = arg(args, since.into());
        condition.push_str(&format!(" AND queued_at >= {n}"));
    }
    if let Some(until) = f.until {
        let n = arg(args, until.into());
        condition.push_str(&format!(" AND queued_at < {n}"));
    }
    if let Some(before) = f.before_id {
        let n = arg(args, before.into());
        condition.push_str(&format!(" AND id < {n}"));
    }
    if let Some(r) = f.reason {
        let n = arg(args, r.as_str().into());
        condition.push_str(&format!(" AND reason = {n}"));
    }
    if let Some(t) = f.trigger {
        let n = arg(args, t.as_str().into());
        condition.push_str(&format!(" AND trigger = {n}"));
    }
    if let Some(o) = &f.owner {
        let n = arg(args, o.as_str().into());
        condition.push_str(&format!(" AND (lease_owner = {n} OR node_id = {n})"));
    }
    if f.lease_expired {
        let n = arg(args, now.into());
        condition.push_str(&format!(
            " AND state = 'running' AND lease_expires_at <= {n}"
        ));
    }
    condition
}

/// Executions per state that match a filter (its states, paging and limit aside), each count
/// stopping at `cap` + 1 so that a page never counts a whole history.
pub(crate) async fn count_executions(
    tx: &mut dyn Conn,
    f: &ExecutionFilter,
    cap: u64,
) -> Result<Vec<(State, u64)>> {
    let now = tx.now();
    let states = if f.states.is_empty() {
        State::ALL.to_vec()
    } else {
        f.states.clone()
    };
    let mut out = Vec::new();
    for st in states {
        let one = ExecutionFilter {
            states: vec![st],
            before_id: None,
            ..f.clone()
        };
        let mut args: Vec<Arg<'_>> = Vec::new();
        let condition = filter_condition(now, &one, &mut args);
        args.push(((cap + 1) as i64).into());
        // One job's terminal executions of one state: its (job, state, finished_at) index,
        // never the state index across every job (SQLite's planner, without statistics,
        // would walk all the job's neighbours).
        let hint = if f.job.is_some() && st.is_terminal() {
            "/*sqlite: INDEXED BY executions_job_state*/"
        } else {
            ""
        };
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM executions {hint} WHERE {condition} LIMIT ${}) t",
            args.len()
        );
        let n = tx.scalar_i64(&sql, &args).await? as u64;
        out.push((st, n));
    }
    Ok(out)
}

/// Every runner with queued or running executions: due and later depth, oldest due, running
/// count and claims in the last five minutes.
pub(crate) async fn queues(tx: &mut dyn Conn) -> Result<Vec<QueueRow>> {
    let now = tx.now();
    let mut rows: Vec<QueueRow> = tx
        .fetch(
            "SELECT runner, sum(CASE WHEN run_after <= $1 THEN 1 ELSE 0 END), \
             sum(CASE WHEN run_after > $1 THEN 1 ELSE 0 END), \
             min(CASE WHEN run_after <= $1 THEN run_after END) \
             FROM executions WHERE state = 'queued' GROUP BY runner",
            &[now.into()],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(QueueRow {
                runner: r.text(0)?,
                due: r.i64(1)? as u64,
                later: r.i64(2)? as u64,
                oldest_due: r.opt_time(3)?,
                running: 0,
                claimed_5m: 0,
            })
        })
        .collect::<Result<_>>()?;
    let running = tx
        .fetch(
            "SELECT runner, count(*) FROM executions WHERE state = 'running' GROUP BY runner",
            &[],
        )
        .await?;
    // Claims are the transition events into `running`; the newest 10,000 of the last five
    // minutes at most, so that a busy ledger costs the page a bounded read.
    let claimed = tx
        .fetch(
            "SELECT e.runner, count(*) FROM (SELECT execution_id FROM events \
             WHERE kind = 'transition' AND at >= $1 AND to_state = 'running' \
             ORDER BY at DESC LIMIT 10000) v JOIN executions e ON e.id = v.execution_id \
             GROUP BY e.runner",
            &[sub(now, Duration::from_secs(300)).into()],
        )
        .await?;
    for (list, running) in [(&running, true), (&claimed, false)] {
        for r in list.iter() {
            let runner = r.text(0)?;
            let n = r.i64(1)? as u64;
            let row = match rows.iter_mut().position(|q| q.runner == runner) {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(QueueRow {
                        runner,
                        due: 0,
                        later: 0,
                        oldest_due: None,
                        running: 0,
                        claimed_5m: 0,
                    });
                    rows.last_mut().expect("just pushed")
                }
            };
            if running {
                row.running = n;
            } else {
                row.claimed_5m = n;
            }
        }
    }
    rows.sort_by(|a, b| a.runner.cmp(&b.runner));
    Ok(rows)
}

pub(crate) async fn events(tx: &mut dyn Conn, id: ExecutionId) -> Result<Vec<EventRow>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE execution_id = $1 ORDER BY id");
    tx.fetch(&sql, &[id.into()])
        .await?
        .iter()
        .map(rows::event)
        .collect()
}

/// Running executions of `owner` whose cancel was requested: (id, reason).
pub(crate) async fn cancel_requests(
    tx: &mut dyn Conn,
    owner: &str,
) -> Result<Vec<(ExecutionId, Reason)>> {
    Ok(tx
        .fetch(
            "SELECT id, cancel_reason FROM executions WHERE state = 'running' \
             AND cancel_deadline IS NOT NULL AND lease_owner = $1",
            &[owner.into()],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let id = r.i64(0).ok()?;
            let reason = r.opt_text(1).ok()??.parse().ok()?;
            Some((id, reason))
        })
        .collect())
}

/// Running executions whose last heartbeat is older than `stale_after`.
pub(crate) async fn stale(tx: &mut dyn Conn, stale_after: Duration) -> Result<Vec<ExecutionRow>> {
    let cutoff = sub(tx.now(), stale_after);
    table::executions(
        tx,
        "state = 'running' AND heartbeat_at <= $1 ORDER BY id",
        &[cutoff.into()],
    )
    .await
}

/// Every job's name and history limits, for retention.
pub(crate) async fn histories(tx: &mut dyn Conn) -> Result<Vec<(String, jobward_core::History)>> {
    Ok(tx
        .fetch("SELECT name, spec FROM jobs ORDER BY name", &[])
        .await?
        .iter()
        .filter_map(|r| {
            let name = r.text(0).ok()?;
            let spec: JobSpec = serde_json::from_str(&r.text(1).ok()?).ok()?;
            Some((name, spec.history))
        })
        .collect())
}

pub(crate) async fn health(tx: &mut dyn Conn, p: &HealthParams) -> Result<HealthMetrics> {
    let now = tx.now();
    let count = async |tx: &mut dyn Conn, sql: &str, at: jobward_core::Timestamp| -> Result<u64> {
        Ok(tx.scalar_i64(sql, &[at.into()]).await? as u64)
    };
    let stale = match p.stale_after {
        Some(d) => {
            count(
                tx,
                "SELECT count(*) FROM executions WHERE state = 'running' AND heartbeat_at <= $1",
                sub(now, d),
            )
            .await?
        }
        None => count(
            tx,
            "SELECT count(*) FROM executions WHERE state = 'running' AND lease_expires_at <= $1",
            now,
        )
        .await?,
    };
    Ok(HealthMetrics {
        running_executions: tx
            .scalar_i64(
                "SELECT count(*) FROM executions WHERE state = 'running'",
                &[],
            )
            .await? as u64,
        queued_executions: tx
            .scalar_i64(
                "SELECT count(*) FROM executions WHERE state = 'queued'",
                &[],
            )
            .await? as u64,
        long_running_executions: count(
            tx,
            "SELECT count(*) FROM executions WHERE state = 'running' AND started_at <= $1",
            sub(now, p.long_running_after),
        )
        .await?,
        stale_executions: stale,
        overdue_queued_executions: count(
            tx,
            "SELECT count(*) FROM executions WHERE state = 'queued' AND start_deadline <= $1",
            now,
        )
        .await?,
        recent_executions_24h: count(
            tx,
            "SELECT count(*) FROM executions WHERE queued_at >= $1",
            sub(now, Duration::from_secs(86_400)),
        )
        .await?,
        live_nodes: count(
            tx,
            "SELECT count(*) FROM nodes WHERE stopped_at IS NULL AND lease_expires_at > $1",
            now,
        )
        .await?,
        timestamp: now,
    })
}

pub(crate) async fn metrics(tx: &mut dyn Conn) -> Result<MetricsSnapshot> {
    let by_state: Vec<(String, i64)> = tx
        .fetch("SELECT state, count(*) FROM executions GROUP BY state", &[])
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.i64(1)?)))
        .collect::<Result<_>>()?;
    let oldest = tx
        .one(
            "SELECT MIN(heartbeat_at) FROM executions WHERE state = 'running'",
            &[],
        )
        .await?
        .map(|r| r.opt_time(0))
        .transpose()?
        .flatten();
    let slots = slots(tx).await?;
    let now = tx.now();
    // Each job's latest end per state: the newest 100 of that state by id (ends come nearly
    // in id order), one index range each.
    let mut last_finished = Vec::new();
    let names: Vec<String> = tx
        .fetch("SELECT name FROM jobs ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_>>()?;
    for job in &names {
        for st in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            let at = tx
                .one(
                    "SELECT max(finished_at) FROM (SELECT finished_at FROM executions \
                     /*sqlite: INDEXED BY executions_job_state*/ WHERE job = $1 AND state = $2 \
                     AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 100) t",
                    &[job.as_str().into(), st.as_str().into()],
                )
                .await?
                .map(|r| r.opt_time(0))
                .transpose()?
                .flatten();
            if let Some(at) = at {
                last_finished.push((job.clone(), st, at));
            }
        }
    }
    let overdue = tx
        .fetch(
            "SELECT job, count(*) FROM executions WHERE finished_at IS NULL AND state = 'running' \
             AND expected_max_ms IS NOT NULL AND (overdue_at IS NOT NULL OR started_at + expected_max_ms <= $1) \
             GROUP BY job ORDER BY job",
            &[now.into()],
        )
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.i64(1)? as u64)))
        .collect::<Result<Vec<_>>>()?;
    let stale = tx
        .scalar_i64(
            "SELECT count(*) FROM executions WHERE state = 'running' AND lease_expires_at <= $1",
            &[now.into()],
        )
        .await? as u64;
    Ok(MetricsSnapshot {
        last_finished,
        overdue,
        stale,
        by_state: State::ALL
            .into_iter()
            .map(|st| {
                let n = by_state
                    .iter()
                    .find(|(s, _)| s == st.as_str())
                    .map(|(_, n)| *n as u64)
                    .unwrap_or(0);
                (st, n)
            })
            .collect(),
        oldest_heartbeat_at: oldest,
        slots,
        now: tx.now(),
    })
}

/// Each concurrency key's slots in use and limit.
pub(crate) async fn slots(tx: &mut dyn Conn) -> Result<Vec<SlotUse>> {
    tx
        .fetch(
            "SELECT l.key, (SELECT count(*) FROM executions e WHERE e.state = 'running' \
             AND e.concurrency_key = l.key), l.max_running FROM concurrency_limits l ORDER BY l.key",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(SlotUse {
                key: r.text(0)?,
                used: r.i64(1)? as u64,
                limit: r.i64(2)? as u64,
            })
        })
        .collect()
}

pub(crate) async fn audit(tx: &mut dyn Conn, p: &AuditParams) -> Result<Vec<Violation>> {
    let now = ms(tx.now());
    let late = now - dur_ms(p.tolerance);
    let q = crate::audit::QUERIES;
    let all = async |tx: &mut dyn Conn, sql: &str, args: &[Arg<'_>]| tx.fetch(sql, args).await;
    let rows = crate::audit::Rows {
        bad_state: all(tx, q.bad_state, &[]).await?,
        bad_reason: all(tx, q.bad_reason, &[]).await?,
        overdue: all(tx, q.overdue, &[late.into()]).await?,
        leaseless: all(tx, q.leaseless, &[]).await?,
        over_limit: all(tx, q.over_limit, &[]).await?,
        dead_owner: all(tx, q.dead_owner, &[]).await?,
        silent: all(tx, q.silent, &[]).await?,
    };
    crate::audit::violations(rows, now, late)
}
