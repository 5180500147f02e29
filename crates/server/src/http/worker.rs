//! The worker protocol: claim → heartbeat → complete (or release), every report fenced by its
//! lease token. A report whose lease is lost gets 409 `lease_lost`, is written to the event
//! log and counted, and changes nothing.

use std::time::Duration;

use axum::extract::State;
use jobward_core::{LOCAL_RUNNER, Reason, State as ExecState, validate_name};
use jobward_protocol::*;
use jobward_store::{
    ClaimParams, CompleteParams, HeartbeatParams, LeaseBeat, LeaseRef, Outcome, ReleaseParams,
    StoreError,
};
use serde_json::Value;

use super::AppState;
use super::api::MAX_PAYLOAD_BYTES;
use super::error::{ApiError, ApiJson};
use super::views;
use crate::executor::log_path;
use crate::metrics;

const MAX_WAIT_MS: u64 = 30_000;
const MAX_LEASES: usize = 1000;
const MAX_LOG_TAIL: usize = 64 * 1024;

fn worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "worker_id must be 1 to 200 printable characters",
        ));
    }
    Ok(())
}

/// Attempt numbers are small; a larger one is a malformed report.
pub fn check_attempt(attempt: u32) -> Result<(), ApiError> {
    if !(1..=1_000_000).contains(&attempt) {
        return Err(ApiError::bad_request(format!(
            "attempt must be between 1 and 1000000, got {attempt}"
        )));
    }
    Ok(())
}

/// Checks what a worker or a job reports about a run.
pub fn check_report(
    progress: Option<f64>,
    phase: Option<&str>,
    checkpoint: Option<&Value>,
) -> Result<(), ApiError> {
    if let Some(p) = progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::bad_request(format!(
            "progress must be between 0 and 1, got {p}"
        )));
    }
    if let Some(p) = phase
        && (p.len() > 200 || p.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "phase must be at most 200 printable characters",
        ));
    }
    if let Some(c) = checkpoint
        && c.to_string().len() > MAX_PAYLOAD_BYTES
    {
        return Err(ApiError::bad_request(format!(
            "checkpoint is larger than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn lost_view(l: &jobward_store::LostLease) -> LostLeaseView {
    LostLeaseView {
        id: l.id,
        status: l.state.map(|s| s.to_string()),
        reason: l.reason.map(|r| r.to_string()),
    }
}

#[utoipa::path(post, path = "/api/worker/claim", tag = "worker",
    request_body = ClaimRequest,
    responses((status = 200, description = "claimed executions with their leases (empty when none came within wait_ms)", body = ClaimResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<axum::Json<ClaimResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    if req.queues.is_empty() || req.queues.len() > 20 {
        return Err(ApiError::bad_request("queues must name 1 to 20 queues"));
    }
    for q in &req.queues {
        validate_name("queue name", q).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if q == LOCAL_RUNNER {
            return Err(ApiError::bad_request(
                "'local' is reserved for the executions nodes run themselves",
            ));
        }
    }
    if !(1..=100).contains(&req.batch) {
        return Err(ApiError::bad_request(format!(
            "batch must be between 1 and 100, got {}",
            req.batch
        )));
    }
    if req.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, got {}",
            req.wait_ms
        )));
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
    loop {
        // A server that is shutting down hands out no new work.
        if state.shutting_down() {
            return Ok(axum::Json(ClaimResponse { executions: vec![] }));
        }
        let mut claimed = Vec::new();
        for q in &req.queues {
            let left = req.batch - claimed.len() as u32;
            if left == 0 {
                break;
            }
            claimed.extend(
                state
                    .store
                    .claim(ClaimParams {
                        owner: req.worker_id.clone(),
                        runner: q.clone(),
                        node_id: None,
                        limit: left,
                    })
                    .await?,
            );
        }
        if !claimed.is_empty() || tokio::time::Instant::now() >= until {
            claimed.iter().for_each(metrics::claimed);
            let executions = claimed
                .into_iter()
                .map(|e| ClaimedExecution {
                    id: e.id,
                    job: e.job.clone(),
                    number: e.number,
                    attempt: e.attempt,
                    max_attempts: e.max_attempts,
                    command: e.command.clone(),
                    trigger: e.trigger.to_string(),
                    scheduled_for: e.scheduled_for,
                    payload: e.payload.clone(),
                    checkpoint: e.checkpoint.clone(),
                    lease_token: e.lease_token.clone().unwrap_or_default(),
                    heartbeat_interval_ms: (e.timeouts.heartbeat / 3).as_millis() as u64,
                    heartbeat_timeout_ms: e.timeouts.heartbeat.as_millis() as u64,
                    terminate_after_ms: e.timeouts.run.as_millis() as u64,
                    kill_grace_ms: e.timeouts.kill_grace.as_millis() as u64,
                    traceparent: crate::telemetry::traceparent(&e),
                })
                .collect();
            return Ok(axum::Json(ClaimResponse { executions }));
        }
        // Long poll: woken when work for these queues may have arrived (from any node), and
        // polling now and then for work written by other processes on the same SQLite file.
        let _ = tokio::time::timeout(
            Duration::from_millis(250).min(until - tokio::time::Instant::now()),
            state.claim_wait(&req.queues),
        )
        .await;
    }
}

#[utoipa::path(post, path = "/api/worker/heartbeat", tag = "worker",
    request_body = HeartbeatRequest,
    responses((status = 200, description = "renewed leases, lost ones (stop them now) and requested cancels", body = HeartbeatResponse),
              (status = 409, description = "lease_lost: every lease in the report is lost; stop them all now", body = ErrorBody),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<axum::Json<HeartbeatResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    if req.leases.len() > MAX_LEASES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LEASES} leases per heartbeat"
        )));
    }
    for l in &req.leases {
        check_attempt(l.attempt)?;
        check_report(l.progress, l.phase.as_deref(), l.checkpoint.as_ref())?;
    }
    let leases = req
        .leases
        .into_iter()
        .map(|l| LeaseBeat {
            lease: LeaseRef {
                id: l.id,
                attempt: l.attempt,
                token: l.lease_token,
            },
            progress: l.progress,
            phase: l.phase,
            checkpoint: l.checkpoint,
        })
        .collect();
    let r = state
        .store
        .heartbeat(HeartbeatParams {
            owner: req.worker_id,
            leases,
            node: None,
        })
        .await?;
    r.lost.iter().for_each(|_| metrics::refused("heartbeat"));
    // A report whose every lease is stale is refused as a whole (409), like a completion.
    if !r.lost.is_empty() && r.renewed.is_empty() {
        let what: Vec<String> = r
            .lost
            .iter()
            .map(|l| {
                format!(
                    "execution {} is {}",
                    l.id,
                    l.state
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "gone".into())
                )
            })
            .collect();
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "lease_lost",
            format!(
                "lease lost: {}; the heartbeat was refused and changed nothing",
                what.join(", ")
            ),
        ));
    }
    Ok(axum::Json(HeartbeatResponse {
        renewed: r.renewed,
        lost: r.lost.iter().map(lost_view).collect(),
        cancel: r
            .cancel_requested
            .iter()
            .map(|(id, reason)| CancelRequestView {
                id: *id,
                reason: reason.to_string(),
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/api/worker/complete", tag = "worker",
    request_body = CompleteRequest,
    responses((status = 200, description = "recorded; the same completion sent again gets the same answer", body = CompleteResponse),
              (status = 409, description = "lease_lost: the lease was reclaimed; the report was refused and changed nothing", body = ErrorBody),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<axum::Json<CompleteResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    check_attempt(req.attempt)?;
    if req.error.as_ref().is_some_and(|e| e.len() > 4096) {
        return Err(ApiError::bad_request(
            "error must be at most 4096 characters",
        ));
    }
    if req
        .log_tail
        .as_ref()
        .is_some_and(|t| t.len() > MAX_LOG_TAIL)
    {
        return Err(ApiError::bad_request(format!(
            "log_tail is larger than {MAX_LOG_TAIL} bytes"
        )));
    }
    let lease = LeaseRef {
        id: req.id,
        attempt: req.attempt,
        token: req.lease_token.clone(),
    };
    let detail = req.error.clone().filter(|e| !e.trim().is_empty());
    let outcome = match req.outcome.as_str() {
        "completed" => Outcome::success(req.exit_code.unwrap_or(0)),
        "failed" => {
            let (reason, what) = match (req.exit_code, req.signal) {
                (Some(c), _) if c != 0 => (Reason::ExitCode, format!("exited with code {c}")),
                (_, Some(s)) => (
                    Reason::Signal,
                    format!("killed by signal {s} ({})", jobward_exec::signal_name(s)),
                ),
                _ => (
                    Reason::WorkerError,
                    "the worker reported a failure".to_string(),
                ),
            };
            let message = match &detail {
                Some(d) => format!("{what}: {d}"),
                None => what,
            };
            Outcome {
                reason: Some(reason),
                message: Some(message),
                exit_code: req.exit_code,
                signal: req.signal,
            }
        }
        "timed_out" => Outcome {
            reason: Some(Reason::RunTimeout),
            message: Some(
                detail
                    .clone()
                    .unwrap_or_else(|| "the worker stopped it at its run timeout".into()),
            ),
            exit_code: req.exit_code,
            signal: req.signal,
        },
        "cancelled" => {
            let reason = state
                .store
                .get_execution(req.id)
                .await?
                .and_then(|e| e.cancel_reason)
                .unwrap_or(Reason::CancelRequested);
            Outcome {
                reason: Some(reason),
                message: Some(
                    detail
                        .clone()
                        .unwrap_or_else(|| format!("stopped by its worker on request ({reason})")),
                ),
                exit_code: req.exit_code,
                signal: req.signal,
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown outcome '{other}' (expected completed, failed, timed_out or cancelled)"
            )));
        }
    };
    let settled = match state
        .store
        .complete(CompleteParams {
            lease,
            outcome,
            actor: req.worker_id.clone(),
        })
        .await
    {
        Ok(s) => s,
        Err(e @ StoreError::LeaseLost { .. }) => {
            metrics::refused("completion");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if !settled.repeated {
        metrics::transition(&settled.execution);
        if let Some(tail) = &req.log_tail {
            let path = log_path(&state.log_dir, &settled.execution.job, settled.execution.id);
            let tail = tail.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut sink = jobward_exec::log::LogSink::create(&path, 2 * MAX_LOG_TAIL as u64)?;
                sink.write(tail.as_bytes())
            })
            .await;
        }
        state.after_settled(&settled);
    }
    let now = state.store.now().await?;
    Ok(axum::Json(CompleteResponse {
        execution: views::execution(&settled.execution, now),
        retry: settled.retry.as_ref().map(|r| views::execution(r, now)),
    }))
}

#[utoipa::path(post, path = "/api/worker/release", tag = "worker",
    request_body = ReleaseRequest,
    responses((status = 200, description = "handed back: each attempt is cancelled (handed_back) and runs again at once", body = ReleaseResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> Result<axum::Json<ReleaseResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    if req.leases.len() > MAX_LEASES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LEASES} leases per release"
        )));
    }
    for l in &req.leases {
        check_attempt(l.attempt)?;
    }
    let why = req
        .reason
        .clone()
        .unwrap_or_else(|| "it is shutting down".into());
    let r = state
        .store
        .release(ReleaseParams {
            owner: req.worker_id.clone(),
            leases: req
                .leases
                .iter()
                .map(|l| LeaseRef {
                    id: l.id,
                    attempt: l.attempt,
                    token: l.lease_token.clone(),
                })
                .collect(),
            message: format!(
                "handed back by worker {}: {}",
                req.worker_id,
                why.chars().take(500).collect::<String>()
            ),
            actor: req.worker_id.clone(),
        })
        .await?;
    r.lost.iter().for_each(|_| metrics::refused("release"));
    for s in &r.released {
        metrics::transition(&s.execution);
        crate::telemetry::settled(&state.store, s);
    }
    Ok(axum::Json(ReleaseResponse {
        released: r.released.iter().map(|s| s.execution.id).collect(),
        retries: r
            .released
            .iter()
            .filter_map(|s| s.retry.as_ref().map(|e| e.id))
            .collect(),
        lost: r.lost.iter().map(lost_view).collect(),
    }))
}

/// Whether an execution ended for good: failed or timed out with no retry left.
pub fn failed_for_good(s: &jobward_store::Settled) -> bool {
    matches!(s.execution.state, ExecState::Failed | ExecState::TimedOut) && s.retry.is_none()
}
