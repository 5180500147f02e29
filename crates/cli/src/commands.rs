//! What each command does.

use std::path::PathBuf;
use std::time::Duration;

use jobward_core::duration::parse_duration;
use jobward_server::http::{Reloader, Tokens};
use jobward_server::{
    HealthAlertConfig, NodeConfig, NodeError, Reaper, ReaperConfig, RetentionConfig,
    SchedulerConfig, ServeConfig, ServeError, default_node_name,
};
use jobward_store::{AuditParams, DynStore, OpenMode, SyncJobs};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::output::{outln, print_json, table, time};
use crate::{
    AuditArgs, BackupArgs, CheckArgs, Cli, Command, Failure, HeartbeatArgs, JobsCommand,
    NodesCommand, RemoteArgs, RunsCommand, ServeArgs, StoreArgs, WorkerArgs,
};
use jobward::config::{self, Overrides, Settings};

pub(crate) type R<T = ()> = Result<T, Failure>;

/// The configuration file of a command: its own --config, else the one before the command
/// (or JOBWARD_CONFIG), else ./jobward.toml if it exists.
pub fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.command
        .store_args()
        .and_then(|s| s.config.clone())
        .or_else(|| cli.config.clone())
        .or_else(|| {
            let p = PathBuf::from("jobward.toml");
            p.exists().then_some(p)
        })
}

/// The database URL given on the command line or in the environment, if any.
fn db_flag(cli: &Cli) -> Option<String> {
    cli.command
        .store_args()
        .and_then(|s: &StoreArgs| s.db.clone())
        .or_else(|| cli.db.clone())
}

fn overrides(cli: &Cli, serve: Option<&ServeArgs>) -> Overrides {
    let mut o = Overrides {
        db: db_flag(cli),
        ..Overrides::from_env()
    };
    if serve.is_some() || matches!(cli.command, Command::Check(_)) {
        o = o.with_telemetry_env();
    }
    if let Some(s) = serve {
        o.bind = s.bind.clone();
        o.node_name = s.node_name.clone();
        o.log_dir = s.log_dir.clone();
        o.max_running = s.max_running;
        o.heartbeat_timeout = s.heartbeat_timeout.clone();
        o.run_timeout = s.run_timeout.clone();
        o.queue_timeout = s.queue_timeout.clone();
        o.shutdown_grace = s.shutdown_grace.clone();
    }
    o
}

pub(crate) fn settings(cli: &Cli, serve: Option<&ServeArgs>) -> R<Settings> {
    Ok(config::load(
        config_path(cli).as_deref(),
        &overrides(cli, serve),
    )?)
}

pub(crate) fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{}", default_node_name())
}

fn duration_arg(flag: &str, v: &str) -> R<Duration> {
    parse_duration(v).map_err(|e| Failure::Input(format!("--{flag}: {e}")))
}

/// The service layer over a store this command opened itself (no server in between).
fn service(s: &Settings, store: &DynStore) -> std::sync::Arc<jobward_server::service::Service> {
    jobward_server::service::Service::new(store.clone(), s.server.log_dir.clone(), None)
}

pub(crate) async fn open_existing(s: &Settings) -> R<DynStore> {
    Ok(
        jobward_store::open_with(&s.server.db, OpenMode::Existing, &s.server.store)
            .await?
            .0,
    )
}

pub async fn run(cli: Cli) -> R {
    use crate::ledger;
    match &cli.command {
        Command::Serve(args) => serve(&cli, args).await,
        Command::Migrate(_) => migrate(&cli).await,
        Command::Jobs(JobsCommand::List { json, server, .. }) => {
            ledger::jobs_list(&cli, *json, server).await
        }
        Command::Jobs(JobsCommand::Show {
            name, json, server, ..
        }) => ledger::jobs_show(&cli, name, *json, server).await,
        Command::Jobs(JobsCommand::Trigger(args)) => ledger::jobs_trigger(&cli, args).await,
        Command::Jobs(JobsCommand::Pause { name, server, .. }) => {
            ledger::jobs_pause(&cli, name, true, server).await
        }
        Command::Jobs(JobsCommand::Resume { name, server, .. }) => {
            ledger::jobs_pause(&cli, name, false, server).await
        }
        Command::Jobs(JobsCommand::Create(args)) => ledger::jobs_apply(&cli, args, true).await,
        Command::Jobs(JobsCommand::Apply(args)) => ledger::jobs_apply(&cli, args, false).await,
        Command::Jobs(JobsCommand::Delete {
            name,
            cancel,
            server,
            ..
        }) => ledger::jobs_delete(&cli, name, *cancel, server).await,
        Command::Jobs(JobsCommand::Backfill {
            name,
            from,
            to,
            server,
            ..
        }) => ledger::jobs_backfill(&cli, name, from, to, server).await,
        Command::Runs(RunsCommand::List(args)) => ledger::runs_list(&cli, args).await,
        Command::Runs(RunsCommand::Show {
            id,
            log_lines,
            json,
            server,
            ..
        }) => ledger::runs_show(&cli, *id, *log_lines, *json, server).await,
        Command::Runs(RunsCommand::Cancel {
            id,
            no_wait,
            server,
            ..
        }) => ledger::runs_cancel(&cli, *id, *no_wait, server).await,
        Command::Runs(RunsCommand::Reschedule {
            id,
            at,
            delay,
            server,
            ..
        }) => ledger::runs_reschedule(&cli, *id, at, delay, server).await,
        Command::Cleanup(args) => ledger::cleanup(&cli, args).await,
        Command::Health(args) => ledger::health(&cli, args).await,
        Command::Audit(args) => audit(&cli, args).await,
        Command::Nodes(NodesCommand::List { json, server, .. }) => {
            ledger::nodes_list(&cli, *json, server).await
        }
        Command::Jobs(JobsCommand::Reload(remote)) => jobs_reload(&cli, remote).await,
        Command::Check(args) => check(&cli, args),
        Command::Backup(args) => backup(&cli, args).await,
        Command::Worker(args) => worker(args).await,
        Command::Heartbeat(args) => heartbeat(args).await,
        Command::Exec(args) => crate::exec::exec(&cli, args).await,
    }
}

async fn migrate(cli: &Cli) -> R {
    let s = settings(cli, None)?;
    let (_, opened) =
        jobward_store::open_with(&s.server.db, OpenMode::CreateAndMigrate, &s.server.store).await?;
    match (opened.created, opened.applied_migrations.is_empty()) {
        (true, _) => outln!(
            "created the jobward schema in {}",
            jobward_store::display_url(&s.server.db)
        ),
        (false, true) => outln!(
            "database {}: schema is up to date",
            jobward_store::display_url(&s.server.db)
        ),
        (false, false) => outln!(
            "database {}: applied migrations {:?}",
            jobward_store::display_url(&s.server.db),
            opened.applied_migrations
        ),
    }
    Ok(())
}

/// The heartbeat interval: a third of the shortest heartbeat timeout in use.
fn heartbeat_interval(s: &Settings) -> Duration {
    let shortest = s
        .jobs
        .iter()
        .map(|j| j.timeouts.heartbeat)
        .chain([s.defaults.heartbeat])
        .min()
        .unwrap_or(s.defaults.heartbeat);
    (shortest / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// The node's settings from the configuration.
fn node_config(s: &Settings) -> NodeConfig {
    let interval = heartbeat_interval(s);
    NodeConfig {
        name: s.server.node_name.clone().unwrap_or_else(default_node_name),
        log_dir: s.server.log_dir.clone(),
        log_max_bytes: s.server.log_max_bytes,
        max_running: s.server.max_running,
        node_lease: (interval * 3).max(s.defaults.heartbeat),
        heartbeat_interval: interval,
        poll_interval: s.server.poll_interval,
        shutdown_grace: s.server.shutdown_grace,
        api_url: None,
        alerts: None,
        reaper: ReaperConfig {
            interval: s.server.reaper_interval,
            ..Default::default()
        },
        scheduler: SchedulerConfig::default(),
        retention: RetentionConfig {
            interval: s.server.retention_interval,
            ..Default::default()
        },
        lost_nodes: Default::default(),
        health_alert: HealthAlertConfig {
            settings: s.health.clone(),
            ..Default::default()
        },
    }
}

/// Re-reads the configuration file and syncs its jobs (SIGHUP, `jobs reload`).
fn reloader(store: &DynStore, path: PathBuf, overrides: Overrides) -> Reloader {
    let store = store.clone();
    std::sync::Arc::new(move || {
        let (store, overrides, path) = (store.clone(), overrides.clone(), path.clone());
        Box::pin(async move {
            let s = config::load(Some(&path), &overrides).map_err(|e| e.0)?;
            store
                .sync_jobs(SyncJobs {
                    jobs: s.jobs,
                    limits: s.limits,
                })
                .await
                .map_err(|e| e.to_string())
        })
    })
}

async fn serve(cli: &Cli, args: &ServeArgs) -> R {
    let overrides = overrides(cli, Some(args));
    let path = config_path(cli);
    let s = config::load(path.as_deref(), &overrides)?;
    std::fs::create_dir_all(&s.server.log_dir).map_err(|e| {
        Failure::Input(format!(
            "cannot create log directory {}: {e}",
            s.server.log_dir.display()
        ))
    })?;
    // Listen first: a taken port is refused before anything is written.
    let listener = tokio::net::TcpListener::bind(s.server.bind)
        .await
        .map_err(|e| Failure::Input(format!("cannot listen on {}: {e}", s.server.bind)))?;
    let (store, opened) =
        jobward_store::open_with(&s.server.db, OpenMode::CreateAndMigrate, &s.server.store).await?;
    let db_display = jobward_store::display_url(&s.server.db);
    if opened.created {
        info!(db = %db_display, "created the jobward schema in an empty database");
    } else if !opened.applied_migrations.is_empty() {
        info!(db = %db_display, migrations = ?opened.applied_migrations, "brought the database schema up to date");
    }
    let cfg = ServeConfig {
        reload: path.map(|p| reloader(&store, p, overrides.clone())),
        store,
        db_display,
        config_source: s.source.clone(),
        listener,
        public_url: s.server.public_url.clone(),
        node: node_config(&s),
        jobs: SyncJobs {
            jobs: s.jobs.clone(),
            limits: s.limits.clone(),
        },
        tokens: Tokens(s.tokens.clone()),
        health: s.health.clone(),
        webhooks: s.alerts.clone(),
        telemetry: s.telemetry.clone(),
        job_defaults: s.job_defaults.clone(),
        api_commands: s.server.api_commands,
    };
    match jobward_server::run(cfg).await {
        Ok(_) => Ok(()),
        Err(e @ ServeError::Node(NodeError::NameInUse { .. })) => {
            Err(Failure::Check(e.to_string()))
        }
        Err(ServeError::Node(NodeError::Store(e))) => Err(e.into()),
        Err(e @ (ServeError::Superseded | ServeError::Setup(_))) => {
            Err(Failure::Check(e.to_string()))
        }
    }
}

/// `jobward check`: the configuration as `serve` would read it, and each job's next three
/// fires, without opening any database.
fn check(cli: &Cli, _args: &CheckArgs) -> R {
    let Some(path) = config_path(cli) else {
        return Err(Failure::Input(
            "no configuration to check: pass --config FILE (or put a jobward.toml here)".into(),
        ));
    };
    let s = config::load(Some(&path), &overrides(cli, None))?;
    let now = chrono::Utc::now();
    outln!(
        "{}: valid: {} job(s); ledger {}; API on {}",
        s.source,
        s.jobs.len(),
        jobward_store::display_url(&s.server.db),
        s.server.bind
    );
    if s.jobs.is_empty() {
        return Ok(());
    }
    let mut t = table(&["JOB", "SCHEDULE", "RUNS ON", "NEXT FIRES"]);
    for j in &s.jobs {
        let mut fires = Vec::new();
        let mut at = now;
        while fires.len() < 3 {
            match j.schedule.next_after(at) {
                Some(next) => {
                    fires.push(time(Some(next)));
                    at = next;
                }
                None => break,
            }
        }
        t.add_row(vec![
            j.name.clone(),
            j.schedule.describe(),
            j.queue
                .as_deref()
                .map(|q| format!("queue {q}"))
                .unwrap_or_else(|| "a node".into()),
            if fires.is_empty() {
                "- (only when triggered)".into()
            } else {
                fires.join(", ")
            },
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// `jobward backup FILE`: an online, consistent copy of the SQLite ledger.
async fn backup(cli: &Cli, a: &BackupArgs) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    store.backup(&a.file).await?;
    let size = std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0);
    outln!(
        "backed up {} to {} ({size} bytes)",
        jobward_store::display_url(&s.server.db),
        a.file.display()
    );
    Ok(())
}

async fn jobs_reload(cli: &Cli, remote: &RemoteArgs) -> R {
    let client = remote_client(cli, remote)?;
    let r = client
        .reload()
        .await
        .map_err(|e| Failure::Check(format!("reload failed: {e}")))?;
    outln!(
        "reloaded: {} added {:?}, {} changed {:?}, {} removed {:?}, {} unchanged",
        r.added.len(),
        r.added,
        r.changed.len(),
        r.changed,
        r.removed.len(),
        r.removed,
        r.unchanged
    );
    Ok(())
}

/// A client for the server named by --server, or by the config's bind address.
fn remote_client(cli: &Cli, remote: &RemoteArgs) -> R<jobward_worker::Client> {
    let url = match &remote.server.server {
        Some(u) => u.clone(),
        None => {
            let s = settings(cli, None)?;
            let host = if s.server.bind.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                s.server.bind.ip().to_string()
            };
            s.server
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{host}:{}", s.server.bind.port()))
        }
    };
    jobward_worker::Client::new(&url, remote.server.token.clone())
        .map_err(|e| Failure::Input(e.to_string()))
}

async fn worker(a: &WorkerArgs) -> R {
    if a.queue.is_empty() {
        return Err(Failure::Input(
            "--queue: name at least one queue to claim from".into(),
        ));
    }
    for q in &a.queue {
        jobward_core::validate_name("queue name", q)
            .map_err(|e| Failure::Input(format!("--queue: {e}")))?;
        if q == jobward_core::LOCAL_RUNNER {
            return Err(Failure::Input(
                "--queue: 'local' is reserved for the executions nodes run themselves".into(),
            ));
        }
    }
    if !(1..=1000).contains(&a.concurrency) {
        return Err(Failure::Input(format!(
            "--concurrency must be between 1 and 1000, got {}",
            a.concurrency
        )));
    }
    let grace = parse_duration(&a.shutdown_grace)
        .map_err(|e| Failure::Input(format!("--shutdown-grace: {e}")))?;
    let worker_id = a
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", default_node_name(), std::process::id()));
    let cfg = jobward_worker::WorkerConfig {
        handlers: Default::default(),
        commands: true,
        server: a.server.clone(),
        token: a.token.clone(),
        queues: a.queue.clone(),
        concurrency: a.concurrency,
        worker_id,
        log_dir: PathBuf::from(&a.log_dir),
        log_max_bytes: 1 << 20,
        shutdown_grace: grace,
    };
    jobward_worker::Client::new(&cfg.server, None)
        .map_err(|e| Failure::Input(format!("--server: {e}")))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Check(format!("cannot listen for SIGTERM: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    match jobward_worker::run(cfg, rx).await {
        Ok(_) => Ok(()),
        Err(
            e @ jobward_worker::ClientError::Api {
                status: 401 | 403, ..
            },
        ) => Err(Failure::Input(format!(
            "the server refused this worker: {e}"
        ))),
        Err(e) => Err(Failure::Check(format!("worker stopped: {e}"))),
    }
}

fn env_var(name: &str) -> R<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
        Failure::Input(format!("{name} is not set: `jobward heartbeat` runs inside a jobward execution, which sets it"))
    })
}

async fn heartbeat(a: &HeartbeatArgs) -> R {
    let checkpoint = a
        .checkpoint
        .as_deref()
        .map(|c| {
            serde_json::from_str::<serde_json::Value>(c)
                .map_err(|e| Failure::Input(format!("--checkpoint is not JSON: {e}")))
        })
        .transpose()?;
    if let Some(p) = a.progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(Failure::Input(format!(
            "--progress must be between 0 and 1, got {p}"
        )));
    }
    let id: i64 = env_var("JOBWARD_EXECUTION_ID")?
        .parse()
        .map_err(|_| Failure::Input("JOBWARD_EXECUTION_ID is not a number".into()))?;
    let attempt: u32 = env_var("JOBWARD_ATTEMPT")?
        .parse()
        .map_err(|_| Failure::Input("JOBWARD_ATTEMPT is not a number".into()))?;
    let client = jobward_worker::Client::new(&env_var("JOBWARD_SERVER_URL")?, None)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let req = jobward_protocol::ProgressRequest {
        attempt,
        lease_token: env_var("JOBWARD_LEASE_TOKEN")?,
        progress: a.progress,
        phase: a.phase.clone(),
        checkpoint,
    };
    match client.progress(id, &req).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_lease_lost() => Err(Failure::Check(format!("progress refused: {e}"))),
        Err(
            e @ jobward_worker::ClientError::Api {
                status: 400 | 413, ..
            },
        ) => Err(Failure::Input(e.to_string())),
        Err(e) => Err(Failure::Check(format!("could not report progress: {e}"))),
    }
}

async fn audit(cli: &Cli, a: &AuditArgs) -> R {
    let s = settings(cli, None)?;
    let tolerance = duration_arg("tolerance", &a.tolerance)?;
    let store = open_existing(&s).await?;
    let mut repaired = None;
    if a.repair {
        let reaper = Reaper::new(service(&s, &store), actor(), ReaperConfig::default());
        repaired = Some(reaper.run_once().await?);
    }
    let violations = store.audit(AuditParams { tolerance }).await?;
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            ok: bool,
            repaired: usize,
            violations: &'a [jobward_store::Violation],
        }
        print_json(&Out {
            ok: violations.is_empty(),
            repaired: repaired.as_ref().map(|r| r.recovered.len()).unwrap_or(0),
            violations: &violations,
        });
    } else {
        if let Some(r) = &repaired {
            for rec in &r.recovered {
                outln!(
                    "repaired: execution {} (job '{}' run #{}) -> {} ({}): {}",
                    rec.id,
                    rec.job,
                    rec.number,
                    rec.to,
                    rec.reason,
                    rec.message
                );
            }
            outln!(
                "repair: {} execution(s) settled by the reaper rules",
                r.recovered.len()
            );
        }
        for v in &violations {
            outln!("invariant {}: {}", v.invariant, v.message);
        }
        if violations.is_empty() {
            outln!("audit: ok, no violation of invariants 1-3 and 6");
        } else {
            outln!("audit: {} violation(s)", violations.len());
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Failure::Quiet)
    }
}
