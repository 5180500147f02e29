//! The ledger's row-level statements, written once for every backend (see `crate::sql` for
//! how a statement is spelled per database). Every compare-and-set is guarded by (id,
//! expected state, attempt, lease token) and reports whether exactly one row changed.

use std::collections::BTreeMap;

use jobward_core::{Reason, State, Timestamp};

use super::{End, JobState, NewEvent, RowValues, StopNodes, StoredJob};
use crate::error::corrupt;
use crate::rows::{self, EXEC_COLUMNS, NODE_COLUMNS, dur_ms};
use crate::sql::{Arg, Conn};
use crate::types::*;
use crate::{Result, StoreError};

/// The compare-and-set guard of invariant 4, its parameters from `$first` on.
fn cas(first: usize) -> String {
    format!(
        "id = ${} AND state = ${} AND attempt = ${} AND lease_token IS NOT DISTINCT FROM ${}",
        first,
        first + 1,
        first + 2,
        first + 3
    )
}

fn cas_args<'a>(row: &'a ExecutionRow) -> [Arg<'a>; 4] {
    [
        row.id.into(),
        row.state.as_str().into(),
        row.attempt.into(),
        row.lease_token.as_deref().into(),
    ]
}

/// Executions selected by `condition` (a WHERE clause and what follows it).
pub(crate) async fn executions(
    tx: &mut dyn Conn,
    condition: &str,
    args: &[Arg<'_>],
) -> Result<Vec<ExecutionRow>> {
    let sql = format!("SELECT {EXEC_COLUMNS} FROM executions WHERE {condition}");
    rows::executions(tx.fetch(&sql, args).await?)
}

async fn one(tx: &mut dyn Conn, condition: &str, args: &[Arg<'_>]) -> Result<Option<ExecutionRow>> {
    Ok(executions(tx, condition, args).await?.into_iter().next())
}

pub(crate) async fn load(tx: &mut dyn Conn, id: ExecutionId) -> Result<Option<ExecutionRow>> {
    one(tx, "id = $1", &[id.into()]).await
}

/// Reads a job for a write. `lock` takes its row lock on backends with concurrent writers,
/// so that what is created under an overlap policy that looks at live executions (skip,
/// replace) is decided one at a time.
pub(crate) async fn load_job(
    tx: &mut dyn Conn,
    name: &str,
    lock: bool,
) -> Result<Option<JobState>> {
    let sql = if lock {
        "SELECT spec, defined, paused FROM jobs WHERE name = $1 /*pg: FOR UPDATE*/"
    } else {
        "SELECT spec, defined, paused FROM jobs WHERE name = $1"
    };
    let Some(r) = tx.one(sql, &[name.into()]).await? else {
        return Ok(None);
    };
    let spec = serde_json::from_str(&r.text(0)?)
        .map_err(|e| corrupt(format!("job '{name}' definition: {e}")))?;
    Ok(Some(JobState {
        spec,
        defined: r.bool(1)?,
        paused: r.bool(2)?,
    }))
}

pub(crate) async fn next_number(tx: &mut dyn Conn, job: &str) -> Result<i64> {
    next_numbers(tx, job, 1).await
}

/// Inserts execution rows in one statement; returns them as stored, in the order given.
pub(crate) async fn insert_executions(
    tx: &mut dyn Conn,
    values: &[RowValues],
) -> Result<Vec<ExecutionRow>> {
    if values.is_empty() {
        return Ok(vec![]);
    }
    let batch: Vec<serde_json::Value> = values
        .iter()
        .map(|v| {
            serde_json::json!({
                "bjob": v.job,
                "bnumber": v.number,
                "battempt": v.attempt,
                "bmax_attempts": v.max_attempts,
                "bretry_of": v.retry_of,
                "btrigger": v.trigger.as_str(),
                "bscheduled_for": v.scheduled_for.map(rows::ms),
                "bstate": v.state.as_str(),
                "bcommand": v.command,
                "brunner": v.runner,
                "bkey": v.concurrency_key,
                "boverlap": v.overlap.as_str(),
                "bhb": dur_ms(v.timeouts.heartbeat),
                "brun": dur_ms(v.timeouts.run),
                "bqueue": dur_ms(v.timeouts.queue),
                "bgrace": dur_ms(v.timeouts.kill_grace),
                "bbackoff": dur_ms(v.retry.backoff),
                "bmax_backoff": dur_ms(v.retry.max_backoff),
                "bqueued_at": rows::ms(v.queued_at),
                "brun_after": rows::ms(v.run_after),
                "bstart_deadline": v.start_deadline.map(rows::ms),
                "bfinished_at": v.finished_at.map(rows::ms),
                "breason": v.reason.map(Reason::as_str),
                "bmessage": v.message,
                "bpayload": v.payload.as_ref().map(|p| p.to_string()),
                "bidem": v.idempotency_key,
                "bcheckpoint": v.checkpoint.as_ref().map(|c| c.to_string()),
                "bended_by": v.state.is_terminal().then_some(v.actor.as_str()),
                "bpriority": v.priority,
                "bexpmin": v.expected_duration.and_then(|b| b.min).map(dur_ms),
                "bexpmax": v.expected_duration.and_then(|b| b.max).map(dur_ms),
            })
        })
        .collect();
    let cols: &[(&str, &str)] = &[
        ("bjob", "text"),
        ("bnumber", "bigint"),
        ("battempt", "bigint"),
        ("bmax_attempts", "bigint"),
        ("bretry_of", "bigint"),
        ("btrigger", "text"),
        ("bscheduled_for", "bigint"),
        ("bstate", "text"),
        ("bcommand", "text"),
        ("brunner", "text"),
        ("bkey", "text"),
        ("boverlap", "text"),
        ("bhb", "bigint"),
        ("brun", "bigint"),
        ("bqueue", "bigint"),
        ("bgrace", "bigint"),
        ("bbackoff", "bigint"),
        ("bmax_backoff", "bigint"),
        ("bqueued_at", "bigint"),
        ("brun_after", "bigint"),
        ("bstart_deadline", "bigint"),
        ("bfinished_at", "bigint"),
        ("breason", "text"),
        ("bmessage", "text"),
        ("bpayload", "text"),
        ("bidem", "text"),
        ("bcheckpoint", "text"),
        ("bended_by", "text"),
        ("bpriority", "bigint"),
        ("bexpmin", "bigint"),
        ("bexpmax", "bigint"),
    ];
    let source = crate::sql::batch(tx.dialect(), 1, cols);
    let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
    let sql = format!(
        "INSERT INTO executions (job, number, attempt, max_attempts, retry_of, trigger, scheduled_for, state, \
         command, runner, concurrency_key, overlap, heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, \
         kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after, start_deadline, finished_at, reason, \
         message, payload, idempotency_key, checkpoint, ended_by, priority, expected_min_ms, \
         expected_max_ms) \
         SELECT {} FROM {source} RETURNING {EXEC_COLUMNS}",
        names.join(", ")
    );
    let batch = serde_json::Value::Array(batch).to_string();
    let inserted = rows::executions(tx.fetch(&sql, &[batch.as_str().into()]).await?)?;
    let mut by_key: std::collections::HashMap<(String, i64, u32), ExecutionRow> = inserted
        .into_iter()
        .map(|r| ((r.job.clone(), r.number, r.attempt), r))
        .collect();
    let mut runners: std::collections::BTreeMap<&str, usize> = Default::default();
    for v in values.iter().filter(|v| v.state == State::Queued) {
        *runners.entry(v.runner.as_str()).or_default() += 1;
    }
    for (runner, count) in runners {
        tx.notify_work(runner, count).await?;
    }
    values
        .iter()
        .map(|v| {
            by_key
                .remove(&(v.job.clone(), v.number, v.attempt))
                .ok_or_else(|| corrupt("an inserted execution was not returned"))
        })
        .collect()
}

/// Executions by id, in one statement (in no particular order).
pub(crate) async fn load_many(tx: &mut dyn Conn, ids: &[ExecutionId]) -> Result<Vec<ExecutionRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let source = crate::sql::batch(tx.dialect(), 1, &[("bid", "bigint")]);
    let batch = serde_json::Value::Array(
        ids.iter()
            .map(|id| serde_json::json!({"bid": id}))
            .collect(),
    )
    .to_string();
    executions(
        tx,
        &format!("/*pg: id = ANY($2) AND*/ id IN (SELECT bid FROM {source})"),
        &[batch.as_str().into(), Arg::Ints(ids)],
    )
    .await
}

/// Takes `count` numbers from a job's counter; returns the first.
pub(crate) async fn next_numbers(tx: &mut dyn Conn, job: &str, count: u32) -> Result<i64> {
    tx.one(
        "UPDATE jobs SET next_number = next_number + $2 WHERE name = $1 RETURNING next_number - $2",
        &[job.into(), count.into()],
    )
    .await?
    .ok_or_else(|| StoreError::JobNotFound(job.to_string()))?
    .i64(0)
}

pub(crate) async fn event(tx: &mut dyn Conn, e: &NewEvent<'_>) -> Result<()> {
    events(tx, std::slice::from_ref(e)).await
}

/// Moves each row (as it was read) to its terminal state, all in one statement; a row that
/// changed in between is left alone. Returns the rows that changed, as they are now.
pub(crate) async fn cas_end_many(
    tx: &mut dyn Conn,
    items: &[(&ExecutionRow, End<'_>)],
) -> Result<Vec<ExecutionRow>> {
    if items.is_empty() {
        return Ok(vec![]);
    }
    let now = tx.now();
    let batch: Vec<serde_json::Value> = items
        .iter()
        .map(|(row, end)| {
            serde_json::json!({
                "bid": row.id,
                "bfrom": row.state.as_str(),
                "battempt": row.attempt,
                "btoken": row.lease_token,
                "bto": end.state.as_str(),
                "breason": end.reason.map(Reason::as_str),
                "bmessage": end.message,
                "bexit": end.exit_code,
                "bsignal": end.signal,
                "bactor": end.actor,
            })
        })
        .collect();
    let source = crate::sql::batch(
        tx.dialect(),
        1,
        &[
            ("bid", "bigint"),
            ("bfrom", "text"),
            ("battempt", "bigint"),
            ("btoken", "text"),
            ("bto", "text"),
            ("breason", "text"),
            ("bmessage", "text"),
            ("bexit", "bigint"),
            ("bsignal", "bigint"),
            ("bactor", "text"),
        ],
    );
    let sql = format!(
        "UPDATE executions SET state = v.bto, reason = v.breason, message = v.bmessage, \
         finished_at = /*now*/$2, exit_code = COALESCE(v.bexit, exit_code), \
         signal = COALESCE(v.bsignal, signal), ended_by = v.bactor, \
         progress = CASE WHEN v.bto = 'completed' AND progress IS NOT NULL THEN 1.0 ELSE progress END \
         FROM {source} \
         WHERE /*pg: id = ANY($3) AND*/ id = v.bid AND state = v.bfrom AND attempt = v.battempt \
           AND lease_token IS NOT DISTINCT FROM v.btoken \
         RETURNING {EXEC_COLUMNS}"
    );
    let batch = serde_json::Value::Array(batch).to_string();
    let ids: Vec<i64> = items.iter().map(|(r, _)| r.id).collect();
    rows::executions(
        tx.fetch(&sql, &[batch.as_str().into(), now.into(), Arg::Ints(&ids)])
            .await?,
    )
}

/// Appends events (invariant 6), all in one statement.
pub(crate) async fn events(tx: &mut dyn Conn, events: &[NewEvent<'_>]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let now = tx.now();
    let batch: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            serde_json::json!({
                "bid": e.id,
                "bkind": e.kind.as_str(),
                "bfrom": e.from.map(|s| s.as_str()),
                "bto": e.to.map(|s| s.as_str()),
                "breason": e.reason,
                "bmessage": e.message,
                "bactor": e.actor,
            })
        })
        .collect();
    let source = crate::sql::batch(
        tx.dialect(),
        1,
        &[
            ("bid", "bigint"),
            ("bkind", "text"),
            ("bfrom", "text"),
            ("bto", "text"),
            ("breason", "text"),
            ("bmessage", "text"),
            ("bactor", "text"),
        ],
    );
    let sql = format!(
        "INSERT INTO events (execution_id, at, kind, from_state, to_state, reason, message, actor) \
         SELECT bid, /*now*/$2, bkind, bfrom, bto, breason, bmessage, bactor FROM {source}"
    );
    let batch = serde_json::Value::Array(batch).to_string();
    tx.execute(&sql, &[batch.as_str().into(), now.into()])
        .await?;
    Ok(())
}

pub(crate) async fn cas_cancel_request(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    reason: Reason,
    message: &str,
    deadline: Timestamp,
) -> Result<bool> {
    let now = tx.now();
    let sql = format!(
        "UPDATE executions SET cancel_requested_at = $1, cancel_reason = $2, cancel_message = $3, \
         cancel_deadline = $4 WHERE {}",
        cas(5)
    );
    let [a, b, c, d] = cas_args(row);
    Ok(tx
        .execute(
            &sql,
            &[
                now.into(),
                reason.as_str().into(),
                message.into(),
                deadline.into(),
                a,
                b,
                c,
                d,
            ],
        )
        .await?
        == 1)
}

pub(crate) async fn cas_progress(
    tx: &mut dyn Conn,
    lease: &LeaseRef,
    progress: Option<f64>,
    phase: Option<&str>,
    checkpoint: Option<&serde_json::Value>,
) -> Result<bool> {
    let checkpoint = checkpoint.map(|c| c.to_string());
    Ok(tx
        .execute(
            "UPDATE executions SET progress = COALESCE($1, progress), phase = COALESCE($2, phase), \
             checkpoint = COALESCE($3, checkpoint) \
             WHERE id = $4 AND state = 'running' AND attempt = $5 AND lease_token = $6",
            &[
                progress.into(),
                phase.into(),
                checkpoint.as_deref().into(),
                lease.id.into(),
                lease.attempt.into(),
                lease.token.as_str().into(),
            ],
        )
        .await?
        == 1)
}

/// Records the process an owner started, under its lease.
pub(crate) async fn set_process(
    tx: &mut dyn Conn,
    lease: &LeaseRef,
    p: &ProcessInfo,
) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE executions SET pid = $1, pgid = $2, proc_start_ticks = $3, boot_id = $4 \
             WHERE id = $5 AND state = 'running' AND attempt = $6 AND lease_token = $7",
            &[
                p.pid.into(),
                p.pgid.into(),
                (p.start_ticks as i64).into(),
                p.boot_id.as_deref().into(),
                lease.id.into(),
                lease.attempt.into(),
                lease.token.as_str().into(),
            ],
        )
        .await?
        == 1)
}

pub(crate) async fn live_of_job(tx: &mut dyn Conn, job: &str) -> Result<Vec<ExecutionRow>> {
    let sql = format!(
        "SELECT {EXEC_COLUMNS} FROM executions /*sqlite: INDEXED BY executions_live_job*/ \
         WHERE job = $1 AND finished_at IS NULL ORDER BY id"
    );
    rows::executions(tx.fetch(&sql, &[job.into()]).await?)
}

pub(crate) async fn by_idempotency_key(
    tx: &mut dyn Conn,
    job: &str,
    key: &str,
) -> Result<Option<ExecutionRow>> {
    one(
        tx,
        "job = $1 AND idempotency_key = $2 AND attempt = 1",
        &[job.into(), key.into()],
    )
    .await
}

/// First attempts of a job created with any of these idempotency keys.
pub(crate) async fn by_idempotency_keys(
    tx: &mut dyn Conn,
    job: &str,
    keys: &[&str],
) -> Result<Vec<ExecutionRow>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let source = crate::sql::batch(tx.dialect(), 2, &[("bkey", "text")]);
    let batch = serde_json::Value::Array(
        keys.iter()
            .map(|k| serde_json::json!({"bkey": k}))
            .collect(),
    )
    .to_string();
    executions(
        tx,
        &format!("job = $1 AND attempt = 1 AND idempotency_key IN (SELECT bkey FROM {source})"),
        &[job.into(), batch.as_str().into()],
    )
    .await
}

/// The attempt that followed `id` (its retry), if any.
pub(crate) async fn next_attempt_of(
    tx: &mut dyn Conn,
    id: ExecutionId,
    attempt: u32,
) -> Result<Option<ExecutionRow>> {
    one(
        tx,
        "retry_of = $1 AND attempt = $2",
        &[id.into(), (attempt + 1).into()],
    )
    .await
}

/// Whether an instant of a job already has its execution (invariant 9).
pub(crate) async fn fired_already(tx: &mut dyn Conn, job: &str, at: Timestamp) -> Result<bool> {
    Ok(tx
        .scalar_i64(
            "SELECT count(*) FROM executions WHERE job = $1 AND scheduled_for = $2 AND attempt = 1",
            &[job.into(), at.into()],
        )
        .await?
        > 0)
}

/// The retry of an execution, if one was created.
pub(crate) async fn retry_of(tx: &mut dyn Conn, id: ExecutionId) -> Result<Option<ExecutionId>> {
    tx.one(
        "SELECT id FROM executions WHERE retry_of = $1 ORDER BY id LIMIT 1",
        &[id.into()],
    )
    .await?
    .map(|r| r.i64(0))
    .transpose()
}

/// Whether a running execution is past the upper bound of its expected duration and not yet
/// marked overdue.
pub(crate) async fn any_overdue(tx: &mut dyn Conn) -> Result<bool> {
    let now = tx.now();
    Ok(tx
        .one(
            "SELECT 1 FROM executions WHERE finished_at IS NULL AND expected_max_ms IS NOT NULL \
             AND overdue_at IS NULL AND state = 'running' AND started_at + expected_max_ms <= $1 LIMIT 1",
            &[now.into()],
        )
        .await?
        .is_some())
}

/// The oldest due queued execution of an external job's schedule, waiting for its start.
pub(crate) async fn due_external(tx: &mut dyn Conn, job: &str) -> Result<Option<ExecutionRow>> {
    let now = tx.now();
    tx.one(
        &format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE job = $1 AND finished_at IS NULL \
             AND state = 'queued' AND runner = 'external' AND run_after <= $2 \
             ORDER BY run_after, id LIMIT 1"
        ),
        &[job.into(), now.into()],
    )
    .await?
    .map(|r| rows::execution(&r))
    .transpose()
}

/// Whether the key has a limit in `[concurrency]`.
pub(crate) async fn key_has_limit(tx: &mut dyn Conn, key: &str) -> Result<bool> {
    Ok(tx
        .one(
            "SELECT 1 FROM concurrency_limits WHERE key = $1",
            &[key.into()],
        )
        .await?
        .is_some())
}

/// Whether the key's slots are all held by running executions.
pub(crate) async fn key_full(tx: &mut dyn Conn, key: &str) -> Result<bool> {
    let r = tx
        .one(
            "SELECT max_running, (SELECT count(*) FROM executions WHERE state = 'running' \
             AND concurrency_key = $1) FROM concurrency_limits WHERE key = $1",
            &[key.into()],
        )
        .await?;
    Ok(match r {
        Some(r) => r.i64(1)? >= r.i64(0)?,
        None => false,
    })
}

/// The key's (limit, running) under its row lock, so claimers of one key on every node take
/// turns; `None` when the key has no limit.
pub(crate) async fn key_occupancy(tx: &mut dyn Conn, key: &str) -> Result<Option<(i64, i64)>> {
    let Some(limit) = tx
        .one(
            "SELECT max_running FROM concurrency_limits WHERE key = $1 /*pg: FOR UPDATE*/",
            &[key.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let running = tx
        .scalar_i64(
            "SELECT count(*) FROM executions WHERE state = 'running' AND concurrency_key = $1",
            &[key.into()],
        )
        .await?;
    Ok(Some((limit.i64(0)?, running)))
}

/// Takes the job's row lock (on backends with concurrent writers): what needs to see a job's
/// live executions and act on them runs one at a time per job.
pub(crate) async fn lock_job(tx: &mut dyn Conn, job: &str) -> Result<()> {
    tx.fetch(
        "SELECT 1 FROM jobs WHERE name = $1 /*pg: FOR UPDATE*/",
        &[job.into()],
    )
    .await?;
    Ok(())
}

/// Whether a run of `job` is running now, with the job's row locked (overlap = queue).
pub(crate) async fn job_busy(tx: &mut dyn Conn, job: &str) -> Result<bool> {
    lock_job(tx, job).await?;
    Ok(tx
        .scalar_i64(
            "SELECT count(*) FROM executions WHERE job = $1 AND finished_at IS NULL AND state = 'running'",
            &[job.into()],
        )
        .await?
        > 0)
}

// ---- jobs ----

pub(crate) async fn stored_jobs(tx: &mut dyn Conn) -> Result<Vec<StoredJob>> {
    stored(tx, "").await
}

async fn stored(tx: &mut dyn Conn, name: &str) -> Result<Vec<StoredJob>> {
    let (sql, args): (&str, Vec<Arg<'_>>) = if name.is_empty() {
        (
            "SELECT name, spec, schedule, defined, source FROM jobs /*pg: FOR UPDATE*/",
            vec![],
        )
    } else {
        (
            "SELECT name, spec, schedule, defined, source FROM jobs WHERE name = $1 /*pg: FOR UPDATE*/",
            vec![name.into()],
        )
    };
    tx.fetch(sql, &args)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredJob {
                name: r.text(0)?,
                spec_json: r.text(1)?,
                schedule_json: r.text(2)?,
                defined: r.bool(3)?,
                source: r.text(4)?.parse().map_err(corrupt)?,
            })
        })
        .collect()
}

/// One job's stored definition, locked for this transaction.
pub(crate) async fn stored_job(tx: &mut dyn Conn, name: &str) -> Result<Option<StoredJob>> {
    Ok(stored(tx, name).await?.into_iter().next())
}

pub(crate) async fn insert_job(
    tx: &mut dyn Conn,
    name: &str,
    spec: &str,
    schedule: &str,
    first: Option<Timestamp>,
    source: JobSource,
    actor: Option<&str>,
) -> Result<()> {
    let now = tx.now();
    tx.execute(
        "INSERT INTO jobs (name, spec, schedule, defined, next_fire_at, updated_at, source, created_by) \
         VALUES ($1, $2, $3, TRUE, $4, $5, $6, $7) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, schedule = excluded.schedule, \
         defined = TRUE, next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at, \
         source = excluded.source, created_by = excluded.created_by",
        &[
            name.into(),
            spec.into(),
            schedule.into(),
            first.into(),
            now.into(),
            source.as_str().into(),
            actor.into(),
        ],
    )
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_job(
    tx: &mut dyn Conn,
    name: &str,
    spec: &str,
    schedule: &str,
    reset_cursor: bool,
    first: Option<Timestamp>,
    source: JobSource,
) -> Result<()> {
    let now = tx.now();
    tx.execute(
        "UPDATE jobs SET spec = $1, schedule = $2, defined = TRUE, updated_at = $3, \
         next_fire_at = CASE WHEN $4 THEN $5 ELSE next_fire_at END, source = $7 WHERE name = $6",
        &[
            spec.into(),
            schedule.into(),
            now.into(),
            reset_cursor.into(),
            first.into(),
            name.into(),
            source.as_str().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records a change of a job (who, when, before and after).
pub(crate) async fn job_change(
    tx: &mut dyn Conn,
    job: &str,
    actor: &str,
    action: &str,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<()> {
    let now = tx.now();
    tx.execute(
        "INSERT INTO job_changes (job, at, actor, action, before, after) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            job.into(),
            now.into(),
            actor.into(),
            action.into(),
            before.into(),
            after.into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn job_changes(tx: &mut dyn Conn, job: &str) -> Result<Vec<JobChange>> {
    let json = |v: Option<String>| -> Result<Option<serde_json::Value>> {
        v.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("job change: {e}"))))
            .transpose()
    };
    tx.fetch(
        "SELECT id, job, at, actor, action, before, after FROM job_changes WHERE job = $1 ORDER BY id DESC LIMIT 100",
        &[job.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(JobChange {
            id: r.i64(0)?,
            job: r.text(1)?,
            at: r.time(2)?,
            actor: r.text(3)?,
            action: r.text(4)?,
            before: json(r.opt_text(5)?)?,
            after: json(r.opt_text(6)?)?,
        })
    })
    .collect()
}

/// Moves a queued execution's start; false when it is no longer queued under that attempt.
pub(crate) async fn set_run_after(
    tx: &mut dyn Conn,
    row: &ExecutionRow,
    run_after: Timestamp,
    start_deadline: Timestamp,
) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE executions SET run_after = $1, start_deadline = $2 \
             WHERE id = $3 AND state = 'queued' AND attempt = $4",
            &[
                run_after.into(),
                start_deadline.into(),
                row.id.into(),
                row.attempt.into(),
            ],
        )
        .await?
        == 1)
}

pub(crate) async fn undefine_job(tx: &mut dyn Conn, name: &str) -> Result<()> {
    let now = tx.now();
    tx.execute(
        "UPDATE jobs SET defined = FALSE, next_fire_at = NULL, updated_at = $1 WHERE name = $2",
        &[now.into(), name.into()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn set_paused(tx: &mut dyn Conn, name: &str, paused: bool) -> Result<bool> {
    let now = tx.now();
    Ok(tx
        .execute(
            "UPDATE jobs SET paused = $1, updated_at = $2 WHERE name = $3",
            &[paused.into(), now.into(), name.into()],
        )
        .await?
        == 1)
}

pub(crate) async fn replace_limits(
    tx: &mut dyn Conn,
    limits: &BTreeMap<String, u32>,
) -> Result<()> {
    let existing: Vec<String> = tx
        .fetch("SELECT key FROM concurrency_limits", &[])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_>>()?;
    for key in existing.iter().filter(|k| !limits.contains_key(*k)) {
        tx.execute(
            "DELETE FROM concurrency_limits WHERE key = $1",
            &[key.as_str().into()],
        )
        .await?;
    }
    for (key, limit) in limits {
        tx.execute(
            "INSERT INTO concurrency_limits (key, max_running) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET max_running = excluded.max_running",
            &[key.as_str().into(), (*limit).into()],
        )
        .await?;
    }
    Ok(())
}

/// Jobs whose scheduler cursor is due, locked for this transaction (others skip them).
pub(crate) async fn due_jobs(tx: &mut dyn Conn) -> Result<Vec<(String, Timestamp)>> {
    let now = tx.now();
    tx.fetch(
        "SELECT name, next_fire_at FROM jobs WHERE defined AND next_fire_at IS NOT NULL \
         AND next_fire_at <= $1 ORDER BY next_fire_at /*pg: FOR UPDATE SKIP LOCKED*/",
        &[now.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.text(0)?, r.time(1)?)))
    .collect()
}

/// Moves a job's cursor from `old` to `new` (compare-and-set).
pub(crate) async fn move_cursor(
    tx: &mut dyn Conn,
    name: &str,
    old: Timestamp,
    new: Option<Timestamp>,
) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE jobs SET next_fire_at = $1 WHERE name = $2 AND next_fire_at = $3",
            &[new.into(), name.into(), old.into()],
        )
        .await?
        == 1)
}

pub(crate) async fn earliest_cursor(tx: &mut dyn Conn) -> Result<Option<Timestamp>> {
    tx.one("SELECT MIN(next_fire_at) FROM jobs WHERE defined", &[])
        .await?
        .map(|r| r.opt_time(0))
        .transpose()
        .map(Option::flatten)
}

// ---- nodes ----

/// A live incarnation with this name other than `except`.
pub(crate) async fn live_node_named(
    tx: &mut dyn Conn,
    name: &str,
    except: &str,
) -> Result<Option<NodeRow>> {
    // Two nodes starting under one name at once take their turns.
    tx.lock(&format!("jobward:node:{name}")).await?;
    let now = tx.now();
    let sql = format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1 AND stopped_at IS NULL \
         AND lease_expires_at > $2 AND id <> $3 LIMIT 1"
    );
    tx.one(&sql, &[name.into(), now.into(), except.into()])
        .await?
        .map(|r| rows::node(&r))
        .transpose()
}

pub(crate) async fn insert_node(tx: &mut dyn Conn, node: &NewNode) -> Result<()> {
    let now = tx.now();
    tx.execute(
        "INSERT INTO nodes (id, name, hostname, pid, proc_start_ticks, boot_id, started_at, \
         heartbeat_at, lease_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        &[
            node.id.as_str().into(),
            node.name.as_str().into(),
            node.hostname.as_str().into(),
            node.pid.into(),
            node.start_ticks.map(|t| t as i64).into(),
            node.boot_id.as_deref().into(),
            now.into(),
            jobward_core::deadline::add(now, node.lease).into(),
        ],
    )
    .await?;
    Ok(())
}

/// Marks incarnations stopped: `id` alone, or every other one with `name`.
pub(crate) async fn stop_nodes(
    tx: &mut dyn Conn,
    which: StopNodes<'_>,
    reason: &str,
) -> Result<()> {
    let now = tx.now();
    match which {
        StopNodes::One { id, name } => {
            tx.execute(
                "UPDATE nodes SET stopped_at = $1, stop_reason = $2 WHERE id = $3 \
                 AND ($4 IS NULL OR name = $4) AND stopped_at IS NULL",
                &[now.into(), reason.into(), id.into(), name.into()],
            )
            .await?
        }
        StopNodes::AllNamedExcept { name, except } => {
            tx.execute(
                "UPDATE nodes SET stopped_at = $1, stop_reason = $2 WHERE name = $3 AND id <> $4 \
                 AND stopped_at IS NULL",
                &[now.into(), reason.into(), name.into(), except.into()],
            )
            .await?
        }
    };
    Ok(())
}

/// Renews a node's own lease; false when it was stopped (declared lost, superseded). The
/// ledger's liveness moves with it: a node heartbeat that finds none for a whole node lease
/// (nobody could write: the database or the only node was paused or cut off) restarts
/// `alive_since`, from which every lease is judged (an outage alone expires none).
pub(crate) async fn node_beat(
    tx: &mut dyn Conn,
    id: &str,
    lease: std::time::Duration,
) -> Result<bool> {
    let now = tx.now();
    let ok = tx
        .execute(
            "UPDATE nodes SET heartbeat_at = $1, lease_expires_at = $2 WHERE id = $3 AND stopped_at IS NULL",
            &[
                now.into(),
                jobward_core::deadline::add(now, lease).into(),
                id.into(),
            ],
        )
        .await?
        == 1;
    // Never waits: a node frozen (or cut off) inside its own heartbeat holds this row until
    // PostgreSQL ends its session; every other node's heartbeat must not queue behind it
    // (their leases would run out while they wait). A beat that finds the row taken skips it:
    // somebody is writing, which is all this row records.
    tx.execute(
        "UPDATE ledger_liveness SET alive_since = CASE WHEN $1 - last_beat > $2 \
         /*pg: OR last_beat < jw_ms(pg_postmaster_start_time())*/ THEN $1 ELSE alive_since END, \
         last_beat = $1 \
         WHERE id = (SELECT id FROM ledger_liveness WHERE id = 1 /*pg: FOR UPDATE SKIP LOCKED*/)",
        &[now.into(), dur_ms(lease).into()],
    )
    .await?;
    Ok(ok)
}

/// Live incarnations whose node lease expired, counted from when the ledger was last
/// reachable for everyone; locked for this transaction (another node settling them at the
/// same time skips them).
pub(crate) async fn expired_nodes(tx: &mut dyn Conn) -> Result<Vec<NodeRow>> {
    let now = tx.now();
    let sql = format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE stopped_at IS NULL AND lease_expires_at <= $1 \
         AND (SELECT alive_since FROM ledger_liveness) + (lease_expires_at - heartbeat_at) <= $1 \
         /*pg: AND jw_ms(pg_postmaster_start_time()) + (lease_expires_at - heartbeat_at) <= $1*/ \
         ORDER BY started_at /*pg: FOR UPDATE SKIP LOCKED*/"
    );
    tx.fetch(&sql, &[now.into()])
        .await?
        .iter()
        .map(rows::node)
        .collect()
}

/// Executions a node's own executor runs, locked for this transaction.
pub(crate) async fn running_on_node(tx: &mut dyn Conn, node_id: &str) -> Result<Vec<ExecutionRow>> {
    executions(
        tx,
        "state = 'running' AND node_id = $1 ORDER BY id /*pg: FOR UPDATE*/",
        &[node_id.into()],
    )
    .await
}

/// The host a node incarnation ran on.
pub(crate) async fn node_host(tx: &mut dyn Conn, id: &str) -> Result<Option<String>> {
    tx.one("SELECT hostname FROM nodes WHERE id = $1", &[id.into()])
        .await?
        .map(|r| r.text(0))
        .transpose()
}

pub(crate) async fn list_nodes(tx: &mut dyn Conn) -> Result<Vec<NodeRow>> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY started_at DESC");
    tx.fetch(&sql, &[]).await?.iter().map(rows::node).collect()
}

/// How long a worker's row outlives its last claim.
const WORKER_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

pub(crate) async fn worker_seen(
    tx: &mut dyn Conn,
    id: &str,
    queues: &[String],
    serves: &Serves,
) -> Result<()> {
    let now = tx.now();
    let queues = serde_json::to_string(queues).unwrap_or_default();
    let (handlers, commands) = match serves {
        Serves::All => (None, true),
        Serves::Only { commands, handlers } => (
            Some(serde_json::to_string(handlers).unwrap_or_default()),
            *commands,
        ),
    };
    tx.execute(
        "INSERT INTO workers (id, queues, handlers, commands, first_seen_at, last_claim_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, \
         handlers = excluded.handlers, commands = excluded.commands, \
         last_claim_at = excluded.last_claim_at",
        &[
            id.into(),
            queues.as_str().into(),
            handlers.as_deref().into(),
            commands.into(),
            now.into(),
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM workers WHERE last_claim_at < $1",
        &[(now.timestamp_millis() - WORKER_MEMORY_MS).into()],
    )
    .await?;
    Ok(())
}

pub(crate) async fn workers(tx: &mut dyn Conn, since: Timestamp) -> Result<Vec<WorkerRow>> {
    let list = |s: &str| -> Result<Vec<String>> {
        serde_json::from_str(s).map_err(|e| StoreError::Database(format!("workers row: {e}")))
    };
    tx.fetch(
        "SELECT id, queues, handlers, commands, first_seen_at, last_claim_at FROM workers \
         WHERE last_claim_at >= $1 ORDER BY last_claim_at DESC, id",
        &[since.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(WorkerRow {
            id: r.text(0)?,
            queues: list(&r.text(1)?)?,
            serves: match r.opt_text(2)? {
                None => Serves::All,
                Some(h) => Serves::Only {
                    commands: r.bool(3)?,
                    handlers: list(&h)?,
                },
            },
            first_seen_at: r.time(4)?,
            last_claim_at: r.time(5)?,
        })
    })
    .collect()
}
