//! What each command does.

use std::path::PathBuf;
use std::time::Duration;

use jobward_core::duration::{format_duration, parse_duration, parse_positive_duration};
use jobward_core::{Reason, State};
use jobward_server::{Node, NodeConfig, NodeError, Reaper, default_node_name, log_path};
use jobward_store::{
    AuditParams, CancelOutcome, CancelParams, CleanupParams, DynStore, ExecutionFilter,
    ExecutionRow, HealthMetrics, HealthParams, OpenMode, SyncJobs, TriggerParams,
};
use serde::Serialize;
use tracing::info;

use crate::config::{self, Overrides, Settings};
use crate::output::{self, ago, dur, print_json, run_json, table, time};
use crate::{
    AuditArgs, CleanupArgs, Cli, Command, Failure, HealthArgs, JobsCommand, NodesCommand,
    RunsCommand, RunsListArgs, ServeArgs,
};

type R<T = ()> = Result<T, Failure>;

fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let p = PathBuf::from("jobward.toml");
        p.exists().then_some(p)
    })
}

fn settings(cli: &Cli, serve: Option<&ServeArgs>) -> R<Settings> {
    let mut o = Overrides {
        db: cli.db.clone(),
        ..Default::default()
    };
    if let Some(s) = serve {
        o.node_name = s.node_name.clone();
        o.log_dir = s.log_dir.clone();
        o.max_running = s.max_running;
        o.heartbeat_timeout = s.heartbeat_timeout.clone();
        o.run_timeout = s.run_timeout.clone();
        o.queue_timeout = s.queue_timeout.clone();
        o.shutdown_grace = s.shutdown_grace.clone();
    }
    Ok(config::load(config_path(cli).as_deref(), &o)?)
}

fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{}", default_node_name())
}

fn duration_arg(flag: &str, v: &str) -> R<Duration> {
    parse_duration(v).map_err(|e| Failure::Input(format!("--{flag}: {e}")))
}

async fn open_existing(s: &Settings) -> R<DynStore> {
    Ok(jobward_store::open(&s.server.db, OpenMode::Existing)
        .await?
        .0)
}

pub async fn run(cli: Cli) -> R {
    match &cli.command {
        Command::Serve(args) => serve(&cli, args).await,
        Command::Migrate => migrate(&cli).await,
        Command::Jobs(JobsCommand::List { json }) => jobs_list(&cli, *json).await,
        Command::Jobs(JobsCommand::Trigger { name, wait, json }) => {
            jobs_trigger(&cli, name, *wait, *json).await
        }
        Command::Runs(RunsCommand::List(args)) => runs_list(&cli, args).await,
        Command::Runs(RunsCommand::Show {
            id,
            log_lines,
            json,
        }) => runs_show(&cli, *id, *log_lines, *json).await,
        Command::Runs(RunsCommand::Cancel { id, no_wait }) => {
            runs_cancel(&cli, *id, *no_wait).await
        }
        Command::Cleanup(args) => cleanup(&cli, args).await,
        Command::Health(args) => health(&cli, args).await,
        Command::Audit(args) => audit(&cli, args).await,
        Command::Nodes(NodesCommand::List { json }) => nodes_list(&cli, *json).await,
    }
}

async fn migrate(cli: &Cli) -> R {
    let s = settings(cli, None)?;
    let (_, opened) = jobward_store::open(&s.server.db, OpenMode::CreateAndMigrate).await?;
    match (opened.created, opened.applied_migrations.is_empty()) {
        (true, _) => println!("created database {} with the current schema", s.server.db),
        (false, true) => println!("database {}: schema is up to date", s.server.db),
        (false, false) => println!(
            "database {}: applied migrations {:?}",
            s.server.db, opened.applied_migrations
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

async fn serve(cli: &Cli, args: &ServeArgs) -> R {
    let s = settings(cli, Some(args))?;
    std::fs::create_dir_all(&s.server.log_dir).map_err(|e| {
        Failure::Input(format!(
            "cannot create log directory {}: {e}",
            s.server.log_dir.display()
        ))
    })?;
    let (store, opened) = jobward_store::open(&s.server.db, OpenMode::CreateAndMigrate).await?;
    if opened.created {
        info!(db = %s.server.db, "created a new database with the current schema");
    } else if !opened.applied_migrations.is_empty() {
        info!(db = %s.server.db, migrations = ?opened.applied_migrations, "brought the database schema up to date");
    }
    let interval = heartbeat_interval(&s);
    let cfg = NodeConfig {
        name: s.server.node_name.clone().unwrap_or_else(default_node_name),
        log_dir: s.server.log_dir.clone(),
        log_max_bytes: s.server.log_max_bytes,
        max_running: s.server.max_running,
        node_lease: (interval * 3).max(s.defaults.heartbeat),
        heartbeat_interval: interval,
        reaper_interval: s.server.reaper_interval,
        scheduler_interval: Duration::from_secs(1),
        poll_interval: s.server.poll_interval,
        retention_interval: s.server.retention_interval,
        shutdown_grace: s.server.shutdown_grace,
    };
    let jobs = SyncJobs {
        jobs: s.jobs.clone(),
        limits: s.limits.clone(),
    };
    let node = match Node::start(store, cfg.clone(), jobs).await {
        Ok(n) => n,
        Err(e @ NodeError::NameInUse { .. }) => return Err(Failure::Check(e.to_string())),
        Err(NodeError::Store(e)) => return Err(e.into()),
    };
    info!(
        node = %cfg.name, incarnation = %node.id(), db = %s.server.db, config = %s.source, jobs = s.jobs.len(),
        added = node.sync.added.len(), changed = node.sync.changed.len(), removed = node.sync.removed.len(),
        recovered = node.recovery.report.recovered.len(), "jobward node serving"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Check(format!("cannot listen for SIGTERM: {e}")))?;
    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = node.superseded() => {
            return Err(Failure::Check("this node was taken over by a newer incarnation with the same name; it stopped its processes".into()));
        }
    };
    info!(signal = why, grace = %format_duration(cfg.shutdown_grace), "graceful shutdown: no new work; waiting for running executions");
    // A second signal stops at once; the children die with us (parent-death signal).
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("jobward: second interrupt: exiting now");
        std::process::exit(130);
    });
    let report = node.shutdown().await;
    info!(
        drained = report.drained,
        cancelled = report.cancelled.len(),
        "stopped"
    );
    Ok(())
}

#[derive(Serialize)]
struct JobJson<'a> {
    name: &'a str,
    command: &'a str,
    schedule: String,
    next_fire_at: Option<jobward_core::Timestamp>,
    status: String,
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
    if json {
        let out: Vec<JobJson> = jobs
            .iter()
            .map(|j| JobJson {
                name: &j.spec.name,
                command: &j.spec.command,
                schedule: j.spec.schedule.describe(),
                next_fire_at: j.next_fire_at,
                status: j.status(),
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
    let now = store.now().await?;
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
        let mut status = j.status();
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
    println!("{t}");
    Ok(())
}

async fn jobs_trigger(cli: &Cli, name: &str, wait: bool, json: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let created = store
        .trigger(TriggerParams {
            job: name.into(),
            actor: actor(),
            payload: None,
        })
        .await?;
    let e = &created.execution;
    let now = store.now().await?;
    if !wait {
        if json {
            print_json(&run_json(e, now));
        } else if e.state == State::Skipped {
            println!(
                "skipped: job '{name}' run #{} (execution {}): {}",
                e.number,
                e.id,
                e.message.as_deref().unwrap_or("")
            );
        } else {
            println!(
                "queued: job '{name}' run #{} (execution {})",
                e.number, e.id
            );
            let h = store
                .health(HealthParams {
                    long_running_after: Duration::from_secs(3600),
                    stale_after: None,
                })
                .await?;
            if h.live_nodes == 0 {
                println!(
                    "note: no jobward node is serving {} right now; it starts when one does",
                    s.server.db
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
        println!(
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
            before_id: a.before,
            limit: a.limit as u32,
        })
        .await?;
    let now = store.now().await?;
    if a.json {
        print_json(&rows.iter().map(|e| run_json(e, now)).collect::<Vec<_>>());
    } else if rows.is_empty() {
        println!("no executions match");
    } else {
        println!("{}", output::runs_table(&rows, now));
    }
    Ok(())
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
    let path = log_path(&s.server.log_dir, &e.job, e.id);
    let log = jobward_exec::log::read_tail(&path, 64 * 1024)
        .ok()
        .flatten()
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(log_lines)..].join("\n")
        });
    if json {
        #[derive(Serialize)]
        struct Show<'a> {
            execution: output::RunJson<'a>,
            command: &'a str,
            events: &'a [jobward_store::EventRow],
            log_tail: Option<String>,
        }
        print_json(&Show {
            execution: run_json(&e, now),
            command: &e.command,
            events: &events,
            log_tail: log,
        });
        return Ok(());
    }
    let state = match (e.reason, &e.message) {
        (Some(r), Some(m)) => format!("{} ({r}): {m}", output::status(&e)),
        _ => output::status(&e),
    };
    println!(
        "execution {}: job '{}' run #{}, attempt {} of {}",
        e.id, e.job, e.number, e.attempt, e.max_attempts
    );
    let field = |k: &str, v: String| println!("  {k:<13} {v}");
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
        field("owner", owner.clone());
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
    println!("events:");
    for ev in &events {
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
        println!(
            "  {}  {change}{reason}  by {}: {}",
            time(Some(ev.at)),
            ev.actor,
            ev.message
        );
    }
    match log {
        Some(text) if !text.is_empty() => {
            println!("log (last {log_lines} lines of {}):", path.display());
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Some(_) => println!("log: empty ({})", path.display()),
        None => println!("log: none at {}", path.display()),
    }
    Ok(())
}

async fn runs_cancel(cli: &Cli, id: i64, no_wait: bool) -> R {
    let s = settings(cli, None)?;
    let store = open_existing(&s).await?;
    let out = store
        .cancel(CancelParams {
            id,
            reason: Reason::CancelRequested,
            message: format!("cancelled by {}", actor()),
            actor: actor(),
        })
        .await?;
    match out {
        CancelOutcome::Cancelled { execution } => {
            println!("execution {} cancelled (it was queued)", execution.id)
        }
        CancelOutcome::AlreadyTerminal { execution } => {
            println!(
                "execution {} already ended: {}",
                execution.id, execution.state
            );
        }
        CancelOutcome::Requested { execution } => {
            println!(
                "cancel requested for execution {}; its owner {} must stop it by {}",
                execution.id,
                execution.lease_owner.as_deref().unwrap_or("-"),
                time(execution.cancel_deadline)
            );
            if !no_wait {
                let limit = execution.timeouts.kill_grace + Duration::from_secs(5);
                let end = wait_terminal(&store, id, Some(limit)).await?;
                if end.state.is_terminal() {
                    println!(
                        "execution {id} is {}: {}",
                        end.state,
                        end.message.unwrap_or_default()
                    );
                } else {
                    println!(
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
    let report = store
        .cleanup(CleanupParams {
            stale_after,
            apply: a.apply,
            actor: actor(),
        })
        .await?;
    let now = store.now().await?;
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            dry_run: bool,
            stale_after: String,
            matched: usize,
            changed: usize,
            raced: usize,
            executions: Vec<output::RunJson<'a>>,
            retries: Vec<i64>,
        }
        print_json(&Out {
            dry_run: report.dry_run,
            stale_after: format_duration(stale_after),
            matched: report.candidates.len(),
            changed: report.changed.len(),
            raced: report.raced.len(),
            executions: report.candidates.iter().map(|e| run_json(e, now)).collect(),
            retries: report.changed.iter().filter_map(|c| c.retry).collect(),
        });
        return Ok(());
    }
    if report.candidates.is_empty() {
        println!(
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
            e.lease_owner.clone().unwrap_or_else(|| "-".into()),
            became,
        ]);
    }
    println!("{t}");
    if report.dry_run {
        println!(
            "dry run: {} execution(s) would change; run again with --apply to change them",
            report.candidates.len()
        );
    } else {
        let retries = report.changed.iter().filter(|c| c.retry.is_some()).count();
        println!(
            "applied: {} changed to timed_out (manual_cleanup), {} ended meanwhile and were left alone, {} retr{} scheduled",
            report.changed.len(),
            report.raced.len(),
            retries,
            if retries == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct HealthOut {
    status: &'static str,
    metrics: HealthMetrics,
    warnings: Vec<String>,
}

fn assess(m: &HealthMetrics, long_after: Duration, warn_over: u64) -> Vec<String> {
    let mut w = Vec::new();
    if m.long_running_executions > warn_over {
        w.push(format!(
            "{} executions have been running for more than {} (warning above {warn_over})",
            m.long_running_executions,
            format_duration(long_after)
        ));
    }
    if m.stale_executions > 0 {
        w.push(format!(
            "{} running execution(s) have an expired lease: nothing is heartbeating for them (is a node running?)",
            m.stale_executions
        ));
    }
    if m.overdue_queued_executions > 0 {
        w.push(format!(
            "{} queued execution(s) are past their start deadline (is a node running?)",
            m.overdue_queued_executions
        ));
    }
    w
}

async fn health(cli: &Cli, a: &HealthArgs) -> R {
    let s = settings(cli, None)?;
    let long_after = match &a.long_running_after {
        Some(v) => parse_positive_duration(v)
            .map_err(|e| Failure::Input(format!("--long-running-after: {e}")))?,
        None => s.health.long_running_after,
    };
    let warn_over = a.warn_long_running.unwrap_or(s.health.warn_long_running);
    let store = open_existing(&s).await?;
    let metrics = store
        .health(HealthParams {
            long_running_after: long_after,
            stale_after: None,
        })
        .await?;
    let warnings = assess(&metrics, long_after, warn_over);
    let out = HealthOut {
        status: if warnings.is_empty() {
            "healthy"
        } else {
            "warning"
        },
        metrics,
        warnings,
    };
    if a.json {
        print_json(&out);
    } else {
        let m = &out.metrics;
        println!("status: {}", out.status);
        for (k, v) in [
            ("running_executions", m.running_executions),
            ("queued_executions", m.queued_executions),
            ("long_running_executions", m.long_running_executions),
            ("stale_executions", m.stale_executions),
            ("overdue_queued_executions", m.overdue_queued_executions),
            ("recent_executions_24h", m.recent_executions_24h),
            ("live_nodes", m.live_nodes),
        ] {
            println!("{k}: {v}");
        }
        println!("timestamp: {}", m.timestamp.to_rfc3339());
        for w in &out.warnings {
            println!("warning: {w}");
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
        let reaper = Reaper {
            store: store.clone(),
            actor: actor(),
            batch: 500,
        };
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
                println!(
                    "repaired: execution {} (job '{}' run #{}) -> {} ({}): {}",
                    rec.id, rec.job, rec.number, rec.to, rec.reason, rec.message
                );
            }
            println!(
                "repair: {} execution(s) settled by the reaper rules",
                r.recovered.len()
            );
        }
        for v in &violations {
            println!("invariant {}: {}", v.invariant, v.message);
        }
        if violations.is_empty() {
            println!("audit: ok, no violation of invariants 1-3 and 6");
        } else {
            println!("audit: {} violation(s)", violations.len());
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
    println!("{t}");
    Ok(())
}
