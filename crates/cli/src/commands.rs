//! What each command does.

use std::path::PathBuf;
use std::time::Duration;

use jobward_core::State;
use jobward_core::duration::{format_duration, parse_duration, parse_positive_duration};
use jobward_server::http::{Reloader, Tokens};
use jobward_server::{
    HealthAlertConfig, NodeConfig, NodeError, Reaper, ReaperConfig, RetentionConfig,
    SchedulerConfig, ServeConfig, ServeError, default_node_name, log_path,
};
use jobward_store::{
    AuditParams, CancelOutcome, DynStore, EventRow, ExecutionFilter, ExecutionRow, HealthParams,
    OpenMode, SyncJobs, TriggerParams,
};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::output::{self, Names, ago, dur, outln, print_json, run_json, table, time};
use crate::{
    AuditArgs, BackupArgs, CheckArgs, CleanupArgs, Cli, Command, Failure, HealthArgs,
    HeartbeatArgs, JobsCommand, NodesCommand, RemoteArgs, RunsCommand, RunsListArgs, ServeArgs,
    StoreArgs, WorkerArgs,
};
use jobward::config::{self, Overrides, Settings};

type R<T = ()> = Result<T, Failure>;

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

fn settings(cli: &Cli, serve: Option<&ServeArgs>) -> R<Settings> {
    Ok(config::load(
        config_path(cli).as_deref(),
        &overrides(cli, serve),
    )?)
}

fn actor() -> String {
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

async fn open_existing(s: &Settings) -> R<DynStore> {
    Ok(
        jobward_store::open_with(&s.server.db, OpenMode::Existing, &s.server.store)
            .await?
            .0,
    )
}

pub async fn run(cli: Cli) -> R {
    match &cli.command {
        Command::Serve(args) => serve(&cli, args).await,
        Command::Migrate(_) => migrate(&cli).await,
        Command::Jobs(JobsCommand::List { json, .. }) => jobs_list(&cli, *json).await,
        Command::Jobs(JobsCommand::Trigger {
            name, wait, json, ..
        }) => jobs_trigger(&cli, name, *wait, *json).await,
        Command::Runs(RunsCommand::List(args)) => runs_list(&cli, args).await,
        Command::Runs(RunsCommand::Show {
            id,
            log_lines,
            json,
            ..
        }) => runs_show(&cli, *id, *log_lines, *json).await,
        Command::Runs(RunsCommand::Cancel { id, no_wait, .. }) => {
            runs_cancel(&cli, *id, *no_wait).await
        }
        Command::Cleanup(args) => cleanup(&cli, args).await,
        Command::Health(args) => health(&cli, args).await,
        Command::Audit(args) => audit(&cli, args).await,
        Command::Nodes(NodesCommand::List { json, .. }) => nodes_list(&cli, *json).await,
        Command::Jobs(JobsCommand::Reload(remote)) => jobs_reload(&cli, remote).await,
        Command::Check(args) => check(&cli, args),
        Command::Backup(args) => backup(&cli, args).await,
        Command::Worker(args) => worker(args).await,
        Command::Heartbeat(args) => heartbeat(args).await,
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
    let url = match &remote.server {
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
    jobward_worker::Client::new(&url, remote.token.clone())
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

#[derive(Serialize)]
struct JobJson<'a> {
    name: &'a str,
    command: &'a str,
    schedule: String,
    next_fire_at: Option<jobward_core::Timestamp>,
    status: String,
    status_text: String,
    lease_expired: bool,
    paused: bool,
    defined: bool,
    overlap: String,
    concurrency_key: Option<&'a str>,
    last_finished: Option<&'a jobward_store::ExecutionSummary>,
    live: &'a [jobward_store::ExecutionSummary],
}

async fn jobs_list(cli: &Cli, json: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let jobs = store.list_jobs().await?;
    let now = store.now().await?;
    if json {
        let out: Vec<JobJson> = jobs
            .iter()
            .map(|j| JobJson {
                name: &j.spec.name,
                command: &j.spec.command,
                schedule: j.spec.schedule.describe(),
                next_fire_at: j.next_fire_at,
                status: j.status(),
                status_text: jobward_server::views::job_status_text(j, now),
                lease_expired: j.silent_for(now).is_some(),
                paused: j.paused,
                defined: j.defined,
                overlap: j.spec.overlap.to_string(),
                concurrency_key: j.spec.concurrency_key.as_deref(),
                last_finished: j.last_finished.as_ref(),
                live: &j.live,
            })
            .collect();
        print_json(&out);
        return Ok(());
    }
    let mut t = table(&[
        "JOB",
        "SCHEDULE",
        "NEXT FIRE",
        "STATUS",
        "LAST RUN",
        "LAST FINISHED",
        "OVERLAP",
        "KEY",
    ]);
    for j in &jobs {
        let mut status = jobward_server::views::job_status_text(j, now);
        if j.paused {
            status.push_str(" (paused)");
        }
        if !j.defined {
            status.push_str(" (not in config)");
        }
        let last = j.last_finished.as_ref();
        t.add_row(vec![
            j.spec.name.clone(),
            j.spec.schedule.describe(),
            j.next_fire_at
                .map(|n| format!("{} ({})", time(Some(n)), ago(now, Some(n))))
                .unwrap_or_else(|| "-".into()),
            status,
            last.map(|e| format!("#{} {}", e.number, e.state))
                .unwrap_or_else(|| "-".into()),
            last.map(|e| ago(now, e.finished_at))
                .unwrap_or_else(|| "-".into()),
            j.spec.overlap.to_string(),
            j.spec.concurrency_key.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    outln!("{t}");
    Ok(())
}

async fn jobs_trigger(cli: &Cli, name: &str, wait: bool, json: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let created = service(&s, &store)
        .trigger(TriggerParams {
            job: name.into(),
            actor: actor(),
            payload: None,
            idempotency_key: None,
            run_at: None,
            priority: None,
        })
        .await?;
    let e = &created.execution;
    let now = store.now().await?;
    if !wait {
        if json {
            print_json(&run_json(e, now));
        } else if e.state == State::Skipped {
            outln!(
                "skipped: job '{name}' run #{} (execution {}): {}",
                e.number,
                e.id,
                e.message.as_deref().unwrap_or("")
            );
        } else {
            outln!(
                "queued: job '{name}' run #{} (execution {})",
                e.number,
                e.id
            );
            let h = store
                .health(HealthParams {
                    long_running_after: Duration::from_secs(3600),
                    stale_after: None,
                })
                .await?;
            if h.live_nodes == 0 {
                outln!(
                    "note: no jobward node is serving {} right now; it starts when one does",
                    jobward_store::display_url(&s.server.db)
                );
            }
        }
        return Ok(());
    }
    let end = wait_terminal(&store, e.id, None).await?;
    let now = store.now().await?;
    if json {
        print_json(&run_json(&end, now));
    } else {
        outln!(
            "job '{name}' run #{} (execution {}) {}{}",
            end.number,
            end.id,
            end.state,
            end.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    if end.state == State::Completed {
        Ok(())
    } else {
        Err(Failure::Quiet)
    }
}

/// Polls until the execution is terminal (or `limit` passes).
async fn wait_terminal(store: &DynStore, id: i64, limit: Option<Duration>) -> R<ExecutionRow> {
    let until = limit.map(|l| tokio::time::Instant::now() + l);
    loop {
        let e = store
            .get_execution(id)
            .await?
            .ok_or(jobward_store::StoreError::ExecutionNotFound(id))?;
        if e.state.is_terminal() || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn runs_list(cli: &Cli, a: &RunsListArgs) -> R {
    let s = settings(cli, None)?;
    if a.limit < 1 || a.limit > 10_000 {
        return Err(Failure::Input(format!(
            "--limit must be between 1 and 10000, got {}",
            a.limit
        )));
    }
    let mut states = Vec::new();
    for st in &a.status {
        states.push(
            st.parse::<State>()
                .map_err(|e| Failure::Input(format!("--status: {e}")))?,
        );
    }
    if a.running && !states.contains(&State::Running) {
        states.push(State::Running);
    }
    let stale_after = a
        .stale_after
        .as_deref()
        .map(|v| duration_arg("stale-after", v))
        .transpose()?;
    let store = open_existing(&s).await?;
    let rows = store
        .list_executions(ExecutionFilter {
            job: a.job.clone(),
            states,
            stale_after,
            since: None,
            until: None,
            before_id: a.before,
            limit: a.limit as u32,
        })
        .await?;
    let now = store.now().await?;
    if a.json {
        print_json(&rows.iter().map(|e| run_json(e, now)).collect::<Vec<_>>());
    } else if rows.is_empty() {
        outln!("no executions match");
    } else {
        outln!("{}", output::runs_table(&rows, now));
    }
    Ok(())
}

/// What `runs show` shows: an execution, its events and the tail of its log.
struct Shown {
    e: ExecutionRow,
    events: Vec<EventRow>,
    now: jobward_core::Timestamp,
    log_path: PathBuf,
    log: Option<String>,
    names: Names,
}

async fn runs_show(cli: &Cli, id: i64, log_lines: usize, json: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let e = store
        .get_execution(id)
        .await?
        .ok_or(jobward_store::StoreError::ExecutionNotFound(id))?;
    let events = store.events(id).await?;
    let now = store.now().await?;
    let names = if json {
        Names::default()
    } else {
        Names::new(&store.list_nodes().await?)
    };
    let log_path = log_path(&s.server.log_dir, &e.job, e.id);
    let log = jobward_exec::log::read_tail(&log_path, 64 * 1024)
        .ok()
        .flatten()
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(log_lines)..].join("\n")
        });
    let shown = Shown {
        e,
        events,
        now,
        log_path,
        log,
        names,
    };
    if json {
        show_json(shown);
    } else {
        show_fields(&shown);
        show_events(&shown);
        show_log(&shown, log_lines);
    }
    Ok(())
}

/// The `--json` form: ids as they are stored.
fn show_json(shown: Shown) {
    #[derive(Serialize)]
    struct Show<'a> {
        execution: jobward_protocol::ExecutionView,
        command: &'a str,
        events: Vec<jobward_protocol::EventView>,
        log_tail: Option<String>,
    }
    print_json(&Show {
        execution: run_json(&shown.e, shown.now),
        command: &shown.e.command,
        events: shown
            .events
            .iter()
            .map(jobward_server::views::event)
            .collect(),
        log_tail: shown.log,
    });
}

fn show_fields(shown: &Shown) {
    let (e, now) = (&shown.e, shown.now);
    let state = match (e.reason, &e.message) {
        (Some(r), Some(m)) => format!("{} ({r}): {}", output::status(e, now), shown.names.human(m)),
        _ => output::status(e, now),
    };
    outln!(
        "execution {}: job '{}' run #{}, attempt {} of {}",
        e.id,
        e.job,
        e.number,
        e.attempt,
        e.max_attempts
    );
    let field = |k: &str, v: String| outln!("  {k:<13} {v}");
    field("state", state);
    field(
        "trigger",
        match e.scheduled_for {
            Some(t) => format!("{} (instant {})", e.trigger, time(Some(t))),
            None => e.trigger.to_string(),
        },
    );
    field("command", e.command.clone());
    field("queued", time(Some(e.queued_at)));
    field("started", time(e.started_at));
    field("finished", time(e.finished_at));
    field("runtime", dur(e.runtime(now)));
    if e.state == State::Running {
        field(
            "heartbeat",
            format!(
                "{} (lease until {})",
                ago(now, e.heartbeat_at),
                time(e.lease_expires_at)
            ),
        );
        field("run deadline", time(e.run_deadline));
    }
    if e.state == State::Queued {
        field("start by", time(e.start_deadline));
    }
    if let Some(owner) = &e.lease_owner {
        field("owner", shown.names.human(owner));
    }
    if let Some(p) = &e.process {
        field(
            "process",
            format!("pid {} (process group {})", p.pid, p.pgid),
        );
    }
    match (e.exit_code, e.signal) {
        (Some(c), _) => field("exit", format!("code {c}")),
        (_, Some(sig)) => field(
            "exit",
            format!("signal {sig} ({})", jobward_exec::signal_name(sig)),
        ),
        _ => {}
    }
    if let Some(prev) = e.retry_of {
        field("retry of", format!("execution {prev}"));
    }
}

fn show_events(shown: &Shown) {
    outln!("events:");
    for ev in &shown.events {
        let change = match (ev.kind, ev.from, ev.to) {
            (jobward_store::EventKind::Refused, _, _) => "REFUSED".to_string(),
            (jobward_store::EventKind::Note, _, _) => "note".to_string(),
            (_, None, Some(to)) => format!("-> {to}"),
            (_, Some(from), Some(to)) => format!("{from} -> {to}"),
            _ => "-".to_string(),
        };
        let reason = ev
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        outln!(
            "  {}  {change}{reason}  by {}: {}",
            time(Some(ev.at)),
            shown.names.human(&ev.actor),
            shown.names.human(&ev.message)
        );
    }
}

fn show_log(shown: &Shown, log_lines: usize) {
    let path = shown.log_path.display();
    match &shown.log {
        Some(text) if !text.is_empty() => {
            outln!("log (last {log_lines} lines of {path}):");
            for line in text.lines() {
                outln!("  {line}");
            }
        }
        Some(_) => outln!("log: empty ({path})"),
        None => outln!("log: none at {path}"),
    }
}

async fn runs_cancel(cli: &Cli, id: i64, no_wait: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let out = service(&s, &store).cancel(id, actor()).await?;
    match out {
        CancelOutcome::Cancelled { execution } => {
            outln!("execution {} cancelled (it was queued)", execution.id)
        }
        CancelOutcome::AlreadyTerminal { execution } => {
            outln!(
                "execution {} already ended: {}",
                execution.id,
                execution.state
            );
        }
        CancelOutcome::Requested { execution } => {
            let names = Names::new(&store.list_nodes().await?);
            outln!(
                "cancel requested for execution {}; its owner {} must stop it by {}",
                execution.id,
                names.human(execution.lease_owner.as_deref().unwrap_or("-")),
                time(execution.cancel_deadline)
            );
            if !no_wait {
                let limit = execution.timeouts.kill_grace + Duration::from_secs(5);
                let end = wait_terminal(&store, id, Some(limit)).await?;
                if end.state.is_terminal() {
                    outln!(
                        "execution {id} is {}: {}",
                        end.state,
                        end.message.unwrap_or_default()
                    );
                } else {
                    outln!(
                        "execution {id} is still stopping; the ledger settles it by its cancel deadline {}",
                        time(end.cancel_deadline)
                    );
                }
            }
        }
    }
    Ok(())
}

async fn cleanup(cli: &Cli, a: &CleanupArgs) -> R {
    let s = settings(cli, None)?;
    let stale_after = parse_positive_duration(&a.stale_after)
        .map_err(|e| Failure::Input(format!("--stale-after: {e}")))?;
    let store = open_existing(&s).await?;
    let report = service(&s, &store)
        .cleanup(stale_after, a.apply, actor())
        .await?;
    let now = store.now().await?;
    let names = Names::new(&store.list_nodes().await?);
    if a.json {
        print_json(&jobward_server::views::cleanup(&report, stale_after, now));
        return Ok(());
    }
    if report.candidates.is_empty() {
        outln!(
            "no running execution has a last heartbeat older than {}",
            format_duration(stale_after)
        );
        return Ok(());
    }
    let mut t = table(&[
        "ID",
        "JOB",
        "RUN",
        "ATTEMPT",
        "STARTED",
        "LAST HEARTBEAT",
        "OWNER",
        if report.dry_run {
            "WOULD BECOME"
        } else {
            "BECAME"
        },
    ]);
    for e in &report.candidates {
        let became = if report.dry_run || report.changed.iter().any(|c| c.id == e.id) {
            "timed_out (manual_cleanup)".to_string()
        } else {
            "unchanged: it ended meanwhile".to_string()
        };
        t.add_row(vec![
            e.id.to_string(),
            e.job.clone(),
            format!("#{}", e.number),
            format!("{}/{}", e.attempt, e.max_attempts),
            time(e.started_at),
            ago(now, e.heartbeat_at),
            e.lease_owner
                .as_deref()
                .map(|o| names.human(o))
                .unwrap_or_else(|| "-".into()),
            became,
        ]);
    }
    outln!("{t}");
    if report.dry_run {
        outln!(
            "dry run: {} execution(s) would change; run again with --apply to change them",
            report.candidates.len()
        );
    } else {
        for c in &report.changed {
            outln!("execution {}: {}", c.id, names.human(&c.message));
        }
        let retries = report.changed.iter().filter(|c| c.retry.is_some()).count();
        outln!(
            "applied: {} changed to timed_out (manual_cleanup), {} ended meanwhile and were left alone, {} retr{} scheduled",
            report.changed.len(),
            report.raced.len(),
            retries,
            if retries == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

async fn health(cli: &Cli, a: &HealthArgs) -> R {
    let s = settings(cli, None)?;
    let mut settings = s.health.clone();
    if let Some(v) = &a.long_running_after {
        settings.long_running_after = parse_positive_duration(v)
            .map_err(|e| Failure::Input(format!("--long-running-after: {e}")))?;
    }
    if let Some(n) = a.warn_long_running {
        settings.warn_long_running = n;
    }
    let store = open_existing(&s).await?;
    let metrics = store
        .health(HealthParams {
            long_running_after: settings.long_running_after,
            stale_after: None,
        })
        .await?;
    let out = jobward_server::views::health(metrics, &settings);
    if a.json {
        print_json(&out);
    } else {
        let m = &out.metrics;
        outln!("status: {}", out.status);
        for (k, v) in [
            ("running_executions", m.running_executions),
            ("queued_executions", m.queued_executions),
            ("long_running_executions", m.long_running_executions),
            ("stale_executions", m.stale_executions),
            ("overdue_queued_executions", m.overdue_queued_executions),
            ("recent_executions_24h", m.recent_executions_24h),
            ("live_nodes", m.live_nodes),
        ] {
            outln!("{k}: {v}");
        }
        outln!(
            "timestamp: {}",
            m.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        for w in &out.warnings {
            outln!("warning: {w}");
        }
    }
    if out.warnings.is_empty() {
        Ok(())
    } else {
        Err(Failure::Quiet)
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

async fn nodes_list(cli: &Cli, json: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let nodes = store.list_nodes().await?;
    if json {
        print_json(&nodes);
        return Ok(());
    }
    let now = store.now().await?;
    let mut t = table(&[
        "INCARNATION",
        "NAME",
        "HOST",
        "PID",
        "STARTED",
        "LAST HEARTBEAT",
        "STATE",
    ]);
    for n in &nodes {
        let state = match (&n.stopped_at, n.lease_expires_at > now) {
            (Some(_), _) => format!("stopped: {}", n.stop_reason.clone().unwrap_or_default()),
            (None, true) => "live".into(),
            (None, false) => "lease expired".into(),
        };
        t.add_row(vec![
            n.id.clone(),
            n.name.clone(),
            n.hostname.clone(),
            n.pid.to_string(),
            time(Some(n.started_at)),
            ago(now, Some(n.heartbeat_at)),
            state,
        ]);
    }
    outln!("{t}");
    Ok(())
}
