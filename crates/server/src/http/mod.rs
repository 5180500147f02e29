//! The HTTP server: the API, the worker protocol, `/metrics`, the OpenAPI document and the
//! dashboard, with one error shape, a body limit, request timeouts and token access control.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod external;
pub mod manage;
pub mod openapi;
pub mod probes;
pub mod worker;

use std::future::Future;
use std::ops::Deref;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use jobward_protocol::ErrorCode;
use jobward_store::{DynStore, SyncReport};
use tokio::sync::Notify;

use crate::health::HealthSettings;
use crate::service::Service;
pub use auth::{Role, Token, Tokens};
use error::ApiError;

/// Largest request body: a completion with its log tail fits, a flood does not.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Largest batch of completions (or triggers): 1,000 items with room for some log tails.
pub const BATCH_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Longest a request may take (a long-polling claim waits at most 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Re-reads the configuration and syncs the jobs; an error is one line and changes nothing.
pub type Reloader =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<SyncReport, String>> + Send>> + Send + Sync>;

pub struct AppInner {
    pub store: DynStore,
    pub tokens: Tokens,
    pub log_dir: PathBuf,
    pub health: HealthSettings,
    /// Rung when the server begins to shut down: waiting claims return at once.
    shutdown: Notify,
    /// Every change to the ledger goes through it (a node's server shares the node's, so a
    /// cancelled or replaced local run stops at once).
    pub service: Arc<Service>,
    pub reload: Option<Reloader>,
    /// The node this server belongs to, for `/readyz`.
    pub node: Option<Arc<crate::node::NodeStatus>>,
    /// Per-process secret from which the dashboard derives its CSRF tokens.
    pub dashboard_key: [u8; 32],
    /// What a job defined through the API does not say for itself (the file's `[defaults]`).
    pub job_defaults: crate::jobdef::JobDefaults,
    /// Jobs with a command may be defined through the API (`[server] api_commands`).
    pub api_commands: bool,
    /// The configuration file, named when the API refuses to change a job it owns.
    pub config_file: Option<String>,
    /// The actor recorded for requests when no tokens are configured (`api:anonymous`; the
    /// CLI's in-process API records the user running it).
    pub anonymous_actor: String,
    shutting_down: AtomicBool,
}

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(store: DynStore, tokens: Tokens, log_dir: PathBuf) -> AppState {
        AppState(Arc::new(AppInner {
            service: Service::new(store.clone(), log_dir.clone(), None),
            store,
            tokens,
            log_dir,
            health: HealthSettings::default(),
            shutdown: Notify::new(),
            reload: None,
            node: None,
            dashboard_key: random_key(),
            job_defaults: Default::default(),
            api_commands: false,
            config_file: None,
            anonymous_actor: "api:anonymous".into(),
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Builder-style settings, before the state is shared.
    pub fn with(mut self, f: impl FnOnce(&mut AppInner)) -> AppState {
        f(Arc::get_mut(&mut self.0).expect("configure the state before sharing it"));
        self
    }

    /// Claims answer empty from now on, and waiting claims return.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }

    /// Resolves when work for one of `queues` may be claimable, or the server begins to shut
    /// down.
    pub async fn claim_wait(&self, queues: &[String]) {
        let signal = self.store.work_signal();
        tokio::select! {
            _ = signal.notified(queues) => {}
            _ = self.shutdown.notified() => {}
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout,
            "the request took too long",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /api/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = "default", description = "an error", body = jobward_protocol::ErrorBody)))]
pub async fn metrics_endpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = state.store.metrics().await?;
    let text = crate::metrics::render(&snapshot, state.store.database_errors());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    crate::metrics::handle();
    let read = Router::new()
        .route("/api/system/health", get(api::health))
        .route("/api/system/executions/running", get(api::running))
        .route("/api/jobs", get(api::jobs))
        .route("/api/jobs/{name}", get(api::job))
        .route("/api/executions", get(api::executions))
        .route("/api/executions/{id}", get(api::execution))
        .route("/api/executions/{id}/events", get(api::events))
        .route("/api/executions/{id}/log", get(api::log))
        .route("/api/nodes", get(manage::nodes))
        .route("/api/system/alerts", get(external::alerts))
        .route("/api/queues", get(manage::queues))
        .route("/metrics", get(metrics_endpoint))
        .route("/api/openapi.json", get(openapi::document))
        .route_layer(from_fn_with_state(state.clone(), auth::require_read));
    let operate = Router::new()
        .route("/api/system/cleanup/stale-executions", post(api::cleanup))
        .route("/api/system/reload", post(api::reload))
        .route("/api/jobs/{name}/trigger", post(api::trigger))
        .route(
            "/api/triggers",
            post(api::trigger_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/api/jobs/{name}/pause", post(api::pause))
        .route("/api/jobs/{name}/resume", post(api::resume))
        .route("/api/executions/{id}/cancel", post(api::cancel))
        .route("/api/executions/{id}", patch(manage::patch_execution))
        .route("/api/jobs/{name}/backfill", post(manage::backfill))
        .route("/api/jobs/{name}/start", post(external::start))
        .route("/api/executions/{id}/retry", post(manage::retry))
        .route_layer(from_fn_with_state(state.clone(), auth::require_operate));
    // Defining jobs: code that runs on jobward hosts, or work handed to workers.
    let admin = Router::new()
        .route(
            "/api/jobs/{name}",
            put(manage::put_job)
                .patch(manage::patch_job)
                .delete(manage::delete_job),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin));
    let worker = Router::new()
        .route("/api/worker/claim", post(worker::claim))
        .route("/api/worker/heartbeat", post(worker::heartbeat))
        .route("/api/worker/complete", post(worker::complete))
        .route("/api/worker/release", post(worker::release))
        .merge(
            // A batch of completions may carry a log tail each.
            Router::new()
                .route("/api/worker/complete-batch", post(worker::complete_batch))
                .route("/api/worker/exchange", post(worker::exchange))
                .layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_worker));
    // Proven by the execution's own lease token in the body.
    let by_lease = Router::new()
        .route("/api/executions/{id}/progress", post(api::progress))
        .route("/api/executions/{id}/heartbeat", post(external::heartbeat))
        .route("/api/executions/{id}/complete", post(external::complete))
        // Proven by the job's own ping token (or an operate token).
        .route("/api/ping/{name}/{action}", post(external::ping))
        // An end carries a log tail of up to 64 Ki characters (of up to 4 bytes each).
        .layer(DefaultBodyLimit::max(1024 * 1024));
    // Probes answer without a token.
    let probes = Router::new()
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz));
    Router::new()
        .merge(probes)
        .merge(read)
        .merge(operate)
        .merge(admin)
        .merge(worker)
        .merge(by_lease)
        .merge(dashboard::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(request_timeout))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
