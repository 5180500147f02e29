//! Jobs defined at run time (create, replace, change, delete), backfill, nodes, and moving a
//! delayed run. Validation is the configuration file's (`crate::jobdef`); every change goes
//! through the service layer and is recorded with its actor.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use jobward_core::Timestamp;
use jobward_protocol::*;
use jobward_store::{Backfill, DeleteJob, JobSource, PutJob, Reschedule, StoreError};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::api::{job_name, parse_time, run_at_of};
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::{jobdef, views};

/// A store error of a job change, in the API's words (naming the configuration file).
fn refused(state: &AppState, e: StoreError) -> ApiError {
    match e {
        StoreError::JobOwnedByFile(name) => ApiError::conflict(format!(
            "job '{name}' is defined in the configuration file{}; change it there (the API changes only the jobs it created)",
            state
                .config_file
                .as_deref()
                .map(|f| format!(" {f}"))
                .unwrap_or_default()
        )),
        StoreError::JobBusy { name, live } => ApiError::conflict(format!(
            "job '{name}' has {live} live execution(s); delete with ?cancel=true to cancel them"
        )),
        StoreError::JobUndefined(name) => ApiError::not_found(format!("job '{name}' was deleted")),
        other => other.into(),
    }
}

/// A job with a command runs code on jobward hosts: only where the operator allowed it.
fn check_command(state: &AppState, spec: &jobward_core::JobSpec) -> Result<(), ApiError> {
    if !spec.command.is_empty() && !state.api_commands {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "job '{}' has a command, and commands run on jobward hosts: the API defines such jobs only where the operator set [server] api_commands = true (a handler job, with a queue and no command, needs no such setting)",
                spec.name
            ),
        ));
    }
    Ok(())
}

/// Validates a definition for `name` and stores it.
async fn store_definition(
    state: &AppState,
    caller: &Caller,
    name: String,
    def: JobDefinition,
    partial: bool,
    keep_ping_token: Option<String>,
) -> Result<(StatusCode, axum::Json<JobPutResponse>), ApiError> {
    if let Some(n) = &def.name
        && *n != name
    {
        return Err(ApiError::bad_request(format!(
            "job '{name}': field 'name': '{n}' does not match the name in the path"
        )));
    }
    let mut spec = jobdef::job_spec(name.clone(), &def, &state.job_defaults, &|_| true)
        .map_err(|e| ApiError::bad_request(format!("job '{name}': {e}")))?;
    if spec.ping_token_sha256.is_none() {
        spec.ping_token_sha256 = keep_ping_token;
    }
    check_command(state, &spec)?;
    let report = state
        .service
        .put_job(
            PutJob {
                spec,
                actor: caller.actor.clone(),
                partial,
            },
            def.paused,
        )
        .await
        .map_err(|e| refused(state, e))?;
    let row = state
        .store
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job '{name}' does not exist")))?;
    let now = state.store.now().await?;
    Ok((
        if report.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        axum::Json(JobPutResponse {
            created: report.created,
            definition: jobdef::definition(&row.spec),
            job: views::job(&row, now),
        }),
    ))
}

#[utoipa::path(put, path = "/api/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    request_body(content = JobDefinition, description = "the whole definition, as a [[job]] of the configuration file; absent fields take the server's [defaults]"),
    responses((status = 201, description = "created", body = JobPutResponse),
              (status = 200, description = "replaced (the change is recorded)", body = JobPutResponse),
              (status = "default", description = "an error: 400 naming the bad field, 403 for a command without [server] api_commands, 409 for a job the configuration file owns", body = ErrorBody)))]
pub async fn put_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(def): ApiJson<JobDefinition>,
) -> Result<(StatusCode, axum::Json<JobPutResponse>), ApiError> {
    jobward_core::validate_name("job name", &name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    store_definition(&state, &caller, name, def, false, None).await
}

#[utoipa::path(patch, path = "/api/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    request_body(content = JobDefinition, description = "a JSON merge patch of its definition: the fields given replace, null resets one to the default; {\"paused\": true|false} alone also works on jobs of the configuration file"),
    responses((status = 200, description = "changed (the change is recorded)", body = JobPutResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn patch_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(patch): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, axum::Json<JobPutResponse>), ApiError> {
    job_name(&name)?;
    let Some(fields) = patch.as_object() else {
        return Err(ApiError::bad_request(
            "a PATCH body is a JSON object of the fields to change",
        ));
    };
    let job = state
        .store
        .get_job(&name)
        .await?
        .filter(|j| j.defined)
        .ok_or_else(|| ApiError::not_found(format!("job '{name}' does not exist")))?;
    let actor = caller.actor.clone();
    // Pausing is not a change of the definition: it works on the file's jobs too.
    if job.source == JobSource::File || (fields.len() == 1 && fields.contains_key("paused")) {
        let paused = match fields.get("paused") {
            Some(serde_json::Value::Bool(p)) if fields.len() == 1 => *p,
            _ => {
                return Err(refused(&state, StoreError::JobOwnedByFile(name)));
            }
        };
        if job.paused != paused {
            state.service.set_paused(&name, paused, &actor).await?;
        }
        let row = state
            .store
            .get_job(&name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job '{name}' does not exist")))?;
        let now = state.store.now().await?;
        return Ok((
            StatusCode::OK,
            axum::Json(JobPutResponse {
                created: false,
                definition: jobdef::definition(&row.spec),
                job: views::job(&row, now),
            }),
        ));
    }
    let mut merged = serde_json::to_value(jobdef::definition(&job.spec))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    jobdef::merge_patch(&mut merged, &patch);
    let def: JobDefinition = serde_json::from_value(merged)
        .map_err(|e| ApiError::bad_request(format!("job '{name}': {e}")))?;
    // A patch that does not name the ping token keeps it (it is never shown back).
    let keep = if fields.contains_key("ping_token") {
        None
    } else {
        job.spec.ping_token_sha256.clone()
    };
    store_definition(&state, &caller, name, def, true, keep).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Cancel its live executions (queued ones at once, running ones are stopped); without
    /// it a job with live executions is not deleted.
    pub cancel: Option<bool>,
}

#[utoipa::path(delete, path = "/api/jobs/{name}", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"), DeleteQuery),
    responses((status = 200, description = "deleted: it no longer fires or can be triggered; its history stays, per its retention", body = JobDeleteResponse),
              (status = "default", description = "an error: 409 while it has live executions (unless cancel=true) or when the configuration file owns it", body = ErrorBody)))]
pub async fn delete_job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<axum::Json<JobDeleteResponse>, ApiError> {
    job_name(&name)?;
    let report = state
        .service
        .delete_job(DeleteJob {
            name: name.clone(),
            cancel: q.cancel.unwrap_or(false),
            actor: caller.actor.clone(),
        })
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(axum::Json(JobDeleteResponse {
        name,
        cancelled: report.cancelled,
    }))
}

#[utoipa::path(post, path = "/api/jobs/{name}/backfill", tag = "jobs",
    params(("name" = String, Path, description = "job name", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")),
    request_body = BackfillRequest,
    responses((status = 200, description = "each instant of its schedule in [from, to] without an execution got one (under its overlap policy); instants that had one were left alone", body = BackfillResponse),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn backfill(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<BackfillRequest>,
) -> Result<axum::Json<BackfillResponse>, ApiError> {
    job_name(&name)?;
    let from = parse_time("from", &req.from)?;
    let to = parse_time("to", &req.to)?;
    let report = state
        .service
        .backfill(Backfill {
            job: name,
            from,
            to,
            actor: caller.actor.clone(),
        })
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(axum::Json(BackfillResponse {
        created: report.created,
        already: report.already,
    }))
}

#[utoipa::path(patch, path = "/api/executions/{id}", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    request_body = ExecutionPatch,
    responses((status = 200, description = "its start moved (a time already past: now); its queue timeout counts from the new time", body = ExecutionView),
              (status = "default", description = "an error (409 unless it is queued)", body = ErrorBody)))]
pub async fn patch_execution(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<ExecutionPatch>,
) -> Result<axum::Json<ExecutionView>, ApiError> {
    if id < 1 {
        return Err(ApiError::not_found(format!(
            "execution {id} does not exist"
        )));
    }
    let now: Timestamp = state.store.now().await?;
    let Some(run_at) = run_at_of(req.run_at.as_deref(), req.delay.as_deref(), now)? else {
        return Err(ApiError::bad_request("give run_at or delay"));
    };
    let e = state
        .store
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} does not exist")))?;
    if e.state != jobward_core::State::Queued {
        return Err(ApiError::conflict(format!(
            "execution {id} is {}: only a queued execution can be moved",
            e.state
        )));
    }
    let row = state
        .service
        .reschedule(Reschedule {
            id,
            run_at,
            actor: caller.actor.clone(),
        })
        .await?;
    Ok(axum::Json(views::execution(&row, state.store.now().await?)))
}

#[utoipa::path(get, path = "/api/nodes", tag = "system",
    responses((status = 200, description = "every incarnation of every node, newest first", body = NodeList),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn nodes(State(state): State<AppState>) -> Result<axum::Json<NodeList>, ApiError> {
    let nodes = state.store.list_nodes().await?;
    let now = state.store.now().await?;
    Ok(axum::Json(NodeList {
        nodes: nodes.iter().map(|n| views::node(n, now)).collect(),
    }))
}

#[utoipa::path(post, path = "/api/executions/{id}/retry", tag = "executions",
    params(("id" = i64, Path, description = "execution id", minimum = 1)),
    responses((status = 201, description = "another attempt, queued now and linked to it (retry_of), with its payload and checkpoint", body = ExecutionView),
              (status = "default", description = "an error (400 unless it failed, timed out or was cancelled, or when a retry of it exists)", body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(StatusCode, axum::Json<ExecutionView>), ApiError> {
    if id < 1 {
        return Err(ApiError::not_found(format!(
            "execution {id} does not exist"
        )));
    }
    let row = state.service.retry_now(id, caller.actor.clone()).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(views::execution(&row, state.store.now().await?)),
    ))
}

#[utoipa::path(get, path = "/api/queues", tag = "system",
    responses((status = 200, description = "every queue with queued or running executions: due and later depth, the oldest due's wait, running, claims in the last 5 minutes", body = QueueList),
              (status = "default", description = "an error", body = ErrorBody)))]
pub async fn queues(State(state): State<AppState>) -> Result<axum::Json<QueueList>, ApiError> {
    let rows = state.store.queues().await?;
    let now = state.store.now().await?;
    Ok(axum::Json(QueueList {
        queues: rows.iter().map(|q| views::queue(q, now)).collect(),
    }))
}
