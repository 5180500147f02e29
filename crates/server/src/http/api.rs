//! The system, jobs and executions endpoints: the same data as the CLI.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jobward_core::duration::parse_positive_duration;
use jobward_core::{State as ExecState, Timestamp, validate_name};
use jobward_protocol::*;
use jobward_store::{CancelOutcome, ExecutionFilter, HealthParams, ProgressParams, TriggerParams};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::executor::log_path;
use crate::{service, views};

async fn now(state: &AppState) -> Result<Timestamp, ApiError> {
    Ok(state.store.now().await?)
}

pub(crate) fn job_name(name: &str) -> Result<(), ApiError> {
    validate_name("job name", name)
        .map_err(|e| ApiError::not_found(format!("job '{name}' does not exist ({e})")))
}

fn execution_id(id: i64) -> Result<i64, ApiError> {
    if id < 1 {
        return Err(ApiError::not_found(format!(
            "execution {id} does not exist"
        )));
    }
    Ok(id)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Running longer than this counts as long-running (default: the server's [health]).
    pub long_running_after: Option<String>,
    /// Warn when more than this many executions are long-running (default: the server's).
    #[param(minimum = 0, maximum = 1000000)]
    pub warn_long_running: Option<i64>,
}

#[utoipa::path(get, path = "/api/system/health", tag = "system",
    params(HealthQuery),
    responses((status = 200, description = "healthy or warning, with the figures", body = HealthView),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn health(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<HealthQuery>,
) -> Result<axum::Json<HealthView>, ApiError> {
    let mut settings = state.health.clone();
    if let Some(v) = &q.long_running_after {
        settings.long_running_after = parse_positive_duration(v)
            .map_err(|e| ApiError::bad_request(format!("long_running_after: {e}")))?;
    }
    if let Some(n) = q.warn_long_running {
        if !(0..=1_000_000).contains(&n) {
            return Err(ApiError::bad_request(format!(
                "warn_long_running must be between 0 and 1000000, got {n}"
            )));
        }
        settings.warn_long_running = n as u64;
    }
    let m = state
        .store
        .health(HealthParams {
            long_running_after: settings.long_running_after,
            stale_after: None,
        })
        .await?;
    Ok(axum::Json(views::health(m, &settings)))
}

#[utoipa::path(get, path = "/api/system/executions/running", tag = "system",
    responses((status = 200, description = "every running execution, newest first", body = RunningList),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn running(State(state): State<AppState>) -> Result<axum::Json<RunningList>, ApiError> {
    let rows = running_rows(&state).await?;
    let now = now(&state).await?;
    let executions: Vec<ExecutionView> = rows.iter().map(|e| views::execution(e, now)).collect();
    Ok(axum::Json(RunningList {
        count: executions.len(),
        executions,
    }))
}

/// Every running execution (at most 10,000), newest first.
pub(crate) async fn running_rows(
    state: &AppState,
) -> Result<Vec<jobward_store::ExecutionRow>, ApiError> {
    Ok(state
        .store
        .list_executions(ExecutionFilter {
            states: vec![ExecState::Running],
            limit: 10_000,
            ..Default::default()
        })
        .await?)
}

#[utoipa::path(post, path = "/api/system/cleanup/stale-executions", tag = "system",
    request_body(content = Option<CleanupRequest>, description = "defaults: stale_after 1h, dry_run true"),
    responses((status = 200, description = "what changed, or would change on a dry run", body = CleanupResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn cleanup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OptionalJson(req): OptionalJson<CleanupRequest>,
) -> Result<axum::Json<CleanupResponse>, ApiError> {
    let stale_after = match &req.stale_after {
        None => Duration::from_secs(3600),
        Some(s) => parse_positive_duration(s)
            .map_err(|e| ApiError::bad_request(format!("stale_after: {e}")))?,
    };
    let apply = req.dry_run == Some(false);
    let report = state
        .service
        .cleanup(stale_after, apply, caller.actor.clone())
        .await?;
    let now = now(&state).await?;
    Ok(axum::Json(views::cleanup(&report, stale_after, now)))
}

#[utoipa::path(post, path = "/api/system/reload", tag = "system",
    responses((status = 200, description = "the configuration was read again and the jobs synced; running executions are untouched", body = ReloadResponse),
              (status = "default", description = "an error (an invalid configuration changes nothing)", body = ErrorBody)))]
pub async fn reload(State(state): State<AppState>) -> Result<axum::Json<ReloadResponse>, ApiError> {
    let Some(reload) = &state.reload else {
        return Err(ApiError::conflict(
            "this server has no configuration file to reload",
        ));
    };
    let r = reload().await.map_err(ApiError::bad_request)?;
    state.service.wake_all();
    Ok(axum::Json(ReloadResponse {
        added: r.added,
        changed: r.changed,
        removed: r.removed,
        unchanged: r.unchanged,
    }))
}

#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    responses((status = 200, description = "every job, with its status derived from its executions", body = JobList),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn jobs(State(state): State<AppState>) -> Result<axum::Json<JobList>, ApiError> {
    let jobs = state.store.list_jobs().await?;
    let now = now(&state).await?;
    Ok(axum::Json(JobList {
        jobs: jobs.iter().map(|j| views::job(j, now)).collect(),
    }))
}

#[utoipa::path(get, path = "/api/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    responses((status = 200, description = "the job and its 20 most recent executions", body = JobDetail),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn job(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<JobDetail>, ApiError> {
    job_name(&name)?;
    let job = state
        .store
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job '{name}' does not exist")))?;
    let recent = state
        .store
        .list_executions(ExecutionFilter {
            job: Some(name),
            limit: 20,
            ..Default::default()
        })
        .await?;
    let now = now(&state).await?;
    let workers = recent_workers(&state, &job, now).await?;
    let (served, workers) = views::served(&job, &workers, now).unzip();
    let changes = state.store.job_changes(&job.spec.name).await?;
    Ok(axum::Json(JobDetail {
        job: views::job(&job, now),
        recent: recent.iter().map(|e| views::execution(e, now)).collect(),
        served,
        workers: workers.unwrap_or_default(),
        definition: crate::jobdef::definition(&job.spec),
        changes: changes.iter().take(20).map(views::job_change).collect(),
    }))
}

/// The workers seen recently, when the job is run by workers (none are read otherwise).
pub(crate) async fn recent_workers(
    state: &AppState,
    job: &jobward_store::JobRow,
    now: Timestamp,
) -> Result<Vec<jobward_store::WorkerRow>, ApiError> {
    if job.spec.queue.is_none() {
        return Ok(Vec::new());
    }
    let since = now - chrono::Duration::from_std(views::WORKERS_RECENT).unwrap_or_default();
    Ok(state.store.workers(since).await?)
}

/// Furthest ahead a delayed run may be set.
const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// When a delayed run may start: at `run_at` (RFC 3339) or `delay` from the ledger's `now`;
/// `None` when neither is given.
pub(crate) fn run_at_of(
    run_at: Option<&str>,
    delay: Option<&str>,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    let ahead = |d: Duration, field: &str| -> Result<Timestamp, ApiError> {
        if d > MAX_DELAY {
            return Err(ApiError::bad_request(format!(
                "{field} is more than 366 days ahead"
            )));
        }
        Ok(now + chrono::Duration::from_std(d).unwrap_or_default())
    };
    match (run_at, delay) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("give run_at or delay, not both")),
        (Some(t), None) => {
            let at = parse_time("run_at", t)?;
            ahead(jobward_core::deadline::between(now, at), "run_at")?;
            Ok(Some(at))
        }
        (None, Some(d)) => Ok(Some(ahead(
            parse_positive_duration(d).map_err(|e| ApiError::bad_request(format!("delay: {e}")))?,
            "delay",
        )?)),
        (None, None) => Ok(None),
    }
}

/// A trigger's fields in the ledger's terms; `delay` counts from the ledger's `now`.
fn trigger_params(
    job: String,
    r: TriggerRequest,
    actor: String,
    now: Timestamp,
) -> Result<TriggerParams, ApiError> {
    Ok(TriggerParams {
        run_at: run_at_of(r.run_at.as_deref(), r.delay.as_deref(), now)?,
        job,
        actor,
        payload: r.payload,
        idempotency_key: r.idempotency_key,
        priority: r.priority,
    })
}

#[utoipa::path(post, path = "/api/jobs/{name}/trigger", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    request_body(content = Option<TriggerRequest>, description = "optional payload, idempotency key, priority, and run_at or delay for a delayed run"),
    responses((status = 201, description = "a run was queued (at once, or for run_at)", body = TriggerResponse),
              (status = 200, description = "nothing new will run: the idempotency key matched an earlier trigger (that execution), or the run was recorded as skipped (overlap policy, paused job)", body = TriggerResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(req): OptionalJson<TriggerRequest>,
) -> Result<impl IntoResponse, ApiError> {
    job_name(&name)?;
    let params = trigger_params(name, req, caller.actor.clone(), now(&state).await?)?;
    let created = state.service.trigger(params).await?;
    let now = now(&state).await?;
    let skipped = !created.existing && created.execution.state == ExecState::Skipped;
    let queued = !created.existing && !skipped;
    Ok((
        if queued {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(TriggerResponse {
            created: queued,
            skipped,
            execution: views::execution(&created.execution, now),
            replaced: created.replaced,
        }),
    ))
}

/// Most triggers in one batch.
pub const MAX_TRIGGERS: usize = 1000;

#[utoipa::path(post, path = "/api/triggers", tag = "jobs",
    request_body = TriggerBatchRequest,
    responses((status = 200, description = "one answer per trigger, in order: accepted, repeated (idempotency key seen before) or rejected; all created in one transaction", body = TriggerBatchResponse),
              (status = "default", description = "an error of the whole request (nothing was created)", body = ErrorBody)))]
pub async fn trigger_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TriggerBatchRequest>,
) -> Result<axum::Json<TriggerBatchResponse>, ApiError> {
    if req.triggers.len() > MAX_TRIGGERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_TRIGGERS} triggers per batch, got {}",
            req.triggers.len()
        )));
    }
    let now = now(&state).await?;
    let actor = caller.actor.clone();
    let rejected = |job: String, e: ApiError| TriggerItemResult {
        job,
        result: ItemResult::Rejected,
        id: None,
        number: None,
        status: None,
        error: Some(ErrorDetail {
            code: e.code,
            message: e.message,
        }),
    };
    let mut results: Vec<Option<TriggerItemResult>> = vec![None; req.triggers.len()];
    let (mut params, mut at) = (Vec::new(), Vec::new());
    for (i, t) in req.triggers.iter().enumerate() {
        // What the schema rules out (a malformed name, a priority out of range) refuses the
        // whole batch; what only the ledger can judge is answered per item.
        job_name(&t.job).map_err(|e| e.of_item("triggers", i))?;
        match trigger_params(t.job.clone(), t.request(), actor.clone(), now) {
            Ok(p) => {
                service::check_trigger(&p).map_err(|e| ApiError::from(e).of_item("triggers", i))?;
                params.push(p);
                at.push(i);
            }
            Err(e) => results[i] = Some(rejected(t.job.clone(), e)),
        }
    }
    let done = state.service.trigger_many(params).await?;
    for (i, r) in at.into_iter().zip(done) {
        let job = req.triggers[i].job.clone();
        results[i] = Some(match r {
            Ok(c) => TriggerItemResult {
                job,
                result: if c.existing {
                    ItemResult::Repeated
                } else {
                    ItemResult::Accepted
                },
                id: Some(c.execution.id),
                number: Some(c.execution.number),
                status: Some(views::status(c.execution.state)),
                error: None,
            },
            Err(e) => rejected(job, e.into()),
        });
    }
    Ok(axum::Json(TriggerBatchResponse {
        results: results.into_iter().flatten().collect(),
    }))
}

async fn set_paused(
    state: &AppState,
    caller: &Caller,
    name: String,
    paused: bool,
) -> Result<axum::Json<PauseResponse>, ApiError> {
    job_name(&name)?;
    state
        .service
        .set_paused(&name, paused, &caller.actor)
        .await?;
    Ok(axum::Json(PauseResponse { name, paused }))
}

#[utoipa::path(post, path = "/api/jobs/{name}/pause", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    responses((status = 200, description = "paused: its fires are recorded as skipped (paused) and its queued executions wait", body = PauseResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<PauseResponse>, ApiError> {
    set_paused(&state, &caller, name, true).await
}

#[utoipa::path(post, path = "/api/jobs/{name}/resume", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    responses((status = 200, description = "resumed", body = PauseResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<PauseResponse>, ApiError> {
    set_paused(&state, &caller, name, false).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this job's executions.
    pub job: Option<String>,
    /// Only these states, comma-separated (e.g. `running,queued`).
    pub status: Option<String>,
    /// Queued at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Queued before this time (RFC 3339).
    pub until: Option<String>,
    /// Only running executions whose last heartbeat is older than this ("10m").
    pub stale_after: Option<String>,
    /// Only those that ended for this reason (e.g. `heartbeat_timeout`).
    pub reason: Option<String>,
    /// Only those of this trigger (schedule, catch_up, manual, retry, backfill, external).
    pub trigger: Option<String>,
    /// Only those held (or last held) by this worker id or node incarnation.
    pub owner: Option<String>,
    /// Only running executions whose lease expired (nobody heartbeats for them).
    pub lease_expired: Option<bool>,
    /// Keyset pagination: only executions with an id below this one (from `next_before`).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

pub(crate) fn parse_time(field: &str, v: &str) -> Result<Timestamp, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| ApiError::bad_request(format!("{field}: '{v}' is not an RFC 3339 time ({e})")))
}

/// An executions filter from its query parameters (the API's and the dashboard's).
pub(crate) fn filter_of(q: &ListQuery) -> Result<ExecutionFilter, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    if let Some(b) = q.before
        && b < 1
    {
        return Err(ApiError::bad_request(format!(
            "before must be a positive execution id, got {b}"
        )));
    }
    let mut states = Vec::new();
    for s in q
        .status
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        states.push(
            s.parse::<ExecState>()
                .map_err(|e| ApiError::bad_request(format!("status: {e}")))?,
        );
    }
    Ok(ExecutionFilter {
        job: q.job.clone().filter(|j| !j.is_empty()),
        states,
        stale_after: q
            .stale_after
            .as_deref()
            .map(|v| {
                parse_positive_duration(v)
                    .map_err(|e| ApiError::bad_request(format!("stale_after: {e}")))
            })
            .transpose()?,
        since: q
            .since
            .as_deref()
            .map(|v| parse_time("since", v))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|v| parse_time("until", v))
            .transpose()?,
        before_id: q.before,
        limit: limit as u32,
        reason: q
            .reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.parse::<jobward_core::Reason>()
                    .map_err(|e| ApiError::bad_request(format!("reason: {e}")))
            })
            .transpose()?,
        trigger: q
            .trigger
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<jobward_store::Trigger>()
                    .map_err(|e| ApiError::bad_request(format!("trigger: {e}")))
            })
            .transpose()?,
        owner: q.owner.clone().filter(|o| !o.is_empty()),
        lease_expired: q.lease_expired.unwrap_or(false),
    })
}

#[utoipa::path(get, path = "/api/executions", tag = "executions",
    params(ListQuery),
    responses((status = 200, description = "executions, newest first, one page", body = ExecutionPage),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn executions(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<ExecutionPage>, ApiError> {
    let filter = filter_of(&q)?;
    let limit = i64::from(filter.limit);
    let rows = state.store.list_executions(filter).await?;
    let now = now(&state).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|e| e.id))
        .flatten();
    Ok(axum::Json(ExecutionPage {
        executions: rows.iter().map(|e| views::execution(e, now)).collect(),
        next_before,
    }))
}

#[utoipa::path(get, path = "/api/executions/{id}", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    responses((status = 200, description = "the execution", body = ExecutionView),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn execution(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::Json<ExecutionView>, ApiError> {
    let id = execution_id(id)?;
    let e = state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} does not exist")))?;
    Ok(axum::Json(views::execution(&e, now(&state).await?)))
}

#[utoipa::path(get, path = "/api/executions/{id}/events", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    responses((status = 200, description = "its event log: every transition, note and refused report", body = EventList),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::Json<EventList>, ApiError> {
    let id = execution_id(id)?;
    if state.store.get_execution(id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "execution {id} does not exist"
        )));
    }
    let events = state.store.events(id).await?;
    Ok(axum::Json(EventList {
        execution_id: id,
        events: events.iter().map(views::event).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// How much of the end of the log, in bytes (1 to 1048576, default 65536).
    #[param(minimum = 1, maximum = 1048576)]
    pub tail_bytes: Option<i64>,
}

#[utoipa::path(get, path = "/api/executions/{id}/log", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1), LogQuery),
    responses((status = 200, description = "the tail of its output", body = LogView),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn log(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<axum::Json<LogView>, ApiError> {
    let id = execution_id(id)?;
    let tail = q.tail_bytes.unwrap_or(64 * 1024);
    if !(1..=1024 * 1024).contains(&tail) {
        return Err(ApiError::bad_request(format!(
            "tail_bytes must be between 1 and 1048576, got {tail}"
        )));
    }
    let e = state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} does not exist")))?;
    let path = log_path(&state.log_dir, &e.job, e.id);
    let shown = path.display().to_string();
    let log = tokio::task::spawn_blocking(move || {
        jobward_exec::log::read_tail(&path, tail as u64)
            .ok()
            .flatten()
    })
    .await
    .unwrap_or(None);
    Ok(axum::Json(LogView {
        execution_id: id,
        log,
        path: Some(shown),
    }))
}

#[utoipa::path(post, path = "/api/executions/{id}/cancel", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    responses((status = 200, description = "cancelled if it was queued; a running one is stopped by its owner (SIGTERM, then SIGKILL)", body = CancelResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::Json<CancelResponse>, ApiError> {
    let id = execution_id(id)?;
    let out = state.service.cancel(id, caller.actor.clone()).await?;
    let now = now(&state).await?;
    let (result, e) = match &out {
        CancelOutcome::Cancelled { execution } => (CancelResult::Cancelled, execution),
        CancelOutcome::Requested { execution } => (CancelResult::Requested, execution),
        CancelOutcome::AlreadyTerminal { execution } => (CancelResult::AlreadyTerminal, execution),
    };
    Ok(axum::Json(CancelResponse {
        result,
        execution: views::execution(e, now),
    }))
}

#[utoipa::path(post, path = "/api/executions/{id}/progress", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    request_body = ProgressRequest,
    security(()),
    responses((status = 200, description = "recorded; proven by the execution's own lease token, no role token needed", body = ExecutionView),
              (status = "default", description = "an error (409 lease_lost when the token is not the current one)", body = ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<ProgressRequest>,
) -> Result<axum::Json<ExecutionView>, ApiError> {
    let id = execution_id(id)?;
    let row = state
        .service
        .progress(ProgressParams {
            lease: jobward_store::LeaseRef {
                id,
                attempt: req.attempt,
                token: req.lease_token,
            },
            progress: req.progress,
            phase: req.phase,
            checkpoint: req.checkpoint,
            actor: "job".into(),
        })
        .await?;
    Ok(axum::Json(views::execution(&row, now(&state).await?)))
}
