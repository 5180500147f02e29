//! Write steps shared by the SQLite operations. Each runs inside the caller's transaction,
//! which began with `BEGIN IMMEDIATE`, so a read followed by a write here cannot race another
//! writer.

use jobward_core::{Event, JobSpec, Overlap, Reason, State, Timestamp, deadline, transition};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteQueryResult;

use super::rows::{EXEC_COLUMNS, ExecRecord, dur_ms, ms, to_core};
use super::sql;
use crate::error::{corrupt, ts};
use crate::types::*;
use crate::{Result, StoreError};

pub(crate) async fn load(
    conn: &mut SqliteConnection,
    id: ExecutionId,
) -> Result<Option<ExecutionRow>> {
    let rec: Option<ExecRecord> = sqlx::query_as(sql(format!(
        "SELECT {EXEC_COLUMNS} FROM executions WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    rec.map(ExecRecord::into_row).transpose()
}

pub(crate) async fn load_job(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<(JobSpec, bool, bool)>> {
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT spec, defined, paused FROM jobs WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(spec, defined, paused)| {
        let spec: JobSpec = serde_json::from_str(&spec)
            .map_err(|e| corrupt(format!("job '{name}' definition: {e}")))?;
        Ok((spec, defined == 1, paused == 1))
    })
    .transpose()
}

/// Appends one event (invariant 6).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn event(
    conn: &mut SqliteConnection,
    now: Timestamp,
    id: ExecutionId,
    kind: EventKind,
    from: Option<State>,
    to: Option<State>,
    reason: Option<&str>,
    message: &str,
    actor: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (execution_id, at, kind, from_state, to_state, reason, message, actor) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(ms(now))
    .bind(kind.as_str())
    .bind(from.map(State::as_str))
    .bind(to.map(State::as_str))
    .bind(reason)
    .bind(message)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes the `refused` event for a report whose lease is not (or no longer) the reporter's,
/// and says what the execution is now. Nothing else changes.
pub(crate) async fn refuse(
    conn: &mut SqliteConnection,
    now: Timestamp,
    id: ExecutionId,
    reporter: &str,
    what: &str,
) -> Result<LostLease> {
    let row = load(conn, id).await?;
    let (state, reason) = row
        .as_ref()
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
            conn,
            now,
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
    pub note: String,
    pub actor: &'a str,
}

async fn next_number(conn: &mut SqliteConnection, job: &str) -> Result<i64> {
    let n: Option<i64> = sqlx::query_scalar(
        "UPDATE jobs SET next_number = next_number + 1 WHERE name = ? RETURNING next_number - 1",
    )
    .bind(job)
    .fetch_optional(&mut *conn)
    .await?;
    n.ok_or_else(|| StoreError::JobNotFound(job.to_string()))
}

/// Inserts an execution and its creation event.
pub(crate) async fn insert_execution(
    conn: &mut SqliteConnection,
    now: Timestamp,
    n: NewExecution<'_>,
) -> Result<ExecutionRow> {
    let number = match n.number {
        Some(v) => v,
        None => next_number(conn, &n.spec.name).await?,
    };
    let (timeouts, retry, command, key, runner) = match n.from_previous {
        Some(p) => (
            p.timeouts,
            p.retry,
            p.command.clone(),
            p.concurrency_key.clone(),
            p.runner.clone(),
        ),
        None => (
            n.spec.timeouts,
            n.spec.retry,
            n.spec.command.clone(),
            n.spec.concurrency_key.clone(),
            n.spec.runner().to_string(),
        ),
    };
    let max_attempts = n.max_attempts.unwrap_or(retry.max_attempts).max(1);
    let (state, reason, message, finished_at, start_deadline) = match &n.skipped {
        Some((r, m)) => (
            State::Skipped,
            Some(r.as_str()),
            Some(m.as_str()),
            Some(ms(now)),
            None,
        ),
        None => (
            State::Queued,
            None,
            None,
            None,
            Some(ms(timeouts.start_deadline(n.run_after))),
        ),
    };
    let rec: ExecRecord = sqlx::query_as(sql(format!(
        "INSERT INTO executions (job, number, attempt, max_attempts, retry_of, trigger, scheduled_for, state, \
         command, runner, concurrency_key, overlap, heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, \
         kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after, start_deadline, finished_at, reason, \
         message, payload, idempotency_key, checkpoint) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         RETURNING {EXEC_COLUMNS}"
    )))
    .bind(&n.spec.name)
    .bind(number)
    .bind(n.attempt as i64)
    .bind(max_attempts as i64)
    .bind(n.retry_of)
    .bind(n.trigger.as_str())
    .bind(n.scheduled_for.map(ms))
    .bind(state.as_str())
    .bind(command)
    .bind(runner)
    .bind(key)
    .bind(n.spec.overlap.as_str())
    .bind(dur_ms(timeouts.heartbeat))
    .bind(dur_ms(timeouts.run))
    .bind(dur_ms(timeouts.queue))
    .bind(dur_ms(timeouts.kill_grace))
    .bind(dur_ms(retry.backoff))
    .bind(dur_ms(retry.max_backoff))
    .bind(ms(now))
    .bind(ms(n.run_after))
    .bind(start_deadline)
    .bind(finished_at)
    .bind(reason)
    .bind(message)
    .bind(n.payload.map(|p| p.to_string()))
    .bind(n.idempotency_key)
    .bind(n.checkpoint.map(|c| c.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    let row = rec.into_row()?;
    let text = match &n.skipped {
        Some((_, m)) => format!("{}; {m}", n.note),
        None => n.note.clone(),
    };
    event(
        conn,
        now,
        row.id,
        EventKind::Transition,
        None,
        Some(state),
        reason,
        &text,
        n.actor,
    )
    .await?;
    Ok(row)
}

/// A terminal or cancel-request step, applied with compare-and-set.
pub(crate) struct Apply<'a> {
    pub event: Event,
    pub message: String,
    pub actor: &'a str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// The compare-and-set guard of invariant 4: (id, expected state, attempt, lease token).
fn cas_where() -> &'static str {
    "id = ? AND state = ? AND attempt = ? AND lease_token IS ?"
}

fn check_one(res: SqliteQueryResult) -> bool {
    res.rows_affected() == 1
}

/// Applies a terminal event to `row` as it was read. Returns `None` when the row changed in
/// between (nothing was written). Writes the transition event and, when the policy owes one,
/// the retry.
pub(crate) async fn settle(
    conn: &mut SqliteConnection,
    now: Timestamp,
    row: &ExecutionRow,
    a: Apply<'_>,
) -> Result<Option<Settled>> {
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
    let res = sqlx::query(sql(format!(
        "UPDATE executions SET state = ?, reason = ?, message = ?, finished_at = ?, \
         exit_code = COALESCE(?, exit_code), signal = COALESCE(?, signal), \
         progress = CASE WHEN ? = 'completed' AND progress IS NOT NULL THEN 1.0 ELSE progress END WHERE {}",
        cas_where()
    )))
    .bind(step.to.as_str())
    .bind(step.reason.map(Reason::as_str))
    .bind(message.as_deref())
    .bind(ms(now))
    .bind(a.exit_code)
    .bind(a.signal)
    .bind(step.to.as_str())
    .bind(row.id)
    .bind(row.state.as_str())
    .bind(row.attempt as i64)
    .bind(row.lease_token.as_deref())
    .execute(&mut *conn)
    .await?;
    if !check_one(res) {
        return Ok(None);
    }
    let text = message.unwrap_or_else(|| match a.exit_code {
        Some(c) => format!("completed (exit code {c})"),
        None => "completed".to_string(),
    });
    event(
        conn,
        now,
        row.id,
        EventKind::Transition,
        Some(row.state),
        Some(step.to),
        step.reason.map(Reason::as_str),
        &text,
        a.actor,
    )
    .await?;
    let retry = match step.reason {
        Some(reason) => schedule_retry(conn, now, row, reason, a.actor).await?,
        None => None,
    };
    let execution = load(conn, row.id)
        .await?
        .ok_or(StoreError::ExecutionNotFound(row.id))?;
    Ok(Some(Settled {
        execution,
        retry,
        repeated: false,
    }))
}

async fn schedule_retry(
    conn: &mut SqliteConnection,
    now: Timestamp,
    row: &ExecutionRow,
    reason: Reason,
    actor: &str,
) -> Result<Option<ExecutionRow>> {
    let Some(retry) = row.retry.next(row.attempt, reason) else {
        return Ok(None);
    };
    let run_after = deadline::add(now, retry.delay);
    let note = format!(
        "retry {}/{} of execution {} ({reason}), not before {}",
        retry.attempt,
        row.retry.max_attempts,
        row.id,
        ts(run_after)
    );
    queue_next_attempt(conn, now, row, run_after, None, note, actor).await
}

/// Queues the attempt that follows `row`, not before `run_after`: same number, same command
/// and limits, its payload and its last checkpoint. `None` when the job no longer exists.
pub(crate) async fn queue_next_attempt(
    conn: &mut SqliteConnection,
    now: Timestamp,
    row: &ExecutionRow,
    run_after: Timestamp,
    max_attempts: Option<u32>,
    note: String,
    actor: &str,
) -> Result<Option<ExecutionRow>> {
    let Some((spec, _, _)) = load_job(conn, &row.job).await? else {
        return Ok(None);
    };
    let new = insert_execution(
        conn,
        now,
        NewExecution {
            spec: &spec,
            number: Some(row.number),
            attempt: row.attempt + 1,
            retry_of: Some(row.id),
            trigger: Trigger::Retry,
            scheduled_for: row.scheduled_for,
            skipped: None,
            run_after,
            payload: row.payload.as_ref(),
            from_previous: Some(row),
            max_attempts,
            idempotency_key: None,
            checkpoint: row.checkpoint.as_ref(),
            note,
            actor,
        },
    )
    .await?;
    Ok(Some(new))
}

/// Asks the owner of a running execution to stop it: sets the cancel fields (compare-and-set)
/// and writes a note. Returns false when the row changed in between.
pub(crate) async fn request_cancel(
    conn: &mut SqliteConnection,
    now: Timestamp,
    row: &ExecutionRow,
    reason: Reason,
    message: &str,
    actor: &str,
) -> Result<bool> {
    transition(row.state, row.cancel_reason, Event::Cancel(reason))?;
    if row.cancel_requested_at.is_some() {
        return Ok(true);
    }
    let deadline = row.timeouts.cancel_deadline(now);
    let res = sqlx::query(sql(format!(
        "UPDATE executions SET cancel_requested_at = ?, cancel_reason = ?, cancel_message = ?, cancel_deadline = ? WHERE {}",
        cas_where()
    )))
    .bind(ms(now))
    .bind(reason.as_str())
    .bind(message)
    .bind(ms(deadline))
    .bind(row.id)
    .bind(row.state.as_str())
    .bind(row.attempt as i64)
    .bind(row.lease_token.as_deref())
    .execute(&mut *conn)
    .await?;
    if !check_one(res) {
        return Ok(false);
    }
    let text = format!(
        "cancel requested ({reason}): {message}; the owner must stop it by {}",
        ts(deadline)
    );
    event(
        conn,
        now,
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

/// Live executions of a job, oldest first.
pub(crate) async fn live_of_job(
    conn: &mut SqliteConnection,
    job: &str,
) -> Result<Vec<ExecutionRow>> {
    let recs: Vec<ExecRecord> = sqlx::query_as(sql(format!(
        "SELECT {EXEC_COLUMNS} FROM executions WHERE job = ? AND state IN ('queued', 'running') ORDER BY id"
    )))
    .bind(job)
    .fetch_all(&mut *conn)
    .await?;
    super::rows::decode_all(recs)
}

/// Where a new execution comes from.
pub(crate) struct Origin<'a> {
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    pub payload: Option<&'a serde_json::Value>,
    pub idempotency_key: Option<&'a str>,
    pub note: String,
}

/// Creates an execution under the job's overlap policy (used by triggers and the scheduler).
pub(crate) async fn create_with_overlap(
    conn: &mut SqliteConnection,
    now: Timestamp,
    spec: &JobSpec,
    origin: Origin<'_>,
    actor: &str,
) -> Result<Created> {
    let live = live_of_job(conn, &spec.name).await?;
    let mut replaced = Vec::new();
    let base = NewExecution {
        spec,
        number: None,
        attempt: 1,
        retry_of: None,
        trigger: origin.trigger,
        scheduled_for: origin.scheduled_for,
        skipped: None,
        run_after: now,
        payload: origin.payload,
        from_previous: None,
        max_attempts: None,
        idempotency_key: origin.idempotency_key,
        checkpoint: None,
        note: origin.note,
        actor,
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
                    conn,
                    now,
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
                let execution = insert_execution(conn, now, base).await?;
                let message = format!(
                    "replaced by run #{} (execution {})",
                    execution.number, execution.id
                );
                for old in &live {
                    match old.state {
                        State::Queued => {
                            let a = Apply {
                                event: Event::Cancel(Reason::Replaced),
                                message: message.clone(),
                                actor,
                                exit_code: None,
                                signal: None,
                            };
                            if settle(conn, now, old, a).await?.is_some() {
                                replaced.push(old.id);
                            }
                        }
                        _ => {
                            if request_cancel(conn, now, old, Reason::Replaced, &message, actor)
                                .await?
                            {
                                replaced.push(old.id);
                            }
                        }
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
    let execution = insert_execution(conn, now, base).await?;
    Ok(Created {
        existing: false,
        execution,
        replaced,
    })
}
