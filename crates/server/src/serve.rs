//! `jobward serve` as a library call: a node and its HTTP server, wired together, from start
//! (registration and startup recovery) to graceful shutdown, telling the service manager
//! (systemd) where it is. The binary keeps only flags, configuration and exit codes.

use std::path::PathBuf;

use jobward_core::duration::format_duration;
use jobward_exec::service;
use jobward_store::{DynStore, SyncJobs};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::alerts::{Alerts, Webhook};
use crate::health::HealthSettings;
use crate::http::{AppState, Reloader, Tokens};
use crate::node::{Node, NodeConfig, NodeError, ShutdownReport};
use crate::telemetry::TelemetryConfig;

/// Everything a node and its HTTP server need, validated by the caller.
pub struct ServeConfig {
    pub store: DynStore,
    /// The database URL as it may be shown (no password).
    pub db_display: String,
    /// Where the configuration came from, for the startup line.
    pub config_source: String,
    /// Already bound: a taken port is refused before anything is written.
    pub listener: TcpListener,
    /// How runs and workers reach this server (default: from the listening address).
    pub public_url: Option<String>,
    pub node: NodeConfig,
    pub jobs: SyncJobs,
    pub tokens: Tokens,
    pub health: HealthSettings,
    pub webhooks: Vec<Webhook>,
    /// Re-reads the configuration (SIGHUP, `POST /api/system/reload`).
    pub reload: Option<Reloader>,
    pub telemetry: Option<TelemetryConfig>,
    /// What a job defined through the API does not say for itself.
    pub job_defaults: crate::jobdef::JobDefaults,
    /// Jobs with a command may be defined through the API (`[server] api_commands`).
    pub api_commands: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "this node was declared lost and could not rejoin (another live node holds its name, or the database refused); it stopped its processes"
    )]
    Superseded,
    #[error("{0}")]
    Setup(String),
}

/// What a served node did before it stopped.
#[derive(Debug, Clone)]
pub struct ServeReport {
    pub api_url: String,
    pub signal: &'static str,
    pub shutdown: ShutdownReport,
}

/// The base URL of the API as seen from this host.
pub fn api_url(listener: &TcpListener, public_url: Option<&str>) -> Result<String, ServeError> {
    if let Some(u) = public_url {
        return Ok(u.to_string());
    }
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Setup(format!("cannot read the listening address: {e}")))?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    Ok(format!("http://{host}:{}", addr.port()))
}

/// Runs a node and its HTTP server until SIGTERM or SIGINT (graceful shutdown), reloading on
/// SIGHUP. READY=1 goes to the service manager once startup recovery is done and the API
/// answers; WATCHDOG=1 while the main loops (maintenance, scheduler, claimers) complete ticks;
/// STOPPING=1 at shutdown.
pub async fn run(cfg: ServeConfig) -> Result<ServeReport, ServeError> {
    let ServeConfig {
        store,
        db_display,
        config_source,
        listener,
        public_url,
        mut node,
        jobs,
        tokens,
        health,
        webhooks,
        reload,
        telemetry,
        job_defaults,
        api_commands,
    } = cfg;
    std::fs::create_dir_all(&node.log_dir).map_err(|e| {
        ServeError::Setup(format!(
            "cannot create log directory {}: {e}",
            node.log_dir.display()
        ))
    })?;
    let api_url = api_url(&listener, public_url.as_deref())?;
    if let Some(t) = &telemetry {
        crate::telemetry::init(t).map_err(ServeError::Setup)?;
    }
    let alerts = Alerts::start(webhooks);
    node.api_url = Some(api_url.clone());
    node.alerts = alerts.clone();
    let log_dir: PathBuf = node.log_dir.clone();
    let name = node.name.clone();
    let grace = node.shutdown_grace;
    let auth = if tokens.0.is_empty() {
        "off (loopback only)"
    } else {
        "tokens"
    };
    let n_jobs = jobs.jobs.len();
    let started = Node::start(store.clone(), node, jobs).await?;
    let state = AppState::new(store.clone(), tokens, log_dir).with(|a| {
        a.health = health;
        a.service = started.service().clone();
        a.reload = reload.clone();
        a.node = Some(started.status());
        a.job_defaults = job_defaults;
        a.api_commands = api_commands;
        a.config_file = (config_source != "(defaults)").then(|| config_source.clone());
    });
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, crate::http::app(state.clone()))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .into_future(),
    );
    info!(
        node = %name, incarnation = %started.id(), db = %db_display, config = %config_source, api = %api_url,
        auth, jobs = n_jobs, added = started.sync.added.len(), changed = started.sync.changed.len(),
        removed = started.sync.removed.len(), recovered = started.recovery.report.recovered.len(), "jobward node serving"
    );
    // Startup recovery is done (Node::start returned) and the API is listening.
    service::ready(&format!("serving {api_url} as node {name}"));
    let status = started.status();
    let watchdog = service::spawn_watchdog(move || status.stalled_for());
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| ServeError::Setup(format!("cannot listen for SIGTERM: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| ServeError::Setup(format!("cannot listen for SIGHUP: {e}")))?;
    let why = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = hup.recv() => match &reload {
                Some(r) => match r().await {
                    Ok(rep) => {
                        state.service.wake_all();
                        info!(added = ?rep.added, changed = ?rep.changed, removed = ?rep.removed, "SIGHUP: configuration reloaded");
                    }
                    Err(e) => warn!(error = %e, "SIGHUP: the configuration is invalid; nothing changed"),
                },
                None => warn!("SIGHUP: there is no configuration file to reload"),
            },
            _ = started.superseded() => {
                service::stopping("declared lost and could not rejoin");
                return Err(ServeError::Superseded);
            }
        }
    };
    service::stopping(&format!("graceful shutdown ({why})"));
    info!(signal = why, grace = %format_duration(grace), "graceful shutdown: no new work; waiting for running executions");
    // A second signal stops at once; the children die with us (parent-death signal).
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("jobward: second interrupt: exiting now");
        std::process::exit(130);
    });
    state.begin_shutdown();
    let shutdown = started.shutdown().await;
    let _ = http_stop.send(());
    let _ = server.await;
    if let Some(w) = watchdog {
        w.abort();
    }
    if crate::telemetry::enabled() {
        let _ = tokio::task::spawn_blocking(crate::telemetry::shutdown).await;
    }
    info!(
        drained = shutdown.drained,
        cancelled = shutdown.cancelled.len(),
        "stopped"
    );
    Ok(ServeReport {
        api_url,
        signal: why,
        shutdown,
    })
}
