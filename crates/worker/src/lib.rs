//! The remote worker: claims executions of some queues from a jobward server, runs each with
//! the same process handling as a node (`jobward_exec`), heartbeats all its leases in one call,
//! and completes them with their lease tokens.
//!
//! Its promise is the ledger's: when a lease is lost (the server says so, or the server has
//! been unreachable for longer than the lease), the process group is killed at once, so no
//! orphan keeps running while the ledger says the execution is over. On shutdown it stops
//! claiming, lets running executions finish within a grace period, and hands the rest back
//! so they run again at once. This crate knows the protocol, never the store.
//!
//! Completions are coalesced: whatever ended while the previous report was in flight goes in
//! the next `complete-batch` call, so a busy worker records many runs per request (each still
//! fenced by its own lease and answered alone).

pub mod client;
pub mod handler;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use handler::Beat;
use jobward_exec::Stop;
use jobward_protocol::*;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};

pub use async_trait::async_trait;
pub use client::{Client, ClientError};
pub use handler::{Command, Context, Failure, Handler, Stopping};

/// Settings of one worker process.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Handlers by job name, for handler jobs (a queue and no command).
    pub handlers: HashMap<String, Arc<dyn Handler>>,
    /// Whether it runs jobs' commands (with the built-in [`Command`] handler).
    pub commands: bool,
    pub server: String,
    pub token: Option<String>,
    pub queues: Vec<String>,
    pub concurrency: u32,
    pub worker_id: String,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    /// How long a shutdown lets running executions finish before handing them back.
    pub shutdown_grace: Duration,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut handlers: Vec<&String> = self.handlers.keys().collect();
        handlers.sort();
        f.debug_struct("WorkerConfig")
            .field("server", &self.server)
            .field("queues", &self.queues)
            .field("handlers", &handlers)
            .field("commands", &self.commands)
            .field("concurrency", &self.concurrency)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// What a worker run did, for its caller's log.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub completed: u64,
    pub lost: u64,
    pub handed_back: u64,
}

struct Run {
    proof: LeaseProof,
    stop: mpsc::UnboundedSender<Stop>,
    /// What its handler is told, and how its end is recorded (a cancel, a hand-back at
    /// shutdown).
    stopping: watch::Sender<Option<Stopping>>,
    /// What the next heartbeat carries for it.
    beat: Arc<Mutex<Beat>>,
    heartbeat_timeout: Duration,
}

impl Run {
    /// The first reason to stop is the one the handler sees, except that a lost lease
    /// overrides any other (nothing of the run will be recorded any more).
    fn tell(&self, why: Stopping) {
        self.stopping.send_if_modified(|s| {
            let first = s.is_none() || (why == Stopping::LeaseLost && *s != Some(why));
            if first {
                *s = Some(why);
            }
            first
        });
    }
}

struct Shared {
    client: Client,
    cfg: WorkerConfig,
    runs: Mutex<HashMap<i64, Run>>,
    finished: Notify,
    /// When the server last confirmed our leases.
    last_heartbeat: Mutex<Instant>,
    /// Beats at the end of every heartbeat-loop round (the service manager's watchdog).
    liveness: jobward_exec::service::Liveness,
    report: Mutex<WorkerReport>,
    /// Completions waiting for the reporter.
    reports: mpsc::UnboundedSender<Pending>,
}

/// A completion on its way to the server; `recorded` fires once the server answered it (or
/// it was given up).
struct Pending {
    completion: CompletionReport,
    lease: Duration,
    recorded: oneshot::Sender<()>,
}

/// Most completions in one call.
const REPORT_BATCH: usize = 500;

impl Shared {
    /// Stops a run's process (a command) and tells its handler why. A lost lease is
    /// `Stop::Immediate`; a cancel or a shutdown is graceful.
    fn stop(&self, id: i64, why: Stopping) {
        if let Some(r) = self.runs.lock().expect("worker lock").get(&id) {
            let how = match why {
                Stopping::LeaseLost => Stop::Immediate,
                _ => Stop::Graceful,
            };
            let _ = r.stop.send(how);
            r.tell(why);
        }
    }

    /// Tells a run's handler its run timeout passed (a command's supervisor enforces its own).
    fn run_timeout(&self, id: i64) {
        if let Some(r) = self.runs.lock().expect("worker lock").get(&id) {
            r.tell(Stopping::RunTimeout);
        }
    }

    fn running(&self) -> usize {
        self.runs.lock().expect("worker lock").len()
    }
}

/// Runs the worker until `shutdown` resolves, then drains and hands back.
pub async fn run(
    cfg: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerReport, ClientError> {
    let client = Client::new(&cfg.server, cfg.token.clone())?;
    let (reports, pending) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        reports,
        client,
        cfg: cfg.clone(),
        runs: Mutex::new(HashMap::new()),
        finished: Notify::new(),
        last_heartbeat: Mutex::new(Instant::now()),
        liveness: Default::default(),
        report: Mutex::new(WorkerReport::default()),
    });
    // What a previous run under this worker id left behind (it was killed before it could
    // stop its children) is provably ours: kill it before taking new work.
    let owner = cfg.worker_id.clone();
    let sweep = tokio::task::spawn_blocking(move || {
        let sweep = jobward_exec::ProcessTable::snapshot().sweep_owner(&owner);
        jobward_exec::wait_gone(&sweep.killed, Duration::from_secs(2));
        sweep
    })
    .await
    .unwrap_or_default();
    if !sweep.killed.is_empty() {
        warn!(killed = ?sweep.killed, "killed processes left by a previous run of this worker id");
    }
    let mut tasks = JoinSet::new();
    let (hb_stop_tx, hb_stop) = watch::channel(false);
    let hb = tokio::spawn(heartbeat_loop(shared.clone(), hb_stop));
    let reporter = tokio::spawn(reporter(shared.clone(), pending));
    info!(worker = %cfg.worker_id, server = %cfg.server, queues = ?cfg.queues, concurrency = cfg.concurrency, commands = cfg.commands, handlers = ?{
        let mut h: Vec<&String> = cfg.handlers.keys().collect();
        h.sort();
        h
    }, "worker started");
    // What a previous run left is dealt with and the loops run: ready for the service manager.
    jobward_exec::service::ready(&format!(
        "worker {} claiming {:?} from {}",
        cfg.worker_id, cfg.queues, cfg.server
    ));
    let watchdog = {
        let shared = shared.clone();
        jobward_exec::service::spawn_watchdog(move || shared.liveness.age())
    };
    let mut handler_names: Vec<String> = cfg.handlers.keys().cloned().collect();
    handler_names.sort();
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let free = cfg.concurrency as usize - shared.running();
        if free == 0 {
            tokio::select! {
                _ = shared.finished.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                _ = shutdown.changed() => break,
            }
        }
        let req = ClaimRequest {
            handlers: Some(handler_names.clone()),
            commands: Some(cfg.commands),
            worker_id: cfg.worker_id.clone(),
            queues: cfg.queues.clone(),
            batch: free.min(100) as u32,
            wait_ms: 20_000,
        };
        let mut claim = std::pin::pin!(shared.client.claim(&req));
        let claimed = tokio::select! {
            r = &mut claim => r,
            _ = shutdown.changed() => {
                // A claim in flight may already hold leases: wait briefly for its answer and
                // hand back what it brings, rather than leave it to expire as a timeout.
                if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), claim).await {
                    for e in &resp.executions {
                        hand_back(&shared, e, "the worker is shutting down").await;
                    }
                }
                break;
            }
        };
        match claimed {
            Ok(resp) => {
                backoff = Duration::from_millis(200);
                if !resp.executions.is_empty() {
                    let ids: Vec<i64> = resp.executions.iter().map(|e| e.id).collect();
                    info!(count = ids.len(), executions = ?ids, "claimed");
                }
                for e in resp.executions {
                    start(&shared, &mut tasks, e);
                }
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                error!(error = %e, "claim refused; stopping the worker");
                jobward_exec::service::stopping("claim refused");
                shutdown_runs(&shared, &mut tasks).await;
                reporter.abort();
                let _ = hb_stop_tx.send(true);
                let _ = hb.await;
                return Err(e);
            }
        }
        // Reap finished run tasks without waiting.
        while tasks.try_join_next().is_some() {}
    }
    info!(running = shared.running(), grace = ?cfg.shutdown_grace, "worker shutting down: no more claims");
    jobward_exec::service::stopping("worker shutting down: no more claims");
    shutdown_runs(&shared, &mut tasks).await;
    // Every run task waited for its completion to be answered: the reporter has nothing left.
    reporter.abort();
    let _ = hb_stop_tx.send(true);
    let _ = hb.await;
    if let Some(w) = watchdog {
        w.abort();
    }
    let report = shared.report.lock().expect("worker lock").clone();
    info!(
        completed = report.completed,
        lost = report.lost,
        handed_back = report.handed_back,
        "worker stopped"
    );
    Ok(report)
}

/// Waits up to the grace for running executions, then stops the rest and hands them back.
async fn shutdown_runs(shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
    let until = Instant::now() + shared.cfg.shutdown_grace;
    while shared.running() > 0 && Instant::now() < until {
        let _ = tokio::time::timeout_at(until, shared.finished.notified()).await;
    }
    let left: Vec<i64> = shared
        .runs
        .lock()
        .expect("worker lock")
        .keys()
        .copied()
        .collect();
    for id in &left {
        shared.stop(*id, Stopping::ShuttingDown);
    }
    while tasks.join_next().await.is_some() {}
}

fn start(shared: &Arc<Shared>, tasks: &mut JoinSet<()>, e: ClaimedExecution) {
    let handler: Option<Arc<dyn Handler>> = if !e.command.is_empty() && shared.cfg.commands {
        Some(Arc::new(Command))
    } else {
        shared.cfg.handlers.get(&e.job).cloned()
    };
    let Some(handler) = handler else {
        // Offered by a server that does not filter claims: not ours to run, and not a failure.
        let shared = shared.clone();
        tasks.spawn(async move {
            let why = if e.command.is_empty() {
                format!("no handler for {} on this worker", e.job)
            } else {
                format!("this worker does not run commands (job {})", e.job)
            };
            hand_back(&shared, &e, &why).await;
        });
        return;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (stopping_tx, stopping) = watch::channel(None);
    let ctx = Context::new(
        e.clone(),
        stopping,
        rx,
        env_of(shared, &e),
        shared
            .cfg
            .log_dir
            .join(&e.job)
            .join(format!("{}.log", e.id)),
        shared.cfg.log_max_bytes,
    );
    shared.runs.lock().expect("worker lock").insert(
        e.id,
        Run {
            proof: LeaseProof {
                id: e.id,
                attempt: e.attempt,
                lease_token: e.lease_token.clone(),
            },
            stop: tx,
            stopping: stopping_tx,
            beat: ctx.beat.clone(),
            heartbeat_timeout: Duration::from_millis(e.heartbeat_timeout_ms),
        },
    );
    let shared = shared.clone();
    tasks.spawn(async move {
        let id = e.id;
        execute(&shared, e, handler, ctx).await;
        shared.runs.lock().expect("worker lock").remove(&id);
        shared.finished.notify_waiters();
    });
}

fn env_of(shared: &Shared, e: &ClaimedExecution) -> Vec<(String, String)> {
    let mut env = vec![
        (jobward_exec::MARK_EXECUTION.to_string(), e.id.to_string()),
        (
            jobward_exec::MARK_NODE.to_string(),
            shared.cfg.worker_id.clone(),
        ),
        ("JOBWARD_JOB".to_string(), e.job.clone()),
        ("JOBWARD_RUN_NUMBER".to_string(), e.number.to_string()),
        ("JOBWARD_ATTEMPT".to_string(), e.attempt.to_string()),
        ("JOBWARD_TRIGGER".to_string(), e.trigger.clone()),
        (
            "JOBWARD_WORKER_ID".to_string(),
            shared.cfg.worker_id.clone(),
        ),
        (
            "JOBWARD_SERVER_URL".to_string(),
            shared.client.base().to_string(),
        ),
        ("JOBWARD_LEASE_TOKEN".to_string(), e.lease_token.clone()),
    ];
    if let Some(t) = e.scheduled_for {
        env.push(("JOBWARD_SCHEDULED_FOR".into(), t.to_rfc3339()));
    }
    if let Some(p) = &e.payload {
        env.push(("JOBWARD_PAYLOAD".into(), p.to_string()));
    }
    if let Some(c) = &e.checkpoint {
        env.push(("JOBWARD_CHECKPOINT".into(), c.to_string()));
    }
    if let Some(tp) = &e.traceparent {
        env.push(("TRACEPARENT".into(), tp.clone()));
    }
    env
}

/// Runs a handler to its end (or abandons it a kill grace after it was asked to stop), then
/// queues its completion, or hands it back when the worker is shutting down.
async fn execute(
    shared: &Arc<Shared>,
    e: ClaimedExecution,
    handler: Arc<dyn Handler>,
    ctx: Context,
) {
    info!(execution = e.id, job = %e.job, number = e.number, attempt = e.attempt, "running");
    let grace = Duration::from_millis(e.kill_grace_ms) + Duration::from_secs(1);
    let terminate_at = Instant::now() + Duration::from_millis(e.terminate_after_ms);
    let mut stopping = ctx.stopping_watch();
    let mut give_up: Option<Instant> = None;
    let result = {
        let run = handler.run(&ctx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => break r,
                changed = stopping.changed(), if give_up.is_none() => {
                    if changed.is_err() || stopping.borrow().is_some() {
                        give_up = Some(Instant::now() + grace);
                    }
                }
                _ = tokio::time::sleep_until(give_up.unwrap_or(terminate_at)) => {
                    if give_up.is_some() {
                        warn!(execution = e.id, "the handler did not stop within its kill grace; abandoned");
                        break Err(Failure::new("did not stop within its kill grace after it was asked to; abandoned"));
                    }
                    shared.run_timeout(e.id);
                    give_up = Some(Instant::now() + grace);
                }
            }
        }
    };
    if ctx.stopping() == Some(Stopping::ShuttingDown) {
        hand_back(
            shared,
            &e,
            "the worker is shutting down and the run did not finish within its grace period",
        )
        .await;
        return;
    }
    let text = |m: String| (!m.trim().is_empty()).then_some(m);
    let (outcome, exit_code, signal, error) = match (result, ctx.stopping()) {
        (Ok(()), _) => (
            Outcome::Completed,
            (!e.command.is_empty()).then_some(0),
            None,
            None,
        ),
        (Err(f), Some(Stopping::Cancel)) => {
            (Outcome::Cancelled, f.exit_code, f.signal, text(f.message))
        }
        (Err(f), Some(Stopping::RunTimeout)) => (
            Outcome::TimedOut,
            f.exit_code,
            f.signal,
            text(f.message)
                .or_else(|| Some("exceeded its run timeout; stopped by its worker".into())),
        ),
        (Err(f), Some(Stopping::LeaseLost)) => (
            Outcome::Failed,
            f.exit_code,
            f.signal,
            Some("stopped after its lease was lost".into()),
        ),
        (Err(f), _) => (f.outcome, f.exit_code, f.signal, text(f.message)),
    };
    // A checkpoint or progress set just before the end goes out before the completion.
    flush_beat(shared, &e).await;
    let log_tail = jobward_exec::log::read_tail(&ctx.log_path, 60 * 1024)
        .ok()
        .flatten()
        .or_else(|| ctx.log_tail());
    let (recorded, answered) = oneshot::channel();
    let pending = Pending {
        completion: CompletionReport {
            id: e.id,
            attempt: e.attempt,
            lease_token: e.lease_token.clone(),
            outcome,
            exit_code,
            signal,
            error,
            log_tail,
        },
        lease: Duration::from_millis(e.heartbeat_timeout_ms),
        recorded,
    };
    if shared.reports.send(pending).is_ok() {
        // Its lease stays in the heartbeat batch until the server has answered.
        let _ = answered.await;
    }
}

/// Sends a run's unsent progress, phase and checkpoint in a heartbeat of its own.
async fn flush_beat(shared: &Arc<Shared>, e: &ClaimedExecution) {
    let beat = match shared.runs.lock().expect("worker lock").get(&e.id) {
        Some(r) => std::mem::take(&mut *r.beat.lock().expect("beat lock")),
        None => return,
    };
    if beat.is_empty() {
        return;
    }
    let req = HeartbeatRequest {
        worker_id: shared.cfg.worker_id.clone(),
        leases: vec![LeaseReport {
            id: e.id,
            attempt: e.attempt,
            lease_token: e.lease_token.clone(),
            progress: beat.progress,
            phase: beat.phase,
            checkpoint: beat.checkpoint,
        }],
    };
    if let Err(err) = shared.client.heartbeat(&req).await {
        warn!(execution = e.id, error = %err, "could not send the run's last progress or checkpoint");
    }
}

/// Sends what ended in batches: everything queued while the previous call was in flight
/// goes in the next one.
async fn reporter(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        record(&shared, batch).await;
    }
}

/// Records a batch of ends, retrying while the server is unreachable for as long as the
/// leases can still be alive. A refusal is final: the ledger already decided.
async fn record(shared: &Arc<Shared>, batch: Vec<Pending>) {
    let lease = batch.iter().map(|p| p.lease).min().unwrap_or_default();
    let req = CompleteBatchRequest {
        worker_id: shared.cfg.worker_id.clone(),
        completions: batch.iter().map(|p| p.completion.clone()).collect(),
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match shared.client.complete_batch(&req).await {
            Ok(r) => {
                let mut report = shared.report.lock().expect("worker lock");
                for r in &r.results {
                    match r.result {
                        ItemResult::Accepted | ItemResult::Repeated => {
                            report.completed += 1;
                            info!(
                                execution = r.id,
                                status = r.status.map(|s| s.as_str()).unwrap_or(""),
                                "recorded"
                            );
                        }
                        ItemResult::LeaseLost => {
                            report.lost += 1;
                            warn!(execution = r.id, "completion refused: the lease was lost");
                        }
                        ItemResult::Rejected => {
                            let why = r.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
                            error!(execution = r.id, "completion rejected: {why}");
                        }
                    }
                }
                break;
            }
            Err(err)
                if err.is_transient()
                    && shared.last_heartbeat.lock().expect("worker lock").elapsed() < lease * 4 =>
            {
                warn!(count = batch.len(), error = %err, "could not record these ends yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                error!(count = batch.len(), error = %err, "could not record these ends; the server will settle them at their lease expiry");
                break;
            }
        }
    }
    for p in batch {
        let _ = p.recorded.send(());
    }
}

async fn hand_back(shared: &Arc<Shared>, e: &ClaimedExecution, why: &str) {
    let req = ReleaseRequest {
        worker_id: shared.cfg.worker_id.clone(),
        leases: vec![LeaseProof {
            id: e.id,
            attempt: e.attempt,
            lease_token: e.lease_token.clone(),
        }],
        reason: Some(why.to_string()),
    };
    match shared.client.release(&req).await {
        Ok(r) if !r.released.is_empty() => {
            shared.report.lock().expect("worker lock").handed_back += 1;
            info!(execution = e.id, retry = ?r.retries, "handed back: it runs again at once");
        }
        Ok(_) => warn!(
            execution = e.id,
            "hand-back refused: the lease was already lost"
        ),
        Err(err) => {
            warn!(execution = e.id, error = %err, "could not hand back; the server will settle it at its lease expiry")
        }
    }
}

/// One call renews every lease. Lost leases are killed at once; cancels are stopped
/// gracefully; a server unreachable for longer than a lease means every lease is lost.
async fn heartbeat_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (leases, beats, interval, lease): (Vec<LeaseReport>, Vec<_>, Duration, Duration) = {
            let runs = shared.runs.lock().expect("worker lock");
            let shortest = runs
                .values()
                .map(|r| r.heartbeat_timeout)
                .min()
                .unwrap_or(Duration::from_secs(3));
            let mut beats = Vec::new();
            let leases = runs
                .values()
                .map(|r| {
                    let beat = std::mem::take(&mut *r.beat.lock().expect("beat lock"));
                    beats.push((r.beat.clone(), beat.clone()));
                    LeaseReport {
                        id: r.proof.id,
                        attempt: r.proof.attempt,
                        lease_token: r.proof.lease_token.clone(),
                        progress: beat.progress,
                        phase: beat.phase,
                        checkpoint: beat.checkpoint,
                    }
                })
                .collect();
            (
                leases,
                beats,
                (shortest / 3).max(Duration::from_millis(100)),
                shortest,
            )
        };
        if leases.is_empty() {
            *shared.last_heartbeat.lock().expect("worker lock") = Instant::now();
        } else {
            let req = HeartbeatRequest {
                worker_id: shared.cfg.worker_id.clone(),
                leases: leases.clone(),
            };
            match shared.client.heartbeat(&req).await {
                Ok(r) => {
                    *shared.last_heartbeat.lock().expect("worker lock") = Instant::now();
                    for l in &r.lost {
                        warn!(
                            execution = l.id,
                            status = l.status.map(|s| s.as_str()).unwrap_or("gone"),
                            "lease lost: killing its process group now"
                        );
                        shared.stop(l.id, Stopping::LeaseLost);
                    }
                    for c in &r.cancel {
                        info!(execution = c.id, reason = %c.reason, "cancel requested: stopping it");
                        shared.stop(c.id, Stopping::Cancel);
                    }
                }
                Err(err) if err.is_lease_lost() => {
                    warn!("every lease lost ({err}): killing their process groups now");
                    for l in &leases {
                        shared.stop(l.id, Stopping::LeaseLost);
                    }
                }
                Err(err) => {
                    // What this call carried goes with the next one.
                    for (to, old) in beats {
                        to.lock().expect("beat lock").restore(old);
                    }
                    let silent = shared.last_heartbeat.lock().expect("worker lock").elapsed();
                    warn!(error = %err, silent = ?silent, "heartbeat failed");
                    if silent > lease {
                        error!(
                            "no heartbeat confirmed for longer than the lease: the server has settled these runs; killing them"
                        );
                        for l in &leases {
                            shared.stop(l.id, Stopping::LeaseLost);
                        }
                    }
                }
            }
        }
        shared.liveness.beat();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
