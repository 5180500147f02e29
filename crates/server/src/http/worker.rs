//! The worker protocol: claim → heartbeat → complete (or release), every report fenced by its
//! lease token. A report whose lease is lost gets 409 `lease_lost`, is written to the event
//! log and counted, and changes nothing.

use std::time::Duration;

use axum::extract::State;
use jobward_core::{LOCAL_RUNNER, Reason, validate_name};
use jobward_protocol::*;
use jobward_store::{
    ClaimParams, CompleteParams, HeartbeatParams, LeaseBeat, LeaseRef, ReleaseParams, Serves,
    Settled, StoreError,
};

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::{service, views};

const MAX_WAIT_MS: u64 = 30_000;
const MAX_LEASES: usize = 1000;
const MAX_HANDLERS: usize = 200;
/// Most completions in one batch.
pub const MAX_COMPLETIONS: usize = 1000;

fn worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "worker_id must be 1 to 200 printable characters",
        ));
    }
    Ok(())
}

fn lost_view(l: &jobward_store::LostLease) -> LostLeaseView {
    LostLeaseView {
        id: l.id,
        status: l.state.map(views::status),
        reason: l.reason.map(|r| r.to_string()),
    }
}

/// What a claiming worker runs: everything, or command jobs (when `commands`) and the
/// handler jobs it names.
fn serves_of(handlers: Option<&[String]>, commands: Option<bool>) -> Result<Serves, ApiError> {
    let Some(handlers) = handlers else {
        return Ok(match commands {
            None | Some(true) => Serves::All,
            Some(false) => Serves::Only {
                commands: false,
                handlers: Vec::new(),
            },
        });
    };
    if handlers.len() > MAX_HANDLERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_HANDLERS} handlers per worker, got {}",
            handlers.len()
        )));
    }
    for h in handlers {
        validate_name("job name", h)
            .map_err(|e| ApiError::bad_request(format!("handlers: {e}")))?;
    }
    Ok(Serves::Only {
        commands: commands.unwrap_or(false),
        handlers: handlers.to_vec(),
    })
}

/// The queues, batch size and wait of a claim.
fn check_claim(
    queues: &[String],
    batch: u32,
    min_batch: u32,
    wait_ms: u64,
) -> Result<(), ApiError> {
    if queues.is_empty() || queues.len() > 20 {
        return Err(ApiError::bad_request("queues must name 1 to 20 queues"));
    }
    for q in queues {
        validate_name("queue name", q).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if q == LOCAL_RUNNER {
            return Err(ApiError::bad_request(
                "'local' is reserved for the executions nodes run themselves",
            ));
        }
    }
    if !(min_batch..=100).contains(&batch) {
        return Err(ApiError::bad_request(format!(
            "batch must be between {min_batch} and 100, got {batch}"
        )));
    }
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, got {wait_ms}"
        )));
    }
    Ok(())
}

fn claimed_view(e: &jobward_store::ExecutionRow) -> ClaimedExecution {
    ClaimedExecution {
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
        traceparent: crate::telemetry::traceparent(e),
    }
}

/// Claims up to `batch` from `queues` in order of preference; when none is claimable, waits
/// up to `wait_ms` for work to arrive (woken for these queues only).
async fn claim_from(
    state: &AppState,
    worker: &str,
    queues: &[String],
    serves: &Serves,
    batch: u32,
    wait_ms: u64,
) -> Result<Vec<ClaimedExecution>, ApiError> {
    if batch == 0 {
        return Ok(vec![]);
    }
    state.service.worker_seen(worker, queues, serves).await?;
    let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        // A server that is shutting down hands out no new work.
        if state.shutting_down() {
            return Ok(vec![]);
        }
        let mut claimed = Vec::new();
        for q in queues {
            let left = batch - claimed.len() as u32;
            if left == 0 {
                break;
            }
            claimed.extend(
                state
                    .service
                    .claim(ClaimParams {
                        serves: serves.clone(),
                        owner: worker.to_string(),
                        runner: q.clone(),
                        node_id: None,
                        limit: left,
                    })
                    .await?,
            );
        }
        if !claimed.is_empty() || tokio::time::Instant::now() >= until {
            return Ok(claimed.iter().map(claimed_view).collect());
        }
        // Long poll: woken when work for these queues may have arrived (from any node), and
        // polling now and then for work written by other processes on the same SQLite file.
        let _ = tokio::time::timeout(
            Duration::from_millis(250).min(until - tokio::time::Instant::now()),
            state.claim_wait(queues),
        )
        .await;
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
    check_claim(&req.queues, req.batch, 1, req.wait_ms)?;
    let serves = serves_of(req.handlers.as_deref(), req.commands)?;
    let executions = claim_from(
        &state,
        &req.worker_id,
        &req.queues,
        &serves,
        req.batch,
        req.wait_ms,
    )
    .await?;
    Ok(axum::Json(ClaimResponse { executions }))
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
        .service
        .heartbeat(HeartbeatParams {
            owner: req.worker_id,
            leases,
            node: None,
        })
        .await?;
    heartbeat_answer(r).map(axum::Json)
}

/// A heartbeat's answer: renewed, lost and cancel-requested leases; a report whose every
/// lease is stale is refused as a whole (409), like a completion.
pub(crate) fn heartbeat_answer(
    r: jobward_store::HeartbeatReport,
) -> Result<HeartbeatResponse, ApiError> {
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
            ErrorCode::LeaseLost,
            format!(
                "lease lost: {}; the heartbeat was refused and changed nothing",
                what.join(", ")
            ),
        ));
    }
    Ok(HeartbeatResponse {
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
    })
}

/// How a worker's report is recorded: its outcome, exit code, signal and error in the
/// ledger's terms.
/// What the schema says of a completion report, checked before anything is read or written.
pub(crate) fn well_formed(r: &CompletionReport) -> Result<(), ApiError> {
    if r.error.as_ref().is_some_and(|e| e.len() > 4096) {
        return Err(ApiError::bad_request(
            "error must be at most 4096 characters",
        ));
    }
    service::check_completion(r.attempt, r.log_tail.as_deref())?;
    Ok(())
}

pub(crate) async fn outcome_of(
    state: &AppState,
    r: &CompletionReport,
) -> Result<jobward_store::Outcome, ApiError> {
    let detail = r.error.clone().filter(|e| !e.trim().is_empty());
    let ended = |reason: Reason, message: String| jobward_store::Outcome {
        reason: Some(reason),
        message: Some(message),
        exit_code: r.exit_code,
        signal: r.signal,
    };
    Ok(match r.outcome {
        Outcome::Completed => jobward_store::Outcome::success(r.exit_code.unwrap_or(0)),
        Outcome::Failed => {
            let (reason, what) = match (r.exit_code, r.signal) {
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
            ended(
                reason,
                match &detail {
                    Some(d) => format!("{what}: {d}"),
                    None => what,
                },
            )
        }
        Outcome::TimedOut => ended(
            Reason::RunTimeout,
            detail.unwrap_or_else(|| "the worker stopped it at its run timeout".into()),
        ),
        Outcome::Cancelled => {
            // Recorded with the reason the cancel was requested for (a replace, a shutdown).
            let reason = state
                .store
                .get_execution(r.id)
                .await?
                .and_then(|e| e.cancel_reason)
                .unwrap_or(Reason::CancelRequested);
            ended(
                reason,
                detail.unwrap_or_else(|| format!("stopped by its worker on request ({reason})")),
            )
        }
    })
}

async fn completion_params(
    state: &AppState,
    worker: &str,
    r: CompletionReport,
) -> Result<(CompleteParams, Option<String>), ApiError> {
    let outcome = outcome_of(state, &r).await?;
    Ok((
        CompleteParams {
            lease: LeaseRef {
                id: r.id,
                attempt: r.attempt,
                token: r.lease_token,
            },
            outcome,
            actor: worker.to_string(),
        },
        r.log_tail,
    ))
}

fn completion_result(id: i64, r: Result<Settled, StoreError>) -> CompletionResult {
    match r {
        Ok(s) => CompletionResult {
            id,
            result: if s.repeated {
                ItemResult::Repeated
            } else {
                ItemResult::Accepted
            },
            status: Some(views::status(s.execution.state)),
            retry: s.retry.as_ref().map(|e| e.id),
            error: None,
        },
        Err(e) => {
            let lost = matches!(e, StoreError::LeaseLost { .. });
            let e = ApiError::from(e);
            CompletionResult {
                id,
                result: if lost {
                    ItemResult::LeaseLost
                } else {
                    ItemResult::Rejected
                },
                status: None,
                retry: None,
                error: Some(ErrorDetail {
                    code: e.code,
                    message: e.message,
                }),
            }
        }
    }
}

/// Records a batch of completions in one transaction; each is answered alone.
/// Records a batch of completions, each answered alone, and when `claim` is given claims in
/// the same transaction (one commit for a worker's whole exchange).
async fn complete_all(
    state: &AppState,
    worker: &str,
    reports: Vec<CompletionReport>,
    claim: Option<ClaimParams>,
) -> Result<(Vec<CompletionResult>, Vec<jobward_store::ExecutionRow>), ApiError> {
    if reports.len() > MAX_COMPLETIONS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_COMPLETIONS} completions per call"
        )));
    }
    for (i, r) in reports.iter().enumerate() {
        well_formed(r).map_err(|e| e.of_item("completions", i))?;
    }
    let ids: Vec<i64> = reports.iter().map(|r| r.id).collect();
    let mut results: Vec<Option<CompletionResult>> = vec![None; reports.len()];
    let mut items = Vec::with_capacity(reports.len());
    let mut at = Vec::with_capacity(reports.len());
    for (i, r) in reports.into_iter().enumerate() {
        let id = r.id;
        match completion_params(state, worker, r).await {
            Ok(item) => {
                items.push(item);
                at.push(i);
            }
            Err(e) => {
                results[i] = Some(CompletionResult {
                    id,
                    result: ItemResult::Rejected,
                    status: None,
                    retry: None,
                    error: Some(ErrorDetail {
                        code: e.code,
                        message: e.message,
                    }),
                })
            }
        }
    }
    let (done, claimed) = state.service.exchange(items, claim).await?;
    for (i, r) in at.into_iter().zip(done) {
        results[i] = Some(completion_result(ids[i], r));
    }
    Ok((results.into_iter().flatten().collect(), claimed))
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
    let report = CompletionReport {
        id: req.id,
        attempt: req.attempt,
        lease_token: req.lease_token,
        outcome: req.outcome,
        exit_code: req.exit_code,
        signal: req.signal,
        error: req.error,
        log_tail: req.log_tail,
    };
    well_formed(&report)?;
    let (params, tail) = completion_params(&state, &req.worker_id, report).await?;
    let settled = state.service.complete(params, tail).await?;
    let now = state.store.now().await?;
    Ok(axum::Json(CompleteResponse {
        execution: views::execution(&settled.execution, now),
        retry: settled.retry.as_ref().map(|r| views::execution(r, now)),
    }))
}

#[utoipa::path(post, path = "/api/worker/complete-batch", tag = "worker",
    request_body = CompleteBatchRequest,
    responses((status = 200, description = "one answer per completion, in order: accepted, repeated, lease_lost (refused, changed nothing) or rejected", body = CompleteBatchResponse),
              (status = "default", description = "an error of the whole request", body = ErrorBody)))]
pub async fn complete_batch(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompleteBatchRequest>,
) -> Result<axum::Json<CompleteBatchResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    let (results, _) = complete_all(&state, &req.worker_id, req.completions, None).await?;
    Ok(axum::Json(CompleteBatchResponse { results }))
}

#[utoipa::path(post, path = "/api/worker/exchange", tag = "worker",
    request_body = ExchangeRequest,
    responses((status = 200, description = "the completions' answers (in order), then what was claimed", body = ExchangeResponse),
              (status = "default", description = "an error of the whole request (nothing was recorded or claimed)", body = ErrorBody)))]
pub async fn exchange(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ExchangeRequest>,
) -> Result<axum::Json<ExchangeResponse>, ApiError> {
    worker_id(&req.worker_id)?;
    check_claim(&req.queues, req.batch, 0, req.wait_ms)?;
    let serves = serves_of(req.handlers.as_deref(), req.commands)?;
    if req.batch > 0 {
        state
            .service
            .worker_seen(&req.worker_id, &req.queues, &serves)
            .await?;
    }
    // The completions and a claim from the first queue share one transaction; a server that
    // is shutting down hands out no new work.
    let first = (req.batch > 0 && !state.shutting_down()).then(|| ClaimParams {
        serves: serves.clone(),
        owner: req.worker_id.clone(),
        runner: req.queues[0].clone(),
        node_id: None,
        limit: req.batch,
    });
    let (results, claimed) = complete_all(&state, &req.worker_id, req.completions, first).await?;
    let mut executions: Vec<ClaimedExecution> = claimed.iter().map(claimed_view).collect();
    let left = req.batch - executions.len() as u32;
    // Then the other queues, or the long poll when nothing came.
    if left > 0 && (req.queues.len() > 1 || (executions.is_empty() && req.wait_ms > 0)) {
        let wait = if executions.is_empty() {
            req.wait_ms
        } else {
            0
        };
        executions
            .extend(claim_from(&state, &req.worker_id, &req.queues, &serves, left, wait).await?);
    }
    Ok(axum::Json(ExchangeResponse {
        results,
        executions,
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
    let why = req
        .reason
        .clone()
        .unwrap_or_else(|| "it is shutting down".into());
    let r = state
        .service
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
