//! Whole operations over `Tx`. Each runs inside one write transaction of the caller.

use std::collections::{HashMap, HashSet};

use jobward_core::deadline::between;
use jobward_core::duration::format_duration;
use jobward_core::schedule::first_fire;
use jobward_core::{
    Deadline, Event, JobSpec, Overlap, Reason, State, Timestamp, deadline, plan_fires, transition,
};

use super::{End, JobState, NewEvent, RowValues, StopNodes, table};
use crate::error::ts;
use crate::rows::to_core;
use crate::sql::{Arg, Conn};
use crate::types::*;
use crate::{Result, StoreError};

/// Appends one event (invariant 6).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn event(
    tx: &mut dyn Conn,
    id: ExecutionId,
    kind: EventKind,
    from: Option<State>,
    to: Option<State>,
    reason: Option<&str>,
    message: &str,
    actor: &str,
) -> Result<()> {
    table::event(
        tx,
        &NewEvent {
            id,
            kind,
            from,
            to,
            reason,
            message,
            actor,
        },
    )
    .await
}

/// Writes the `refused` event for a report whose lease is not (or no longer) the reporter's,
/// and says what the execution is now. Nothing else changes.
pub(crate) async fn refuse(
    tx: &mut dyn Conn,
    id: ExecutionId,
    reporter: &str,
    what: &str,
) -> Result<LostLease> {
    let row = table::load(tx, id).await?;
    refuse_loaded(tx, id, row.as_ref(), reporter, what).await
}

async fn refuse_loaded(
    tx: &mut dyn Conn,
    id: ExecutionId,
    row: Option<&ExecutionRow>,
    reporter: &str,
    what: &str,
) -> Result<LostLease> {
    let (state, reason) = row
        .map(|r| (Some(r.state), r.reason))
        .unwrap_or((None, None));
    if row.is_some() {
        let now_desc = match (state, reason) {
            (Some(s), Some(r)) => format!("{s} ({r})"),
            (Some(s), None) => s.to_string(),
            _ => "gone".into(),
        };
        let text =
            format!("{what} from {reporter} refused: lease lost, the execution is {now_desc}");
        event(
            tx,
            id,
            EventKind::Refused,
            state,
            None,
            Some("lease_lost"),
            &text,
            reporter,
        )
        .await?;
    }
    Ok(LostLease { id, state, reason })
}

/// A lease that a heartbeat did not renew. It is lost (refused, with its event) unless its
/// owner itself ended the execution under this very lease: a heartbeat that raced the owner's
/// own completion or hand-back has nothing to refuse and nothing to stop (invariant 12).
pub(crate) async fn not_renewed(
    tx: &mut dyn Conn,
    lease: &LeaseRef,
    owner: &str,
) -> Result<Option<LostLease>> {
    let row = table::load(tx, lease.id).await?;
    if let Some(r) = &row
        && r.state.is_terminal()
        && r.attempt == lease.attempt
        && r.lease_token.as_deref() == Some(lease.token.as_str())
        && r.lease_owner.as_deref() == Some(owner)
        && r.ended_by.as_deref() == Some(owner)
    {
        return Ok(None);
    }
    Ok(Some(
        refuse_loaded(tx, lease.id, row.as_ref(), owner, "heartbeat").await?,
    ))
}

/// What a new execution row holds beyond what its job defines.
pub(crate) struct NewExecution<'a> {
    pub spec: &'a JobSpec,
    pub number: Option<i64>,
    pub attempt: u32,
    pub retry_of: Option<ExecutionId>,
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    /// `None`: queued. `Some`: born terminal (skipped) with this reason and message.
    pub skipped: Option<(Reason, String)>,
    pub run_after: Timestamp,
    pub payload: Option<&'a serde_json::Value>,
    /// Overrides the job's command and limits for a retry (which keeps its first attempt's).
    pub from_previous: Option<&'a ExecutionRow>,
    /// Raises the attempt budget (a handed-back attempt does not consume one).
    pub max_attempts: Option<u32>,
    pub idempotency_key: Option<&'a str>,
    pub checkpoint: Option<&'a serde_json::Value>,
    /// Overrides the job's priority.
    pub priority: Option<i32>,
    pub note: String,
    pub actor: &'a str,
}

impl<'a> NewExecution<'a> {
    /// A first attempt of `spec` with nothing special about it.
    pub(crate) fn first(
        spec: &'a JobSpec,
        trigger: Trigger,
        run_after: Timestamp,
        note: String,
        actor: &'a str,
    ) -> Self {
        NewExecution {
            spec,
            number: None,
            attempt: 1,
            retry_of: None,
            trigger,
            scheduled_for: None,
            skipped: None,
            run_after,
            payload: None,
            from_previous: None,
            max_attempts: None,
            idempotency_key: None,
            checkpoint: None,
            priority: None,
            note,
            actor,
        }
    }
}

/// Inserts an execution and its creation event.
pub(crate) async fn insert_execution(
    tx: &mut dyn Conn,
    n: NewExecution<'_>,
) -> Result<ExecutionRow> {
    let mut rows = insert_executions(tx, vec![n]).await?;
    rows.pop()
        .ok_or_else(|| StoreError::Database("an insert returned no row".into()))
}

/// Inserts executions and their creation events: the rows in one statement, the events in
/// another, whatever their number. Numbers not given are taken from each job's counter.
pub(crate) async fn insert_executions(
    tx: &mut dyn Conn,
    news: Vec<NewExecution<'_>>,
) -> Result<Vec<ExecutionRow>> {
    let now = tx.now();
    let mut values = Vec::with_capacity(news.len());
    for n in &news {
        let number = match n.number {
            Some(v) => v,
            None => table::next_number(tx, &n.spec.name).await?,
        };
        let (timeouts, retry, command, key, runner, priority, expected) = match n.from_previous {
            Some(p) => (
                p.timeouts,
                p.retry,
                p.command.clone(),
                p.concurrency_key.clone(),
                p.runner.clone(),
                p.priority,
                p.expected_duration,
            ),
            None => (
                n.spec.timeouts,
                n.spec.retry,
                n.spec.command.clone(),
                n.spec.concurrency_key.clone(),
                n.spec.runner().to_string(),
                n.priority.unwrap_or(n.spec.priority),
                n.spec.expected_duration,
            ),
        };
        let (state, reason, message, finished_at, start_deadline) = match &n.skipped {
            Some((r, m)) => (State::Skipped, Some(*r), Some(m.clone()), Some(now), None),
            None => (
                State::Queued,
                None,
                None,
                None,
                Some(timeouts.start_deadline(n.run_after)),
            ),
        };
        values.push(RowValues {
            job: n.spec.name.clone(),
            number,
            attempt: n.attempt,
            max_attempts: n.max_attempts.unwrap_or(retry.max_attempts).max(1),
            retry_of: n.retry_of,
            trigger: n.trigger,
            scheduled_for: n.scheduled_for,
            state,
            command,
            runner,
            concurrency_key: key,
            overlap: n.spec.overlap,
            timeouts,
            retry,
            queued_at: now,
            run_after: n.run_after,
            start_deadline,
            finished_at,
            reason,
            message,
            payload: n.payload.cloned(),
            idempotency_key: n.idempotency_key.map(str::to_string),
            checkpoint: n.checkpoint.cloned(),
            actor: n.actor.to_string(),
            priority,
            expected_duration: expected,
        });
    }
    let rows = table::insert_executions(tx, &values).await?;
    let texts: Vec<String> = news
        .iter()
        .zip(&values)
        .map(|(n, v)| match &v.message {
            Some(m) => format!("{}; {m}", n.note),
            None => n.note.clone(),
        })
        .collect();
    let events: Vec<NewEvent<'_>> = rows
        .iter()
        .zip(&values)
        .zip(&texts)
        .map(|((row, v), text)| NewEvent {
            id: row.id,
            kind: EventKind::Transition,
            from: None,
            to: Some(v.state),
            reason: v.reason.map(Reason::as_str),
            message: text,
            actor: &v.actor,
        })
        .collect();
    table::events(tx, &events).await?;
    Ok(rows)
}

/// A terminal step to apply with compare-and-set.
pub(crate) struct Apply<'a> {
    pub event: Event,
    pub message: String,
    pub actor: &'a str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl<'a> Apply<'a> {
    pub(crate) fn new(event: Event, message: impl Into<String>, actor: &'a str) -> Self {
        Apply {
            event,
            message: message.into(),
            actor,
            exit_code: None,
            signal: None,
        }
    }
}

/// Applies a terminal event to `row` as it was read. `None` when the row changed in between
/// (nothing was written). Writes the transition event and, when the policy owes one, the retry.
pub(crate) async fn settle(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    a: Apply<'_>,
) -> Result<Option<Settled>> {
    Ok(settle_many(tx, vec![(row, a)]).await?.pop().flatten())
}

/// The one path of every terminal transition, for many rows at once: the transition decided
/// by `jobward_core::transition`, the compare-and-set of all rows in one statement (a row
/// that changed in between is left alone: `None`), their events in one statement, and the
/// retries the policy owes. The answer is in the order of `items`.
pub(crate) async fn settle_many(
    tx: &mut dyn Conn,
    items: Vec<(&ExecutionRow, Apply<'_>)>,
) -> Result<Vec<Option<Settled>>> {
    let mut ends = Vec::with_capacity(items.len());
    for (row, a) in &items {
        let core = to_core(row);
        let step = transition(row.state, core.pending_cancel, a.event)?;
        if !step.to.is_terminal() {
            return Err(StoreError::Invalid(format!(
                "'{}' does not end execution {}",
                a.event, row.id
            )));
        }
        // A completed execution carries no reason and no message (invariant 1's CHECK).
        let message = match (step.reason, a.message.is_empty()) {
            (None, _) => None,
            (Some(r), true) => Some(r.as_str().to_string()),
            (Some(_), false) => Some(a.message.clone()),
        };
        ends.push((
            *row,
            End {
                state: step.to,
                actor: a.actor,
                reason: step.reason,
                message,
                exit_code: a.exit_code,
                signal: a.signal,
            },
        ));
    }
    let changed: HashMap<ExecutionId, ExecutionRow> = table::cas_end_many(tx, &ends)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let texts: Vec<String> = ends
        .iter()
        .map(|(_, end)| {
            end.message.clone().unwrap_or_else(|| match end.exit_code {
                Some(c) => format!("completed (exit code {c})"),
                None => "completed".to_string(),
            })
        })
        .collect();
    let events: Vec<NewEvent<'_>> = ends
        .iter()
        .zip(&texts)
        .filter(|((row, _), _)| changed.contains_key(&row.id))
        .map(|((row, end), text)| NewEvent {
            id: row.id,
            kind: EventKind::Transition,
            from: Some(row.state),
            to: Some(end.state),
            reason: end.reason.map(Reason::as_str),
            message: text,
            actor: end.actor,
        })
        .collect();
    table::events(tx, &events).await?;
    // A run that held a concurrency slot (or blocked a queued overlap) frees it: every
    // node's claimers hear of it, so the next run goes to whichever node is free.
    let mut freed: Vec<&str> = ends
        .iter()
        .filter(|(row, _)| {
            changed.contains_key(&row.id)
                && row.state == State::Running
                && (row.concurrency_key.is_some() || row.overlap == Overlap::Queue)
        })
        .map(|(row, _)| row.runner.as_str())
        .collect();
    freed.sort_unstable();
    freed.dedup();
    for runner in freed {
        tx.notify_work(runner, 1).await?;
    }
    let mut out = Vec::with_capacity(ends.len());
    for (row, end) in &ends {
        let Some(execution) = changed.get(&row.id) else {
            out.push(None);
            continue;
        };
        let retry = match end.reason {
            Some(reason) => schedule_retry(tx, row, reason, end.actor).await?,
            None => None,
        };
        out.push(Some(Settled {
            execution: execution.clone(),
            retry,
            repeated: false,
        }));
    }
    Ok(out)
}

async fn schedule_retry(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    reason: Reason,
    actor: &str,
) -> Result<Option<ExecutionRow>> {
    let Some(retry) = row.retry.next(row.attempt, reason) else {
        return Ok(None);
    };
    let run_after = deadline::add(tx.now(), retry.delay);
    let note = format!(
        "retry {}/{} of execution {} ({reason}), not before {}",
        retry.attempt,
        row.retry.max_attempts,
        row.id,
        ts(run_after)
    );
    queue_next_attempt(tx, row, run_after, None, note, actor).await
}

/// Queues the attempt that follows `row`, not before `run_after`: same number, same command
/// and limits, its payload and its last checkpoint. `None` when the job no longer exists.
pub(crate) async fn queue_next_attempt(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    run_after: Timestamp,
    max_attempts: Option<u32>,
    note: String,
    actor: &str,
) -> Result<Option<ExecutionRow>> {
    let Some(job) = table::load_job(tx, &row.job, false).await? else {
        return Ok(None);
    };
    let new = NewExecution {
        number: Some(row.number),
        attempt: row.attempt + 1,
        retry_of: Some(row.id),
        scheduled_for: row.scheduled_for,
        payload: row.payload.as_ref(),
        from_previous: Some(row),
        max_attempts,
        checkpoint: row.checkpoint.as_ref(),
        ..NewExecution::first(&job.spec, Trigger::Retry, run_after, note, actor)
    };
    Ok(Some(insert_execution(tx, new).await?))
}

/// Asks the owner of a running execution to stop it: sets the cancel fields (compare-and-set)
/// and writes a note. False when the row changed in between.
pub(crate) async fn request_cancel(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    reason: Reason,
    message: &str,
    actor: &str,
) -> Result<bool> {
    transition(row.state, row.cancel_reason, Event::Cancel(reason))?;
    if row.cancel_requested_at.is_some() {
        return Ok(true);
    }
    let deadline = row.timeouts.cancel_deadline(tx.now());
    if !table::cas_cancel_request(tx, row, reason, message, deadline).await? {
        return Ok(false);
    }
    let text = format!(
        "cancel requested ({reason}): {message}; the owner must stop it by {}",
        ts(deadline)
    );
    event(
        tx,
        row.id,
        EventKind::Note,
        Some(State::Running),
        Some(State::Running),
        Some(reason.as_str()),
        &text,
        actor,
    )
    .await?;
    Ok(true)
}

/// Where a new execution comes from.
pub(crate) struct Origin<'a> {
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    pub payload: Option<&'a serde_json::Value>,
    pub idempotency_key: Option<&'a str>,
    /// Not before this time (a delayed run); now when `None`.
    pub run_after: Option<Timestamp>,
    pub priority: Option<i32>,
    pub note: String,
}

/// Creates an execution under the job's overlap policy (triggers and the scheduler).
pub(crate) async fn create_with_overlap(
    tx: &mut dyn Conn,
    spec: &JobSpec,
    origin: Origin<'_>,
    actor: &str,
) -> Result<Created> {
    let now = tx.now();
    // Only skip and replace look at what is live: loading a long queue on every trigger of an
    // `allow` or `queue` job would make each trigger cost as much as the queue is long.
    let live = match spec.overlap {
        Overlap::Skip | Overlap::Replace => {
            // What is live, and what this creates, are decided one creator at a time.
            table::lock_job(tx, &spec.name).await?;
            table::live_of_job(tx, &spec.name).await?
        }
        Overlap::Queue | Overlap::Allow => Vec::new(),
    };
    let mut replaced = Vec::new();
    let base = NewExecution {
        scheduled_for: origin.scheduled_for,
        payload: origin.payload,
        idempotency_key: origin.idempotency_key,
        priority: origin.priority,
        ..NewExecution::first(
            spec,
            origin.trigger,
            origin.run_after.map_or(now, |t| t.max(now)),
            origin.note,
            actor,
        )
    };
    if let Some(blocking) = live.first() {
        match spec.overlap {
            Overlap::Skip => {
                let since = blocking.started_at.unwrap_or(blocking.queued_at);
                let message = format!(
                    "run #{} (attempt {}, execution {}) is still {} since {} (overlap = skip)",
                    blocking.number,
                    blocking.attempt,
                    blocking.id,
                    blocking.state,
                    ts(since)
                );
                let execution = insert_execution(
                    tx,
                    NewExecution {
                        skipped: Some((Reason::Overlap, message)),
                        ..base
                    },
                )
                .await?;
                return Ok(Created {
                    execution,
                    replaced,
                    existing: false,
                });
            }
            Overlap::Replace => {
                let execution = insert_execution(tx, base).await?;
                let message = format!(
                    "replaced by run #{} (execution {})",
                    execution.number, execution.id
                );
                for old in &live {
                    let done = match old.state {
                        State::Queued => {
                            let a =
                                Apply::new(Event::Cancel(Reason::Replaced), message.clone(), actor);
                            settle(tx, old, a).await?.is_some()
                        }
                        _ => request_cancel(tx, old, Reason::Replaced, &message, actor).await?,
                    };
                    if done {
                        replaced.push(old.id);
                    }
                }
                return Ok(Created {
                    execution,
                    replaced,
                    existing: false,
                });
            }
            Overlap::Queue | Overlap::Allow => {}
        }
    }
    let execution = insert_execution(tx, base).await?;
    Ok(Created {
        execution,
        replaced,
        existing: false,
    })
}

/// A manual trigger.
pub(crate) async fn trigger(tx: &mut dyn Conn, p: &TriggerParams) -> Result<Created> {
    let Some(JobState {
        spec,
        defined,
        paused,
    }) = table::load_job(tx, &p.job, false).await?
    else {
        return Err(StoreError::JobNotFound(p.job.clone()));
    };
    if !defined {
        return Err(StoreError::JobUndefined(p.job.clone()));
    }
    if let Some(key) = &p.idempotency_key
        && let Some(execution) = table::by_idempotency_key(tx, &p.job, key).await?
    {
        return Ok(Created {
            execution,
            replaced: vec![],
            existing: true,
        });
    }
    let mut note = format!("triggered manually by {}", p.actor);
    if let Some(at) = p.run_at.filter(|at| *at > tx.now()) {
        note.push_str(&format!("; scheduled for {}", ts(at)));
    }
    if paused {
        let new = NewExecution {
            skipped: Some((Reason::Paused, format!("job '{}' is paused", spec.name))),
            payload: p.payload.as_ref(),
            idempotency_key: p.idempotency_key.as_deref(),
            ..NewExecution::first(&spec, Trigger::Manual, tx.now(), note, &p.actor)
        };
        let execution = insert_execution(tx, new).await?;
        return Ok(Created {
            execution,
            replaced: vec![],
            existing: false,
        });
    }
    let origin = Origin {
        trigger: Trigger::Manual,
        scheduled_for: None,
        payload: p.payload.as_ref(),
        idempotency_key: p.idempotency_key.as_deref(),
        run_after: p.run_at,
        priority: p.priority,
        note,
    };
    create_with_overlap(tx, &spec, origin, &p.actor).await
}

/// Many triggers in one transaction (bulk enqueue). For each job of an `allow` or `queue`
/// overlap that is not paused: its numbers in one statement, its executions in one, their
/// events in one; idempotency keys are honoured per item (also between items of the batch).
/// Other jobs take the one-trigger path per item. Answered per item, in order.
pub(crate) async fn trigger_many(
    tx: &mut dyn Conn,
    items: &[TriggerParams],
) -> Result<Vec<std::result::Result<Created, StoreError>>> {
    let mut out: Vec<Option<std::result::Result<Created, StoreError>>> =
        (0..items.len()).map(|_| None).collect();
    let mut jobs: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, p) in items.iter().enumerate() {
        match jobs.iter_mut().find(|(j, _)| *j == p.job.as_str()) {
            Some((_, idxs)) => idxs.push(i),
            None => jobs.push((p.job.as_str(), vec![i])),
        }
    }
    for (job, idxs) in jobs {
        let Some(state) = table::load_job(tx, job, false).await? else {
            for i in idxs {
                out[i] = Some(Err(StoreError::JobNotFound(job.to_string())));
            }
            continue;
        };
        if !state.defined {
            for i in idxs {
                out[i] = Some(Err(StoreError::JobUndefined(job.to_string())));
            }
            continue;
        }
        if state.paused || matches!(state.spec.overlap, Overlap::Skip | Overlap::Replace) {
            for i in idxs {
                out[i] = Some(Ok(trigger(tx, &items[i]).await?));
            }
            continue;
        }
        let keys: Vec<&str> = idxs
            .iter()
            .filter_map(|i| items[*i].idempotency_key.as_deref())
            .collect();
        let mut existing: HashMap<String, ExecutionRow> =
            table::by_idempotency_keys(tx, job, &keys)
                .await?
                .into_iter()
                .filter_map(|r| r.idempotency_key.clone().map(|k| (k, r)))
                .collect();
        // Items that create an execution, and items that repeat an earlier item's key.
        let mut creating: Vec<usize> = Vec::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for &i in &idxs {
            match items[i].idempotency_key.as_deref() {
                Some(k) if existing.contains_key(k) => {
                    out[i] = Some(Ok(Created {
                        execution: existing[k].clone(),
                        replaced: vec![],
                        existing: true,
                    }));
                }
                Some(k) => match creating
                    .iter()
                    .find(|j| items[**j].idempotency_key.as_deref() == Some(k))
                {
                    Some(&j) => repeats.push((i, j)),
                    None => creating.push(i),
                },
                None => creating.push(i),
            }
        }
        if creating.is_empty() {
            continue;
        }
        let first = table::next_numbers(tx, job, creating.len() as u32).await?;
        let now = tx.now();
        let news: Vec<NewExecution<'_>> = creating
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let p = &items[i];
                NewExecution {
                    number: Some(first + k as i64),
                    payload: p.payload.as_ref(),
                    idempotency_key: p.idempotency_key.as_deref(),
                    priority: p.priority,
                    ..NewExecution::first(
                        &state.spec,
                        Trigger::Manual,
                        p.run_at.map_or(now, |t| t.max(now)),
                        format!("triggered manually by {}", p.actor),
                        &p.actor,
                    )
                }
            })
            .collect();
        let rows = insert_executions(tx, news).await?;
        for (&i, row) in creating.iter().zip(rows) {
            if let Some(k) = &row.idempotency_key {
                existing.insert(k.clone(), row.clone());
            }
            out[i] = Some(Ok(Created {
                execution: row,
                replaced: vec![],
                existing: false,
            }));
        }
        for (i, j) in repeats {
            let first = out[j].as_ref().and_then(|r| r.as_ref().ok()).cloned();
            out[i] = first.map(|c| {
                Ok(Created {
                    existing: true,
                    ..c
                })
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Err(StoreError::Database("a trigger was not answered".into())))
        })
        .collect())
}

/// One scheduler tick over the due jobs this transaction holds.
pub(crate) async fn fire_due(tx: &mut dyn Conn, actor: &str) -> Result<FireReport> {
    let now = tx.now();
    let mut report = FireReport::default();
    for (name, cursor) in table::due_jobs(tx).await? {
        let Some(job) = table::load_job(tx, &name, false).await? else {
            continue;
        };
        let plan = plan_fires(
            &job.spec.schedule,
            cursor,
            now,
            job.spec.misfire_grace,
            job.spec.misfire,
        );
        fire_job(tx, &job.spec, job.paused, &plan, actor, &mut report).await?;
        if !table::move_cursor(tx, &name, cursor, plan.next_fire_at).await? {
            return Err(StoreError::Database(format!(
                "scheduler cursor of job '{name}' moved during a tick"
            )));
        }
    }
    report.next_fire_at = table::earliest_cursor(tx).await?;
    Ok(report)
}

/// Applies one job's fire plan: at most one skipped record for missed instants, and one
/// execution (or skip) per on-time instant, each only if that instant has none yet.
async fn fire_job(
    tx: &mut dyn Conn,
    spec: &JobSpec,
    paused: bool,
    plan: &jobward_core::FirePlan,
    actor: &str,
    report: &mut FireReport,
) -> Result<()> {
    let now = tx.now();
    let skip = |reason: Reason, message: String, at: Timestamp, note: String| NewExecution {
        scheduled_for: Some(at),
        skipped: Some((reason, message)),
        ..NewExecution::first(spec, Trigger::Schedule, now, note, actor)
    };
    if let Some(missed) = plan.skip
        && let Some(last) = missed.last
        && !table::fired_already(tx, &spec.name, last).await?
    {
        let message = format!(
            "missed {} while no node was running (misfire = skip)",
            missed.describe()
        );
        let e = insert_execution(
            tx,
            skip(
                Reason::MissedSchedule,
                message,
                last,
                "recorded after downtime".into(),
            ),
        )
        .await?;
        report.skipped.push(e.id);
    }
    for (at, catch_up) in &plan.fires {
        let at = *at;
        if table::fired_already(tx, &spec.name, at).await? {
            continue;
        }
        if paused {
            let message = format!("job '{}' is paused", spec.name);
            let e = insert_execution(
                tx,
                skip(Reason::Paused, message, at, format!("fired for {}", ts(at))),
            )
            .await?;
            report.skipped.push(e.id);
            continue;
        }
        let (trigger, note) = match catch_up {
            Some(span) => (
                Trigger::CatchUp,
                format!(
                    "one catch-up run for {} missed while no node was running (misfire = run_once)",
                    span.describe()
                ),
            ),
            None => (Trigger::Schedule, format!("fired for {}", ts(at))),
        };
        let origin = Origin {
            trigger,
            scheduled_for: Some(at),
            payload: None,
            idempotency_key: None,
            run_after: None,
            priority: None,
            note,
        };
        let c = create_with_overlap(tx, spec, origin, actor).await?;
        report.replaced.extend(c.replaced);
        match (c.execution.state, trigger) {
            (State::Skipped, _) => report.skipped.push(c.execution.id),
            (_, Trigger::CatchUp) => report.caught_up.push(c.execution.id),
            _ => report.fired.push(c.execution.id),
        }
    }
    Ok(())
}

pub(crate) fn outcome_state(o: &Outcome) -> State {
    o.reason.map(Reason::state).unwrap_or(State::Completed)
}

fn describe_outcome(o: &Outcome) -> String {
    match (o.reason, o.exit_code, o.signal) {
        (None, _, _) => "success".into(),
        (Some(r), Some(c), _) => format!("{r} (exit code {c})"),
        (Some(r), _, Some(s)) => format!("{r} (signal {s})"),
        (Some(r), _, _) => r.to_string(),
    }
}

/// An owner's completion. The outer error is the store's; the inner one is the refusal, whose
/// event must still be committed.
pub(crate) async fn complete(
    tx: &mut dyn Conn,
    p: &CompleteParams,
) -> Result<std::result::Result<Settled, StoreError>> {
    complete_many(tx, std::slice::from_ref(p))
        .await?
        .pop()
        .ok_or_else(|| StoreError::Database("a completion returned nothing".into()))
}

/// Many owners' completions in one transaction: every row read in one statement, every
/// accepted one settled together (`settle_many`); each report is still fenced by its own
/// lease token and answered on its own: accepted, an idempotent repeat, or refused.
pub(crate) async fn complete_many(
    tx: &mut dyn Conn,
    ps: &[CompleteParams],
) -> Result<Vec<std::result::Result<Settled, StoreError>>> {
    let ids: Vec<ExecutionId> = ps.iter().map(|p| p.lease.id).collect();
    let rows: HashMap<ExecutionId, ExecutionRow> = table::load_many(tx, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut out: Vec<Option<std::result::Result<Settled, StoreError>>> =
        (0..ps.len()).map(|_| None).collect();
    let mut items = Vec::new();
    let mut picked = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in ps.iter().enumerate() {
        let Some(row) = rows.get(&p.lease.id) else {
            out[i] = Some(Err(StoreError::ExecutionNotFound(p.lease.id)));
            continue;
        };
        let event = match p.outcome.reason {
            None => Event::Complete,
            Some(r) => Event::Finish(r),
        };
        let same_lease = row.attempt == p.lease.attempt
            && row.lease_token.as_deref() == Some(p.lease.token.as_str());
        if !(same_lease && row.state == State::Running && seen.insert(row.id)) {
            continue;
        }
        if let Err(e) = transition(row.state, to_core(row).pending_cancel, event) {
            out[i] = Some(Err(e.into()));
            continue;
        }
        items.push((
            row,
            Apply {
                event,
                message: p.outcome.message.clone().unwrap_or_default(),
                actor: &p.actor,
                exit_code: p.outcome.exit_code,
                signal: p.outcome.signal,
            },
        ));
        picked.push(i);
    }
    for (s, i) in settle_many(tx, items).await?.into_iter().zip(picked) {
        if let Some(s) = s {
            out[i] = Some(Ok(s));
        }
    }
    let mut answers = Vec::with_capacity(ps.len());
    for (p, answer) in ps.iter().zip(out) {
        answers.push(match answer {
            Some(a) => a,
            None => repeat_or_refuse(tx, p).await?,
        });
    }
    Ok(answers)
}

/// A completion that changed nothing: the same report again (answered as the first time,
/// with the retry it scheduled), or a report whose lease is lost (refused, with its event).
async fn repeat_or_refuse(
    tx: &mut dyn Conn,
    p: &CompleteParams,
) -> Result<std::result::Result<Settled, StoreError>> {
    let Some(row) = table::load(tx, p.lease.id).await? else {
        return Ok(Err(StoreError::ExecutionNotFound(p.lease.id)));
    };
    let same_lease = row.attempt == p.lease.attempt
        && row.lease_token.as_deref() == Some(p.lease.token.as_str());
    let repeat = same_lease
        && row.state == outcome_state(&p.outcome)
        && row.reason == p.outcome.reason
        && row.exit_code == p.outcome.exit_code;
    if repeat {
        let retry = table::next_attempt_of(tx, row.id, row.attempt).await?;
        return Ok(Ok(Settled {
            execution: row,
            retry,
            repeated: true,
        }));
    }
    let what = format!("completion ({})", describe_outcome(&p.outcome));
    refuse(tx, row.id, &p.actor, &what).await?;
    Ok(Err(StoreError::LeaseLost {
        id: row.id,
        state: row.state,
        reason: row.reason,
    }))
}

pub(crate) async fn cancel(tx: &mut dyn Conn, p: &CancelParams) -> Result<CancelOutcome> {
    let row = table::load(tx, p.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.id))?;
    if p.reason.state() != State::Cancelled {
        return Err(StoreError::Invalid(format!(
            "'{}' is not a cancel reason",
            p.reason
        )));
    }
    match row.state {
        State::Queued => match settle(
            tx,
            &row,
            Apply::new(Event::Cancel(p.reason), p.message.clone(), &p.actor),
        )
        .await?
        {
            Some(s) => Ok(CancelOutcome::Cancelled {
                execution: s.execution,
            }),
            None => Err(StoreError::Database(
                "execution changed during cancel".into(),
            )),
        },
        State::Running => {
            request_cancel(tx, &row, p.reason, &p.message, &p.actor).await?;
            let execution = table::load(tx, p.id)
                .await?
                .ok_or(StoreError::ExecutionNotFound(p.id))?;
            Ok(CancelOutcome::Requested { execution })
        }
        _ => Ok(CancelOutcome::AlreadyTerminal { execution: row }),
    }
}

/// Notes a change of phase reported for an execution.
pub(crate) async fn note_phase(
    tx: &mut dyn Conn,
    id: ExecutionId,
    phase: &str,
    actor: &str,
) -> Result<()> {
    let text = format!("phase: {phase}");
    event(
        tx,
        id,
        EventKind::Note,
        None,
        None,
        Some("phase"),
        &text,
        actor,
    )
    .await
}

pub(crate) async fn report_progress(
    tx: &mut dyn Conn,
    p: &ProgressParams,
) -> Result<std::result::Result<ExecutionRow, StoreError>> {
    let before = table::load(tx, p.lease.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.lease.id))?;
    if !table::cas_progress(
        tx,
        &p.lease,
        p.progress,
        p.phase.as_deref(),
        p.checkpoint.as_ref(),
    )
    .await?
    {
        let lost = refuse(tx, p.lease.id, &p.actor, "progress report").await?;
        return Ok(Err(StoreError::LeaseLost {
            id: p.lease.id,
            state: lost.state.unwrap_or(before.state),
            reason: lost.reason,
        }));
    }
    if let Some(phase) = &p.phase
        && before.phase.as_deref() != Some(phase.as_str())
    {
        note_phase(tx, p.lease.id, phase, &p.actor).await?;
    }
    let row = table::load(tx, p.lease.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.lease.id))?;
    Ok(Ok(row))
}

pub(crate) async fn release(tx: &mut dyn Conn, p: &ReleaseParams) -> Result<ReleaseReport> {
    let mut report = ReleaseReport::default();
    for lease in &p.leases {
        let row = table::load(tx, lease.id).await?;
        let current = row.as_ref().filter(|r| {
            r.state == State::Running
                && r.attempt == lease.attempt
                && r.lease_token.as_deref() == Some(lease.token.as_str())
                && r.lease_owner.as_deref() == Some(p.owner.as_str())
        });
        let Some(row) = current else {
            report
                .lost
                .push(refuse(tx, lease.id, &p.owner, "hand-back").await?);
            continue;
        };
        let a = Apply::new(
            Event::Finish(Reason::HandedBack),
            p.message.clone(),
            &p.actor,
        );
        let Some(mut settled) = settle(tx, row, a).await? else {
            continue;
        };
        // The next attempt starts at once and does not consume the retry budget.
        let note = format!(
            "handed back by {}: queued again at once as attempt {}",
            p.owner,
            row.attempt + 1
        );
        let budget = row.max_attempts.max(row.attempt + 1);
        let now = tx.now();
        settled.retry =
            queue_next_attempt(tx, &settled.execution, now, Some(budget), note, &p.actor).await?;
        report.released.push(settled);
    }
    Ok(report)
}

/// Where a settled run's process may still be (invariant 11: a record settled while its
/// process might be alive says so).
fn may_still_run(host: &str) -> String {
    format!("its process may still be alive on {host} until its owner learns the lease is lost")
}

fn reap_message(
    row: &ExecutionRow,
    d: Deadline,
    now: Timestamp,
    key_full: bool,
    host: &str,
) -> String {
    let owner = row.lease_owner.as_deref().unwrap_or("its owner");
    match d {
        Deadline::Lease => {
            let last = row.heartbeat_at.unwrap_or(row.queued_at);
            format!(
                "no heartbeat from {owner} since {} ({} ago); heartbeat timeout is {}; {}",
                ts(last),
                format_duration(between(last, now)),
                format_duration(row.timeouts.heartbeat),
                may_still_run(host)
            )
        }
        Deadline::Run => format!(
            "ran past its run timeout of {} (plus {} kill grace) and {owner} did not record an end; {}",
            format_duration(row.timeouts.run),
            format_duration(row.timeouts.kill_grace),
            may_still_run(host)
        ),
        Deadline::Queue if row.runner == jobward_core::EXTERNAL_RUNNER => format!(
            "missed: no start of this job (it runs outside jobward) within its grace of {} after its instant {}",
            format_duration(row.timeouts.queue),
            ts(row.scheduled_for.unwrap_or(row.run_after))
        ),
        Deadline::Queue => {
            let mut m = format!(
                "waited in queue since {}, longer than its queue timeout of {}",
                ts(row.run_after),
                format_duration(row.timeouts.queue)
            );
            if key_full && let Some(k) = &row.concurrency_key {
                m.push_str(&format!(" (concurrency key '{k}' stayed full)"));
            }
            m
        }
        Deadline::Cancel => format!(
            "{owner} did not confirm the cancel requested at {} ({}) by its deadline; {}",
            row.cancel_requested_at.map(ts).unwrap_or_default(),
            row.cancel_message.as_deref().unwrap_or("no message"),
            may_still_run(host)
        ),
    }
}

pub(crate) fn recovered(row: &ExecutionRow, s: &Settled) -> Recovered {
    Recovered {
        id: row.id,
        job: row.job.clone(),
        number: row.number,
        attempt: row.attempt,
        from: row.state,
        to: s.execution.state,
        reason: s.execution.reason.unwrap_or(Reason::ExitCode),
        message: s.execution.message.clone().unwrap_or_default(),
        lease_owner: row.lease_owner.clone(),
        node_id: row.node_id.clone(),
        last_heartbeat: row.heartbeat_at,
        retry: s.retry.as_ref().map(|r| r.id),
        runner: row.runner.clone(),
        scheduled_for: row.scheduled_for,
    }
}

/// The reaper's rule for rows selected as past a deadline: the earliest deadline decides.
pub(crate) async fn settle_due(
    tx: &mut dyn Conn,
    rows: Vec<ExecutionRow>,
    actor: &str,
) -> Result<Vec<Recovered>> {
    let now = tx.now();
    let mut due = Vec::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    for row in &rows {
        let Some(d) = to_core(row).due(now) else {
            continue;
        };
        let full = match (&row.concurrency_key, d) {
            (Some(k), Deadline::Queue) => table::key_full(tx, k).await?,
            _ => false,
        };
        let host = match &row.node_id {
            Some(node) => match hosts.get(node) {
                Some(h) => h.clone(),
                None => {
                    let h = table::node_host(tx, node)
                        .await?
                        .unwrap_or_else(|| format!("the host of node {node}"));
                    hosts.insert(node.clone(), h.clone());
                    h
                }
            },
            None => format!(
                "the host of worker '{}'",
                row.lease_owner.as_deref().unwrap_or("?")
            ),
        };
        let message = reap_message(row, d, now, full, &host);
        due.push((row, Apply::new(Event::Expire(d), message, actor)));
    }
    let rows: Vec<&ExecutionRow> = due.iter().map(|(r, _)| *r).collect();
    Ok(settle_many(tx, due)
        .await?
        .into_iter()
        .zip(rows)
        .filter_map(|(s, row)| s.map(|s| recovered(row, &s)))
        .collect())
}

/// `cleanup --apply`: settles each candidate through the same compare-and-set; candidates
/// that ended meanwhile are left alone (raced).
pub(crate) async fn cleanup_apply(
    tx: &mut dyn Conn,
    rows: &[ExecutionRow],
    p: &CleanupParams,
) -> Result<(Vec<Recovered>, Vec<ExecutionId>)> {
    let mut items = Vec::new();
    for row in rows {
        let note = match &p.process_notes {
            None => None,
            Some(notes) => match notes.get(&row.id) {
                Some(n) => Some(n),
                None => continue,
            },
        };
        let last = row.heartbeat_at.map(ts).unwrap_or_default();
        let mut message = format!(
            "settled by operator cleanup: no heartbeat since {last} (stale after {})",
            format_duration(p.stale_after)
        );
        if let Some(n) = note {
            message.push_str("; ");
            message.push_str(n);
        }
        items.push((row, Apply::new(Event::Cleanup, message, p.actor.as_str())));
    }
    let picked: Vec<&ExecutionRow> = items.iter().map(|(r, _)| *r).collect();
    let (mut changed, mut raced) = (Vec::new(), Vec::new());
    for (s, row) in settle_many(tx, items).await?.into_iter().zip(picked) {
        match s {
            Some(s) => changed.push(recovered(row, &s)),
            None => raced.push(row.id),
        }
    }
    Ok((changed, raced))
}

/// Settles what earlier incarnations of a node left (only rows still running under the
/// lease they had), and marks those incarnations stopped.
pub(crate) async fn settle_orphans(
    tx: &mut dyn Conn,
    p: &RecoverParams,
    orphans: &[(LeaseRef, String)],
    reason: Reason,
) -> Result<ReapReport> {
    let mut report = ReapReport::default();
    for (lease, message) in orphans {
        let Some(row) = table::load(tx, lease.id).await? else {
            continue;
        };
        if row.state != State::Running || row.lease_token.as_deref() != Some(lease.token.as_str()) {
            continue;
        }
        if let Some(s) = settle(
            tx,
            &row,
            Apply::new(Event::Finish(reason), message.clone(), &p.actor),
        )
        .await?
        {
            report.recovered.push(recovered(&row, &s));
        }
    }
    let why = format!("superseded by incarnation {}", p.node_id);
    table::stop_nodes(
        tx,
        StopNodes::AllNamedExcept {
            name: &p.name,
            except: &p.node_id,
        },
        &why,
    )
    .await?;
    Ok(report)
}

/// Makes the job table match a configuration: new jobs start at their next instant; a changed
/// schedule restarts its cursor; jobs gone from the configuration stop firing and keep their
/// history.
pub(crate) async fn sync_jobs(tx: &mut dyn Conn, p: &SyncJobs) -> Result<SyncReport> {
    let now = tx.now();
    let existing: HashMap<String, super::StoredJob> = table::stored_jobs(tx)
        .await?
        .into_iter()
        .map(|j| (j.name.clone(), j))
        .collect();
    let mut report = SyncReport::default();
    let mut seen = HashSet::new();
    for job in &p.jobs {
        seen.insert(job.name.clone());
        let spec_json =
            serde_json::to_string(job).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sched_json = serde_json::to_string(&job.schedule.spec())
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let first = first_fire(&job.schedule, now);
        match existing.get(&job.name) {
            Some(old) if old.source == JobSource::Api && old.defined => {
                return Err(StoreError::JobOwnedByApi(job.name.clone()));
            }
            None => {
                table::insert_job(
                    tx,
                    &job.name,
                    &spec_json,
                    &sched_json,
                    first,
                    JobSource::File,
                    None,
                )
                .await?;
                report.added.push(job.name.clone());
            }
            Some(old)
                if old.spec_json != spec_json || !old.defined || old.source != JobSource::File =>
            {
                let reset = old.schedule_json != sched_json || !old.defined;
                table::update_job(
                    tx,
                    &job.name,
                    &spec_json,
                    &sched_json,
                    reset,
                    first,
                    JobSource::File,
                )
                .await?;
                report.changed.push(job.name.clone());
            }
            Some(_) => report.unchanged += 1,
        }
    }
    // Jobs of the API are the API's: a configuration never removes them.
    let mut removed: Vec<String> = existing
        .values()
        .filter(|j| j.defined && j.source == JobSource::File && !seen.contains(&j.name))
        .map(|j| j.name.clone())
        .collect();
    removed.sort();
    for name in &removed {
        table::undefine_job(tx, name).await?;
    }
    report.removed = removed;
    if let Some((key, _)) = p.limits.iter().find(|(_, v)| **v == 0) {
        return Err(StoreError::Invalid(format!(
            "concurrency limit of '{key}' must be at least 1"
        )));
    }
    table::replace_limits(tx, &p.limits).await?;
    Ok(report)
}

/// Records a new incarnation, unless another live one holds the name (incarnations the caller
/// proved dead are marked stopped first).
pub(crate) async fn register_node(tx: &mut dyn Conn, node: &NewNode) -> Result<RegisterOutcome> {
    for old in &node.supersede {
        let why = format!("found dead by its successor {}", node.id);
        table::stop_nodes(
            tx,
            StopNodes::One {
                id: old,
                name: Some(&node.name),
            },
            &why,
        )
        .await?;
    }
    if let Some(n) = table::live_node_named(tx, &node.name, &node.id).await? {
        return Ok(RegisterOutcome::NameInUse {
            node_id: n.id,
            hostname: n.hostname,
            pid: n.pid,
            start_ticks: n.start_ticks,
            boot_id: n.boot_id,
            heartbeat_at: n.heartbeat_at,
            lease_expires_at: n.lease_expires_at,
        });
    }
    table::insert_node(tx, node).await?;
    Ok(RegisterOutcome::Registered)
}

/// Settles the executions of nodes whose lease expired (reason `node_lost`) and marks those
/// nodes stopped, so that if one comes back it learns it was replaced and stops its processes.
/// Leases held by remote workers are not the node's and are left alone.
pub(crate) async fn settle_lost_nodes(
    tx: &mut dyn Conn,
    actor: &str,
    own: Option<&str>,
) -> Result<ReapReport> {
    let mut report = ReapReport::default();
    for node in table::expired_nodes(tx)
        .await?
        .into_iter()
        .filter(|n| Some(n.id.as_str()) != own)
    {
        let message = format!(
            "node '{}' (incarnation {}, pid {} on {}) stopped heartbeating at {}; settled by {actor}; {}",
            node.name,
            node.id,
            node.pid,
            node.hostname,
            ts(node.heartbeat_at),
            may_still_run(&node.hostname)
        );
        for row in table::running_on_node(tx, &node.id).await? {
            if let Some(s) = settle(
                tx,
                &row,
                Apply::new(Event::Finish(Reason::NodeLost), message.clone(), actor),
            )
            .await?
            {
                report.recovered.push(recovered(&row, &s));
            }
        }
        let why = format!(
            "lost: no heartbeat since {}; settled by {actor}",
            ts(node.heartbeat_at)
        );
        table::stop_nodes(
            tx,
            StopNodes::One {
                id: &node.id,
                name: None,
            },
            &why,
        )
        .await?;
    }
    Ok(report)
}

/// A claimable execution, as much of it as choosing needs.
struct Candidate {
    id: i64,
    attempt: u32,
    job: String,
    concurrency_key: Option<String>,
    overlap: Overlap,
    state: State,
}

/// Takes up to `limit` claimable executions, honouring concurrency limits and overlap.
pub(crate) async fn claim(tx: &mut dyn Conn, p: &ClaimParams) -> Result<Vec<ExecutionRow>> {
    if p.limit == 0 {
        return Ok(vec![]);
    }
    let now = tx.now();
    let limit = i64::from(p.limit) + i64::from(p.limit / 4) + 1;
    let mut args: Vec<Arg<'_>> = vec![p.runner.as_str().into(), now.into(), limit.into()];
    // A claimer is offered only what it can run: command jobs if it runs commands, handler
    // jobs (no command) only by the names it has handlers for.
    let serves = match &p.serves {
        Serves::All => String::new(),
        Serves::Only { commands, handlers } => {
            let mut any = Vec::new();
            if *commands {
                any.push("e.command <> ''".to_string());
            }
            if !handlers.is_empty() {
                let marks: Vec<String> = handlers
                    .iter()
                    .map(|h| {
                        args.push(h.as_str().into());
                        format!("${}", args.len())
                    })
                    .collect();
                any.push(format!(
                    "(e.command = '' AND e.job IN ({}))",
                    marks.join(", ")
                ));
            }
            if any.is_empty() {
                return Ok(vec![]);
            }
            format!("AND ({}) ", any.join(" OR "))
        }
    };
    // Candidates are taken with SKIP LOCKED, so concurrent claimers never wait for each
    // other's rows. The occupancy filter here is only a hint; the authority is the per-key
    // row lock below (SQLite has one writer: the hint is already exact).
    let sql = format!(
        "WITH c AS (SELECT e.id FROM executions e WHERE e.state = 'queued' AND e.runner = $1 \
           AND e.run_after <= $2 {serves}\
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.name = e.job AND j.paused) \
           AND (e.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM concurrency_limits l \
                WHERE l.key = e.concurrency_key AND (SELECT count(*) FROM executions r \
                WHERE r.state = 'running' AND r.concurrency_key = e.concurrency_key) >= l.max_running)) \
           AND (e.overlap <> 'queue' OR NOT EXISTS (SELECT 1 FROM executions r \
                WHERE r.job = e.job AND r.finished_at IS NULL AND r.state = 'running')) \
           ORDER BY e.priority DESC, e.run_after, e.id LIMIT $3 /*pg: FOR UPDATE SKIP LOCKED*/) \
         SELECT id, attempt, job, concurrency_key, overlap, state FROM executions \
         WHERE id IN (SELECT id FROM c) ORDER BY priority DESC, run_after, id"
    );
    // Only what the choice needs: the chosen rows come back whole from the claim itself. A
    // few spare candidates for the ones a full key or a busy queue skips; more would lock
    // rows (on PostgreSQL) that other claimers could take.
    let candidates = tx
        .fetch(&sql, &args)
        .await?
        .iter()
        .map(|r| {
            Ok(Candidate {
                id: r.i64(0)?,
                attempt: r.i64(1)? as u32,
                job: r.text(2)?,
                concurrency_key: r.opt_text(3)?,
                overlap: crate::rows::parse("overlap", &r.text(4)?)?,
                state: crate::rows::parse("state", &r.text(5)?)?,
            })
        })
        .collect::<Result<Vec<Candidate>>>()?;
    // Occupancy per key, read once under the key's row lock and counted up as this batch
    // claims: a slot is counted from the running rows (invariant 3).
    let mut slots: HashMap<String, Option<(i64, i64)>> = HashMap::new();
    let mut queue_jobs: HashMap<String, bool> = HashMap::new();
    let mut chosen = Vec::new();
    for row in candidates {
        if chosen.len() as u32 >= p.limit {
            break;
        }
        if let Some(key) = &row.concurrency_key {
            if !slots.contains_key(key) {
                let occupancy = table::key_occupancy(tx, key).await?;
                slots.insert(key.clone(), occupancy);
            }
            if let Some(Some((limit, running))) = slots.get(key)
                && running >= limit
            {
                continue;
            }
        }
        if row.overlap == Overlap::Queue {
            if !queue_jobs.contains_key(&row.job) {
                let busy = table::job_busy(tx, &row.job).await?;
                queue_jobs.insert(row.job.clone(), busy);
            }
            if queue_jobs.insert(row.job.clone(), true) == Some(true) {
                continue;
            }
        }
        transition(row.state, None, Event::Claim)?;
        if let Some(Some((_, running))) =
            row.concurrency_key.as_ref().and_then(|k| slots.get_mut(k))
        {
            *running += 1;
        }
        chosen.push(row);
    }
    take_leases(tx, &chosen, p).await
}

/// Gives each chosen queued execution its lease (one statement for all) and writes their
/// events (one more). A row that is no longer queued is left out.
async fn take_leases(
    tx: &mut dyn Conn,
    chosen: &[Candidate],
    p: &ClaimParams,
) -> Result<Vec<ExecutionRow>> {
    take_leases_for(tx, chosen, p, None).await
}

/// `take_leases` with a lease of `lease` instead of the heartbeat timeout: an owner that
/// cannot heartbeat, nor stop anything (a start ping). Its run deadline is the run timeout
/// itself: there is no process to give a kill grace to.
async fn take_leases_for(
    tx: &mut dyn Conn,
    chosen: &[Candidate],
    p: &ClaimParams,
    lease: Option<std::time::Duration>,
) -> Result<Vec<ExecutionRow>> {
    if chosen.is_empty() {
        return Ok(vec![]);
    }
    let now = tx.now();
    let ids: Vec<i64> = chosen.iter().map(|r| r.id).collect();
    let batch: Vec<serde_json::Value> = chosen
        .iter()
        .map(|r| {
            serde_json::json!({
                "bid": r.id,
                "battempt": r.attempt,
                "btoken": uuid::Uuid::new_v4().to_string(),
            })
        })
        .collect();
    let batch = serde_json::Value::Array(batch).to_string();
    let source = crate::sql::batch(
        tx.dialect(),
        1,
        &[
            ("bid", "bigint"),
            ("battempt", "bigint"),
            ("btoken", "text"),
        ],
    );
    let sql = format!(
        "UPDATE executions SET state = 'running', started_at = $2, heartbeat_at = $2, \
         lease_owner = $3, lease_token = v.btoken, \
         lease_expires_at = $2 + COALESCE($7, heartbeat_timeout_ms), \
         run_deadline = $2 + run_timeout_ms + CASE WHEN $7 IS NULL THEN kill_grace_ms + $4 ELSE 0 END, \
         node_id = $5 \
         FROM {source} \
         WHERE /*pg: id = ANY($6) AND*/ id = v.bid AND /*sqlite: +*/state = 'queued' \
           AND attempt = v.battempt AND lease_token IS NULL \
         RETURNING {}",
        crate::rows::EXEC_COLUMNS
    );
    let mut claimed = crate::rows::executions(
        tx.fetch(
            &sql,
            &[
                batch.as_str().into(),
                now.into(),
                p.owner.as_str().into(),
                crate::rows::dur_ms(jobward_core::deadline::OWNER_MARGIN).into(),
                p.node_id.as_deref().into(),
                Arg::Ints(&ids),
                lease.map(crate::rows::dur_ms).into(),
            ],
        )
        .await?,
    )?;
    claimed.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.run_after, r.id));
    let texts: Vec<String> = claimed
        .iter()
        .map(|r| {
            format!(
                "claimed by {} (lease until {})",
                p.owner,
                r.lease_expires_at.map(ts).unwrap_or_default()
            )
        })
        .collect();
    let events: Vec<NewEvent<'_>> = claimed
        .iter()
        .zip(&texts)
        .map(|(r, text)| NewEvent {
            id: r.id,
            kind: EventKind::Transition,
            from: Some(State::Queued),
            to: Some(State::Running),
            reason: None,
            message: text,
            actor: &p.owner,
        })
        .collect();
    table::events(tx, &events).await?;
    Ok(claimed)
}

/// A run outside jobward starts: it takes its job's due instant (an external job's schedule
/// queued it, waiting for this start within its grace), or a new execution of trigger
/// `external` under the job's overlap policy (`queue` counts as `allow`: the run is already
/// happening), and its lease, in one transaction.
pub(crate) async fn start_external(tx: &mut dyn Conn, p: &StartExternal) -> Result<StartOutcome> {
    let Some(JobState { spec, defined, .. }) = table::load_job(tx, &p.job, false).await? else {
        return Err(StoreError::JobNotFound(p.job.clone()));
    };
    if !defined {
        return Err(StoreError::JobUndefined(p.job.clone()));
    }
    let key = p.run_id.as_deref().map(StartExternal::run_key);
    if let Some(k) = &key
        && let Some(row) = table::by_idempotency_key(tx, &p.job, k).await?
    {
        return Ok(match row.state {
            State::Skipped => StartOutcome::Skipped(row),
            _ => StartOutcome::Started(row),
        });
    }
    let row = match table::due_external(tx, &p.job).await? {
        Some(row) => row,
        None => {
            let mut spec = spec.clone();
            spec.external = true;
            if spec.overlap == Overlap::Queue {
                spec.overlap = Overlap::Allow;
            }
            let origin = Origin {
                trigger: Trigger::External,
                scheduled_for: None,
                payload: None,
                idempotency_key: key.as_deref(),
                run_after: None,
                priority: None,
                note: format!("started outside jobward: {}", p.note),
            };
            let created = create_with_overlap(tx, &spec, origin, &p.actor).await?;
            if created.execution.state == State::Skipped {
                return Ok(StartOutcome::Skipped(created.execution));
            }
            created.execution
        }
    };
    let claim = ClaimParams {
        owner: p.owner.clone(),
        runner: row.runner.clone(),
        node_id: None,
        limit: 1,
        serves: Serves::All,
    };
    let chosen = [Candidate {
        id: row.id,
        attempt: row.attempt,
        job: row.job.clone(),
        concurrency_key: row.concurrency_key.clone(),
        overlap: row.overlap,
        state: row.state,
    }];
    transition(row.state, None, Event::Claim)?;
    let mut taken = take_leases_for(tx, &chosen, &claim, p.lease).await?;
    let started = taken.pop().ok_or_else(|| {
        StoreError::Database(format!("execution {} changed while starting", row.id))
    })?;
    if row.trigger != Trigger::External {
        let text = format!("started outside jobward: {}", p.note);
        event(
            tx,
            started.id,
            EventKind::Note,
            None,
            None,
            None,
            &text,
            &p.actor,
        )
        .await?;
    }
    Ok(StartOutcome::Started(started))
}

/// Marks the running executions past the upper bound of their expected duration as overdue,
/// once each (the compare-and-set on `overdue_at IS NULL` makes one node's mark the only one),
/// with a note; they keep running (`run_timeout` is what stops a run).
pub(crate) async fn flag_overdue(tx: &mut dyn Conn, actor: &str) -> Result<Vec<ExecutionRow>> {
    let now = tx.now();
    let rows = crate::rows::executions(
        tx.fetch(
            &format!(
                "UPDATE executions SET overdue_at = $1 WHERE id IN (SELECT id FROM executions \
                 WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL AND overdue_at IS NULL \
                 AND state = 'running' AND started_at + expected_max_ms <= $1 LIMIT 1000) \
                 AND overdue_at IS NULL RETURNING {}",
                crate::rows::EXEC_COLUMNS
            ),
            &[now.into()],
        )
        .await?,
    )?;
    let texts: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "overdue: running for {}, longer than its expected {} (it is not stopped: its run timeout is {})",
                format_duration(r.started_at.map(|s| between(s, now)).unwrap_or_default()),
                r.expected_duration.map(|b| b.to_string()).unwrap_or_default(),
                format_duration(r.timeouts.run)
            )
        })
        .collect();
    let events: Vec<NewEvent<'_>> = rows
        .iter()
        .zip(&texts)
        .map(|(r, text)| NewEvent {
            id: r.id,
            kind: EventKind::Note,
            from: None,
            to: None,
            reason: None,
            message: text,
            actor,
        })
        .collect();
    table::events(tx, &events).await?;
    Ok(rows)
}

/// Records the process an owner started; refused when the lease is no longer current.
pub(crate) async fn record_process(
    tx: &mut dyn Conn,
    lease: &LeaseRef,
    process: &ProcessInfo,
) -> Result<()> {
    if !table::set_process(tx, lease, process).await? {
        let row = table::load(tx, lease.id)
            .await?
            .ok_or(StoreError::ExecutionNotFound(lease.id))?;
        return Err(StoreError::LeaseLost {
            id: lease.id,
            state: row.state,
            reason: row.reason,
        });
    }
    let text = format!(
        "process started: pid {} in process group {}",
        process.pid, process.pgid
    );
    event(
        tx,
        lease.id,
        EventKind::Note,
        None,
        None,
        None,
        &text,
        "executor",
    )
    .await
}

/// Renews many leases (and a node's own lease) at once: one statement for the whole batch.
pub(crate) async fn heartbeat(tx: &mut dyn Conn, p: &HeartbeatParams) -> Result<HeartbeatReport> {
    let mut report = HeartbeatReport {
        node_ok: true,
        ..Default::default()
    };
    // The leases first, the node's own row and the shared liveness row last: a beat that
    // waits for an execution row (its owner frozen inside its own completion, say) then
    // holds neither, so the other nodes can still find this node lost and settle it.
    if !p.leases.is_empty() {
        renew_leases(tx, p, &mut report).await?;
    }
    if let Some((node_id, lease)) = &p.node {
        report.node_ok = table::node_beat(tx, node_id, *lease).await?;
    }
    Ok(report)
}

async fn renew_leases(
    tx: &mut dyn Conn,
    p: &HeartbeatParams,
    report: &mut HeartbeatReport,
) -> Result<()> {
    let now = tx.now();
    let batch: Vec<serde_json::Value> = p
        .leases
        .iter()
        .map(|b| {
            serde_json::json!({
                "bid": b.lease.id,
                "battempt": b.lease.attempt,
                "btoken": b.lease.token,
                "bprogress": b.progress,
                "bphase": b.phase,
                "bcheckpoint": b.checkpoint.as_ref().map(|c| c.to_string()),
            })
        })
        .collect();
    let batch = serde_json::Value::Array(batch).to_string();
    let source = crate::sql::batch(
        tx.dialect(),
        3,
        &[
            ("bid", "bigint"),
            ("battempt", "bigint"),
            ("btoken", "text"),
            ("bprogress", "float8"),
            ("bphase", "text"),
            ("bcheckpoint", "text"),
        ],
    );
    let phased: HashMap<i64, Option<String>> = if p.leases.iter().any(|b| b.phase.is_some()) {
        let ids = crate::sql::batch(tx.dialect(), 1, &[("bid", "bigint"), ("bphase", "text")]);
        let sql = format!(
            "SELECT id, phase FROM executions WHERE id IN (SELECT bid FROM {ids} WHERE bphase IS NOT NULL)"
        );
        tx.fetch(&sql, &[batch.as_str().into()])
            .await?
            .iter()
            .map(|r| Ok((r.i64(0)?, r.opt_text(1)?)))
            .collect::<Result<_>>()?
    } else {
        HashMap::new()
    };
    let sql = format!(
        "UPDATE executions SET heartbeat_at = $1, lease_expires_at = $1 + heartbeat_timeout_ms, \
         progress = COALESCE(v.bprogress, progress), phase = COALESCE(v.bphase, phase), \
         checkpoint = COALESCE(v.bcheckpoint, checkpoint) \
         FROM {source} \
         WHERE /*pg: id = ANY($4) AND*/ id = v.bid AND attempt = v.battempt AND lease_token = v.btoken \
           AND /*sqlite: +*/state = 'running' AND lease_owner = $2 \
         RETURNING id, cancel_reason, phase"
    );
    let ids: Vec<i64> = p.leases.iter().map(|b| b.lease.id).collect();
    let renewed = tx
        .fetch(
            &sql,
            &[
                now.into(),
                p.owner.as_str().into(),
                batch.as_str().into(),
                Arg::Ints(&ids),
            ],
        )
        .await?;
    for r in &renewed {
        let id = r.i64(0)?;
        report.renewed.push(id);
        if let Some(reason) = r.opt_text(1)?.and_then(|c| c.parse::<Reason>().ok()) {
            report.cancel_requested.push((id, reason));
        }
        if let (Some(old), Some(new)) = (phased.get(&id), r.opt_text(2)?)
            && old.as_deref() != Some(new.as_str())
        {
            note_phase(tx, id, &new, &p.owner).await?;
        }
    }
    let renewed: HashSet<i64> = report.renewed.iter().copied().collect();
    for b in p.leases.iter().filter(|b| !renewed.contains(&b.lease.id)) {
        report
            .lost
            .extend(not_renewed(tx, &b.lease, &p.owner).await?);
    }
    Ok(())
}

/// The reaper's selection of live executions past a deadline (`$1` = now, `$2` = batch). Each
/// branch reads one partial index over live rows only, so the cost follows what is due, not
/// the size of the history. A lease counts from when the ledger was last reachable for every
/// owner (an outage alone expires none). Public so that benchmarks can show its query plan.
pub const REAPER_DUE: &str = "WHERE id IN ( \
    SELECT id FROM executions WHERE state = 'running' AND cancel_deadline <= $1 \
    UNION SELECT id FROM executions WHERE state = 'running' AND run_deadline <= $1 \
    UNION SELECT id FROM executions WHERE state = 'running' AND lease_expires_at <= $1 \
          AND (SELECT alive_since FROM ledger_liveness) + heartbeat_timeout_ms <= $1 \
          /*pg: AND jw_ms(pg_postmaster_start_time()) + heartbeat_timeout_ms <= $1*/ \
    UNION SELECT id FROM executions WHERE state = 'queued' AND start_deadline <= $1 \
    ) ORDER BY id LIMIT $2";

/// One reaper batch: settles up to `batch` executions past a deadline.
pub(crate) async fn reap_batch(
    tx: &mut dyn Conn,
    actor: &str,
    batch: u32,
) -> Result<Vec<Recovered>> {
    let now = tx.now();
    let sql = format!(
        "SELECT {} FROM executions {REAPER_DUE} /*pg: FOR UPDATE SKIP LOCKED*/",
        crate::rows::EXEC_COLUMNS
    );
    let due = crate::rows::executions(
        tx.fetch(&sql, &[now.into(), i64::from(batch.max(1)).into()])
            .await?,
    )?;
    settle_due(tx, due, actor).await
}

/// Terminal executions of one job beyond its history limits, deleted with their events (one
/// batch per criterion). Returns the deleted ids.
pub(crate) async fn prune_job(
    tx: &mut dyn Conn,
    job: &str,
    history: &jobward_core::History,
    batch: u32,
) -> Result<Vec<ExecutionId>> {
    let now = tx.now();
    let mut deleted = Vec::new();
    if let Some(keep) = history.keep_last {
        deleted.extend(
            tx.fetch(
                "DELETE FROM executions WHERE id IN (SELECT id FROM executions WHERE job = $1 \
                 AND finished_at IS NOT NULL ORDER BY id DESC LIMIT $2 OFFSET $3) RETURNING id",
                &[job.into(), i64::from(batch).into(), i64::from(keep).into()],
            )
            .await?
            .iter()
            .map(|r| r.i64(0))
            .collect::<Result<Vec<_>>>()?,
        );
    }
    if let Some(age) = history.max_age {
        deleted.extend(
            tx.fetch(
                "DELETE FROM executions WHERE id IN (SELECT id FROM executions WHERE job = $1 \
                 AND finished_at IS NOT NULL AND finished_at < $2 LIMIT $3) RETURNING id",
                &[
                    job.into(),
                    jobward_core::deadline::sub(now, age).into(),
                    i64::from(batch).into(),
                ],
            )
            .await?
            .iter()
            .map(|r| r.i64(0))
            .collect::<Result<Vec<_>>>()?,
        );
    }
    Ok(deleted)
}

/// Pauses or resumes a job; the change is recorded with its actor.
pub(crate) async fn set_paused(
    tx: &mut dyn Conn,
    name: &str,
    paused: bool,
    actor: &str,
) -> Result<()> {
    if !table::set_paused(tx, name, paused).await? {
        return Err(StoreError::JobNotFound(name.to_string()));
    }
    let action = if paused { "paused" } else { "resumed" };
    table::job_change(tx, name, actor, action, None, None).await
}

/// Stops an incarnation (graceful shutdown).
pub(crate) async fn stop_node(tx: &mut dyn Conn, id: &str, reason: &str) -> Result<()> {
    table::stop_nodes(tx, StopNodes::One { id, name: None }, reason).await
}

/// Serialises `sync_jobs` across nodes starting together, then syncs.
pub(crate) async fn sync_jobs_locked(tx: &mut dyn Conn, p: &SyncJobs) -> Result<SyncReport> {
    tx.lock("jobward:sync").await?;
    sync_jobs(tx, p).await
}

/// Creates or replaces a job defined through the API. A job the configuration file defines is
/// the file's: it is refused. The change is recorded with its actor, before and after.
pub(crate) async fn put_job(tx: &mut dyn Conn, p: &PutJob) -> Result<PutJobReport> {
    tx.lock("jobward:sync").await?;
    let spec_json =
        serde_json::to_string(&p.spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let sched_json = serde_json::to_string(&p.spec.schedule.spec())
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let first = first_fire(&p.spec.schedule, tx.now());
    let name = p.spec.name.as_str();
    if let Some(k) = &p.spec.concurrency_key
        && !table::key_has_limit(tx, k).await?
    {
        return Err(StoreError::Invalid(format!(
            "field 'concurrency_key': '{k}' has no limit in the configuration's [concurrency] (add: {k} = 1)"
        )));
    }
    let old = table::stored_job(tx, name).await?;
    let report = match &old {
        Some(old) if old.source == JobSource::File && old.defined => {
            return Err(StoreError::JobOwnedByFile(name.to_string()));
        }
        None => {
            table::insert_job(
                tx,
                name,
                &spec_json,
                &sched_json,
                first,
                JobSource::Api,
                Some(&p.actor),
            )
            .await?;
            PutJobReport {
                created: true,
                before: None,
            }
        }
        Some(old) => {
            let reset = old.schedule_json != sched_json || !old.defined;
            table::update_job(
                tx,
                name,
                &spec_json,
                &sched_json,
                reset,
                first,
                JobSource::Api,
            )
            .await?;
            PutJobReport {
                created: !old.defined,
                before: if old.defined {
                    serde_json::from_str(&old.spec_json).ok()
                } else {
                    None
                },
            }
        }
    };
    let action = match (report.created, p.partial) {
        (true, _) => "created",
        (false, true) => "changed",
        (false, false) => "replaced",
    };
    let before = old.filter(|o| o.defined).map(|o| o.spec_json);
    table::job_change(
        tx,
        name,
        &p.actor,
        action,
        before.as_deref(),
        Some(&spec_json),
    )
    .await?;
    Ok(report)
}

/// Deletes a job defined through the API: it stops firing and cannot be triggered; its
/// history stays (per retention). Refused while it has live executions, unless asked to
/// cancel them.
pub(crate) async fn delete_job(tx: &mut dyn Conn, p: &DeleteJob) -> Result<DeleteJobReport> {
    tx.lock("jobward:sync").await?;
    let Some(old) = table::stored_job(tx, &p.name).await? else {
        return Err(StoreError::JobNotFound(p.name.clone()));
    };
    if !old.defined {
        return Err(StoreError::JobUndefined(p.name.clone()));
    }
    if old.source == JobSource::File {
        return Err(StoreError::JobOwnedByFile(p.name.clone()));
    }
    let live = table::live_of_job(tx, &p.name).await?;
    if !live.is_empty() && !p.cancel {
        return Err(StoreError::JobBusy {
            name: p.name.clone(),
            live: live.len(),
        });
    }
    let mut report = DeleteJobReport::default();
    let message = format!("job '{}' was deleted by {}", p.name, p.actor);
    for row in &live {
        let done = match row.state {
            State::Queued => settle(
                tx,
                row,
                Apply::new(
                    Event::Cancel(Reason::CancelRequested),
                    message.clone(),
                    &p.actor,
                ),
            )
            .await?
            .is_some(),
            _ => request_cancel(tx, row, Reason::CancelRequested, &message, &p.actor).await?,
        };
        if done {
            report.cancelled.push(row.id);
        }
    }
    table::undefine_job(tx, &p.name).await?;
    table::job_change(tx, &p.name, &p.actor, "deleted", Some(&old.spec_json), None).await?;
    Ok(report)
}

/// An operator's "retry now": the next attempt of a failed, timed-out or cancelled execution,
/// queued at once and linked to it (`retry_of`), with its payload and checkpoint, its command
/// and limits; its attempt budget is raised when the policy had none left. Refused when a
/// retry of it exists already.
pub(crate) async fn retry_now(tx: &mut dyn Conn, p: &RetryNow) -> Result<ExecutionRow> {
    let row = table::load(tx, p.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.id))?;
    if !matches!(
        row.state,
        State::Failed | State::TimedOut | State::Cancelled
    ) {
        return Err(StoreError::Invalid(format!(
            "execution {} is {}: only a failed, timed-out or cancelled execution can be retried",
            row.id, row.state
        )));
    }
    let Some(JobState { spec, defined, .. }) = table::load_job(tx, &row.job, false).await? else {
        return Err(StoreError::JobNotFound(row.job.clone()));
    };
    if !defined {
        return Err(StoreError::JobUndefined(row.job.clone()));
    }
    if let Some(next) = table::retry_of(tx, row.id).await? {
        return Err(StoreError::Invalid(format!(
            "execution {} already has a retry: execution {next}",
            row.id
        )));
    }
    let attempt = row.attempt + 1;
    let new = NewExecution {
        number: Some(row.number),
        attempt,
        retry_of: Some(row.id),
        payload: row.payload.as_ref(),
        from_previous: Some(&row),
        max_attempts: Some(row.max_attempts.max(attempt)),
        checkpoint: row.checkpoint.as_ref(),
        ..NewExecution::first(
            &spec,
            Trigger::Retry,
            tx.now(),
            format!(
                "retried now by {} (after attempt {} {})",
                p.actor, row.attempt, row.state
            ),
            &p.actor,
        )
    };
    insert_execution(tx, new).await
}

/// Moves a queued execution's start (a delayed run) to another time; its start deadline is
/// counted from the new time.
pub(crate) async fn reschedule(tx: &mut dyn Conn, p: &Reschedule) -> Result<ExecutionRow> {
    let row = table::load(tx, p.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.id))?;
    if row.state != State::Queued {
        return Err(StoreError::Invalid(format!(
            "execution {} is {}: only a queued execution can be rescheduled",
            row.id, row.state
        )));
    }
    let run_after = p.run_at.max(tx.now());
    let deadline = row.timeouts.start_deadline(run_after);
    if !table::set_run_after(tx, &row, run_after, deadline).await? {
        return Err(StoreError::Database(
            "execution changed during reschedule".into(),
        ));
    }
    let text = format!("rescheduled by {} to {}", p.actor, ts(run_after));
    event(
        tx,
        row.id,
        EventKind::Note,
        Some(State::Queued),
        Some(State::Queued),
        None,
        &text,
        &p.actor,
    )
    .await?;
    tx.notify_work(&row.runner, 1).await?;
    table::load(tx, p.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(p.id))
}

/// Most instants one backfill fires.
pub const MAX_BACKFILL: usize = 1000;

/// Fires each instant of a job's schedule in [from, to] that has no execution yet (invariant
/// 9: an instant that has one is left alone), under the job's overlap policy.
pub(crate) async fn backfill(tx: &mut dyn Conn, p: &Backfill) -> Result<BackfillReport> {
    let Some(job) = table::load_job(tx, &p.job, true).await? else {
        return Err(StoreError::JobNotFound(p.job.clone()));
    };
    if !job.defined {
        return Err(StoreError::JobUndefined(p.job.clone()));
    }
    if job.paused {
        return Err(StoreError::Invalid(format!(
            "job '{}' is paused; resume it to backfill",
            p.job
        )));
    }
    if p.from > p.to {
        return Err(StoreError::Invalid("from is after to".into()));
    }
    // Only instants that are due can have been missed: a later one is the scheduler's.
    let to = p.to.min(tx.now());
    let mut instants = Vec::new();
    let mut t = job
        .spec
        .schedule
        .next_after(p.from - chrono::TimeDelta::milliseconds(1));
    while let Some(at) = t.filter(|at| *at <= to) {
        instants.push(at);
        if instants.len() > MAX_BACKFILL {
            return Err(StoreError::Invalid(format!(
                "the range holds more than {MAX_BACKFILL} instants of job '{}'; backfill a shorter range",
                p.job
            )));
        }
        t = job.spec.schedule.next_after(at);
    }
    if instants.is_empty() && matches!(job.spec.schedule, jobward_core::Schedule::Manual) {
        return Err(StoreError::Invalid(format!(
            "job '{}' has no schedule to backfill",
            p.job
        )));
    }
    let mut report = BackfillReport::default();
    for at in instants {
        if table::fired_already(tx, &p.job, at).await? {
            report.already += 1;
            continue;
        }
        let origin = Origin {
            trigger: Trigger::Backfill,
            scheduled_for: Some(at),
            payload: None,
            idempotency_key: None,
            run_after: None,
            priority: None,
            note: format!("backfilled by {} for {}", p.actor, ts(at)),
        };
        let c = create_with_overlap(tx, &job.spec, origin, &p.actor).await?;
        report.created.push(c.execution.id);
    }
    Ok(report)
}
