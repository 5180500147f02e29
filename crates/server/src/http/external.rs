//! Runs outside jobward: `jobward exec` (start, then heartbeats and an end proven by the
//! run's own lease token) and pings (`/api/ping/{name}/start|success|fail`, with the job's
//! ping token). Either way the run is an execution like any other: a start without an end is
//! settled by the reaper at its deadline, and a missed instant of an external job's schedule
//! is recorded by the reaper too.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use jobward_core::{Reason, State as ExecState};
use jobward_protocol::*;
use jobward_store::{
    CompleteParams, ExecutionFilter, ExecutionRow, HeartbeatParams, LeaseBeat, LeaseRef,
    StartExternal, StartOutcome,
};
use subtle::ConstantTimeEq;

use super::AppState;
use super::api::job_name;
use super::auth::{Access, Caller};
use super::error::{ApiError, ApiJson, ApiPath, OptionalJson};
use super::worker::{outcome_of, well_formed};
use crate::{jobdef, views};

fn label(v: Option<&str>, default: &str) -> String {
    let v = v
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(default);
    v.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
}

fn started_view(out: StartOutcome, now: chrono::DateTime<chrono::Utc>) -> ExternalStartResponse {
    match out {
        StartOutcome::Started(e) => ExternalStartResponse {
            started: true,
            attempt: e.attempt,
            lease_token: e.lease_token.clone(),
            heartbeat_interval_ms: (e.timeouts.heartbeat.as_millis() / 3).max(100) as u64,
            execution: views::execution(&e, now),
        },
        StartOutcome::Skipped(e) => ExternalStartResponse {
            started: false,
            attempt: e.attempt,
            lease_token: None,
            heartbeat_interval_ms: 0,
            execution: views::execution(&e, now),
        },
    }
}

#[utoipa::path(post, path = "/api/jobs/{name}/start", tag = "external", operation_id = "external_start",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    request_body(content = Option<ExternalStartRequest>, description = "where it runs"),
    responses((status = 201, description = "it runs: the execution is running under the returned lease (the instant of an external job's schedule that was due, or a new execution of trigger external)", body = ExternalStartResponse),
              (status = 200, description = "the job's overlap policy skipped it: it must not run", body = ExternalStartResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(req): OptionalJson<ExternalStartRequest>,
) -> Result<(StatusCode, axum::Json<ExternalStartResponse>), ApiError> {
    job_name(&name)?;
    for (field, v) in [("host", &req.host), ("user", &req.user)] {
        if v.as_ref().is_some_and(|v| v.chars().count() > 200) {
            return Err(ApiError::bad_request(format!(
                "{field} must be at most 200 characters"
            )));
        }
    }
    let host = label(req.host.as_deref(), "unknown-host");
    let user = label(req.user.as_deref(), "unknown-user");
    let pid = req.pid.unwrap_or(0);
    let out = state
        .service
        .start_external(StartExternal {
            job: name,
            owner: format!("exec:{host}:{pid}"),
            actor: caller.actor.clone(),
            note: format!("jobward exec on {host} by {user} (pid {pid})"),
            run_id: None,
            lease: None,
        })
        .await?;
    let r = started_view(out, state.store.now().await?);
    Ok((
        if r.started {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(r),
    ))
}

/// The lease an execution is held under, for the reports proven by its token.
async fn leased(state: &AppState, id: i64) -> Result<ExecutionRow, ApiError> {
    if id < 1 {
        return Err(ApiError::not_found(format!(
            "execution {id} does not exist"
        )));
    }
    state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} does not exist")))
}

#[utoipa::path(post, path = "/api/executions/{id}/heartbeat", tag = "external", operation_id = "lease_heartbeat",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    request_body = LeaseHeartbeatRequest,
    security(()),
    responses((status = 200, description = "renewed, or why not: `lost` (stop it: the ledger already ended it) or `cancel` (stop it and complete it cancelled); proven by the execution's lease token, no role token needed", body = HeartbeatResponse),
              (status = "default", description = "an error (409 lease_lost when the token is not the current one)", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<LeaseHeartbeatRequest>,
) -> Result<axum::Json<HeartbeatResponse>, ApiError> {
    crate::service::check_attempt(req.attempt)?;
    let row = leased(&state, id).await?;
    let r = state
        .service
        .heartbeat(HeartbeatParams {
            owner: row.lease_owner.clone().unwrap_or_default(),
            leases: vec![LeaseBeat {
                lease: LeaseRef {
                    id,
                    attempt: req.attempt,
                    token: req.lease_token,
                },
                ..Default::default()
            }],
            node: None,
        })
        .await?;
    super::worker::heartbeat_answer(r).map(axum::Json)
}

#[utoipa::path(post, path = "/api/executions/{id}/complete", tag = "external", operation_id = "lease_complete",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    request_body = CompletionReport,
    security(()),
    responses((status = 200, description = "recorded; proven by the execution's lease token, no role token needed; the same end sent again gets the same answer", body = CompleteResponse),
              (status = "default", description = "an error (409 lease_lost when the token is not the current one)", body = ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(report): ApiJson<CompletionReport>,
) -> Result<axum::Json<CompleteResponse>, ApiError> {
    if report.id != id {
        return Err(ApiError::bad_request(format!(
            "id {} in the body is not the execution {id} of the path",
            report.id
        )));
    }
    well_formed(&report)?;
    let row = leased(&state, id).await?;
    let outcome = outcome_of(&state, &report).await?;
    let settled = state
        .service
        .complete(
            CompleteParams {
                lease: LeaseRef {
                    id,
                    attempt: report.attempt,
                    token: report.lease_token,
                },
                outcome,
                actor: row.lease_owner.unwrap_or_else(|| "exec".into()),
            },
            report.log_tail,
        )
        .await?;
    let now = state.store.now().await?;
    Ok(axum::Json(CompleteResponse {
        execution: views::execution(&settled.execution, now),
        retry: settled.retry.as_ref().map(|r| views::execution(r, now)),
    }))
}

/// Who may ping a job: its own ping token, or an operate (or admin) token; anyone when the
/// server has no tokens and the job no ping token. The actor recorded.
fn ping_caller(
    state: &AppState,
    headers: &HeaderMap,
    job: &jobward_core::JobSpec,
) -> Result<String, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        if !state.tokens.enabled() && job.ping_token_sha256.is_none() {
            return Ok("ping".into());
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a ping needs the job's ping token (or an operate token): send Authorization: Bearer TOKEN",
        ));
    };
    if let Some(digest) = &job.ping_token_sha256
        && bool::from(
            jobdef::sha256_hex(presented)
                .as_bytes()
                .ct_eq(digest.as_bytes()),
        )
    {
        return Ok("ping".into());
    }
    if let Some(t) = state.tokens.find(presented)
        && Access::Operate.allows(t.role)
    {
        return Ok(format!("api:{}", t.name));
    }
    if !state.tokens.enabled() && job.ping_token_sha256.is_none() {
        return Ok("ping".into());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "the token may not ping job '{}' (a ping token pings only its own job)",
            job.name
        ),
    ))
}

#[utoipa::path(post, path = "/api/ping/{name}/{action}", tag = "external",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"),
           ("action" = String, Path, description = "start, success or fail", pattern = "^(start|success|fail)$")),
    request_body(content = Option<PingRequest>, description = "optional: run_id, and for an end exit_code, message, log_tail"),
    security(()),
    responses((status = 200, description = "recorded: a start runs until an end pairs with it (or its run timeout settles it timed_out); an end without a start is a run of zero known duration", body = PingResponse),
              (status = "default", description = "an error (401/403 without the job's ping token or an operate token)", body = ErrorBody)))]
pub async fn ping(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((name, action)): ApiPath<(String, String)>,
    OptionalJson(req): OptionalJson<PingRequest>,
) -> Result<axum::Json<PingResponse>, ApiError> {
    job_name(&name)?;
    if !matches!(action.as_str(), "start" | "success" | "fail") {
        return Err(ApiError::not_found(format!(
            "no ping '{action}' (expected start, success or fail)"
        )));
    }
    if let Some(r) = &req.run_id
        && (r.is_empty() || r.len() > 200)
    {
        return Err(ApiError::bad_request("run_id must be 1 to 200 characters"));
    }
    if req.message.as_ref().is_some_and(|m| m.len() > 4096) {
        return Err(ApiError::bad_request(
            "message must be at most 4096 characters",
        ));
    }
    crate::service::check_completion(1, req.log_tail.as_deref())?;
    let job = state
        .store
        .get_job(&name)
        .await?
        .filter(|j| j.defined)
        .ok_or_else(|| ApiError::not_found(format!("job '{name}' does not exist")))?;
    let actor = ping_caller(&state, &headers, &job.spec)?;
    let now = state.store.now().await?;
    // A start cannot heartbeat: it holds its lease past its run deadline, so a start that
    // never ends is settled `timed_out` (run_timeout) when its run timeout passes.
    let t = job.spec.timeouts;
    let lease = t.run
        + t.kill_grace
        + jobward_core::deadline::OWNER_MARGIN
        + std::time::Duration::from_secs(1);
    let start = |run_id: Option<String>, note: &str| StartExternal {
        job: name.clone(),
        owner: "ping".into(),
        actor: actor.clone(),
        note: note.to_string(),
        run_id,
        lease: Some(lease),
    };
    if action == "start" {
        let out = state
            .service
            .start_external(start(req.run_id.clone(), "a start ping"))
            .await?;
        let e = match out {
            StartOutcome::Started(e) | StartOutcome::Skipped(e) => e,
        };
        return Ok(axum::Json(PingResponse {
            ping: action,
            execution: views::execution(&e, now),
            unpaired: false,
        }));
    }
    // An end: the run its start began, else a run of unknown duration.
    // The run this end belongs to: the start with its run_id, else the job's latest start ping.
    let key = req.run_id.as_deref().map(StartExternal::run_key);
    let paired = state
        .store
        .list_executions(ExecutionFilter {
            job: Some(name.clone()),
            states: vec![ExecState::Running],
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_iter()
        .find(|e| match &key {
            Some(k) => e.idempotency_key.as_ref() == Some(k),
            None => e.lease_owner.as_deref() == Some("ping"),
        });
    let (row, unpaired) = match paired {
        Some(e) => (e, false),
        None => {
            let note = "an end ping without a start: its duration is unknown";
            match state
                .service
                .start_external(start(req.run_id.clone(), note))
                .await?
            {
                StartOutcome::Started(e) => (e, true),
                StartOutcome::Skipped(e) => {
                    return Ok(axum::Json(PingResponse {
                        ping: action,
                        execution: views::execution(&e, now),
                        unpaired: true,
                    }));
                }
            }
        }
    };
    // The same end sent again (its run_id's run already ended) is answered with that record.
    if row.state.is_terminal() {
        return Ok(axum::Json(PingResponse {
            ping: action,
            execution: views::execution(&row, now),
            unpaired,
        }));
    }
    let success = action == "success";
    let report = CompletionReport {
        id: row.id,
        attempt: row.attempt,
        lease_token: row.lease_token.clone().unwrap_or_default(),
        outcome: if success {
            Outcome::Completed
        } else {
            Outcome::Failed
        },
        exit_code: req.exit_code.or(if success { Some(0) } else { None }),
        signal: None,
        error: req
            .message
            .clone()
            .or_else(|| (!success).then(|| "a fail ping".to_string())),
        log_tail: req.log_tail.clone(),
    };
    let mut outcome = outcome_of(&state, &report).await?;
    if !success && outcome.reason.is_none() {
        outcome.reason = Some(Reason::WorkerError);
    }
    let settled = state
        .service
        .complete(
            CompleteParams {
                lease: LeaseRef {
                    id: row.id,
                    attempt: row.attempt,
                    token: report.lease_token,
                },
                outcome,
                actor,
            },
            report.log_tail,
        )
        .await?;
    Ok(axum::Json(PingResponse {
        ping: action,
        execution: views::execution(&settled.execution, state.store.now().await?),
        unpaired,
    }))
}

#[utoipa::path(get, path = "/api/system/alerts", tag = "system", operation_id = "alert_deliveries",
    responses((status = 200, description = "the alert sinks (kind, host, events) and the last 200 deliveries, newest first: event, job, summary, sink, attempts, last attempt, status (pending, sent, failed) and last result", body = Object),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn alerts(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(
        state
            .service
            .alerts()
            .map(|a| a.report())
            .unwrap_or_else(|| serde_json::json!({ "sinks": [], "deliveries": [] })),
    )
}
