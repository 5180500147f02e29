//! The local executor: claims executions for this node, runs each as a supervised child
//! process, heartbeats all of them with one batched statement per interval, and records how
//! each ended through the store's compare-and-set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobward_core::duration::format_duration;
use jobward_core::{Reason, deadline};
use jobward_exec::{Ending, Exit, Finished, Launch, Stop, signal_name};
use jobward_store::{
    ClaimParams, CompleteParams, DynStore, ExecutionId, ExecutionRow, HeartbeatParams,
    HeartbeatReport, LeaseRef, Outcome, ProcessInfo, StoreError,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::service::{LocalRuns, Service};

/// Where an execution's log lives: `LOG_DIR/JOB/ID.log`.
pub fn log_path(log_dir: &Path, job: &str, id: ExecutionId) -> PathBuf {
    log_dir.join(job).join(format!("{id}.log"))
}

struct Handle {
    lease: LeaseRef,
    stop: mpsc::UnboundedSender<Stop>,
    /// Why this node is stopping it, once it is.
    stopping: Option<Reason>,
}

/// Settings of the executor.
#[derive(Clone)]
pub struct ExecutorConfig {
    /// The incarnation it starts as (the lease owner of what it claims).
    pub node_id: String,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub max_running: u32,
    /// Given to every run as JOBWARD_SERVER_URL, for `jobward heartbeat`.
    pub api_url: Option<String>,
}

/// Shared between the node's loops.
pub struct Executor {
    service: Arc<Service>,
    store: DynStore,
    cfg: ExecutorConfig,
    /// The node incarnation it claims and heartbeats as; a node that rejoins after it was
    /// declared lost gives it a new one.
    owner: std::sync::RwLock<String>,
    /// While set, nothing is claimed (a rejoin is under way).
    intake_paused: std::sync::atomic::AtomicBool,
    running: Mutex<HashMap<ExecutionId, Handle>>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    /// Wakes the claim loop when work may be claimable (shared with the HTTP server).
    pub wake: Arc<Notify>,
    /// Wakes `wait_idle` when a run ends.
    finished: Notify,
}

impl Executor {
    pub fn new(service: Arc<Service>, cfg: ExecutorConfig, wake: Arc<Notify>) -> Arc<Executor> {
        Arc::new(Executor {
            store: service.store.clone(),
            service,
            owner: std::sync::RwLock::new(cfg.node_id.clone()),
            intake_paused: Default::default(),
            cfg,
            running: Mutex::new(HashMap::new()),
            tasks: tokio::sync::Mutex::new(JoinSet::new()),
            wake,
            finished: Notify::new(),
        })
    }

    /// The incarnation this executor claims and heartbeats as.
    pub fn owner(&self) -> String {
        self.owner.read().expect("executor lock").clone()
    }

    /// Claims as a new incarnation from now on (after a rejoin; nothing may be running).
    pub fn rebind(&self, incarnation: String) {
        *self.owner.write().expect("executor lock") = incarnation;
    }

    /// Stops (or resumes) claiming.
    pub fn pause_intake(&self, paused: bool) {
        self.intake_paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("executor lock").len()
    }

    pub fn running_ids(&self) -> Vec<ExecutionId> {
        self.running
            .lock()
            .expect("executor lock")
            .keys()
            .copied()
            .collect()
    }

    fn leases(&self) -> Vec<LeaseRef> {
        self.running
            .lock()
            .expect("executor lock")
            .values()
            .map(|h| h.lease.clone())
            .collect()
    }

    /// Asks a run to stop. `Immediate` is for a lost lease; `Graceful` carries the reason the
    /// execution will be recorded with.
    pub fn stop(&self, id: ExecutionId, how: Stop, reason: Option<Reason>) -> bool {
        let mut map = self.running.lock().expect("executor lock");
        let Some(h) = map.get_mut(&id) else {
            return false;
        };
        if how == Stop::Graceful {
            if h.stopping.is_some() {
                return true;
            }
            h.stopping = reason;
        }
        h.stop.send(how).is_ok()
    }

    /// Claims what it can run now and starts it. Returns how many started.
    pub async fn claim_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let free = (self.cfg.max_running as usize).saturating_sub(self.running_count());
        if free == 0 || self.intake_paused.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        let owner = self.owner();
        let claimed = self
            .service
            .claim(ClaimParams {
                serves: Default::default(),
                owner: owner.clone(),
                runner: "local".into(),
                node_id: Some(owner),
                limit: free as u32,
            })
            .await?;
        let n = claimed.len();
        for row in claimed {
            self.start(row).await;
        }
        Ok(n)
    }

    async fn start(self: &Arc<Self>, row: ExecutionRow) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.running.lock().expect("executor lock").insert(
            row.id,
            Handle {
                lease: row.lease(),
                stop: tx,
                stopping: None,
            },
        );
        let me = self.clone();
        self.tasks.lock().await.spawn(async move {
            let id = row.id;
            me.run(row, rx).await;
            me.running.lock().expect("executor lock").remove(&id);
            me.finished.notify_waiters();
            me.wake.notify_one();
        });
    }

    async fn run(self: &Arc<Self>, row: ExecutionRow, stop: mpsc::UnboundedReceiver<Stop>) {
        let mut env = vec![
            (jobward_exec::MARK_EXECUTION.to_string(), row.id.to_string()),
            ("JOBWARD_JOB".to_string(), row.job.clone()),
            ("JOBWARD_RUN_NUMBER".to_string(), row.number.to_string()),
            ("JOBWARD_ATTEMPT".to_string(), row.attempt.to_string()),
            (
                jobward_exec::MARK_NODE.to_string(),
                row.lease_owner.clone().unwrap_or_else(|| self.owner()),
            ),
            ("JOBWARD_TRIGGER".to_string(), row.trigger.to_string()),
        ];
        if let Some(at) = row.scheduled_for {
            env.push(("JOBWARD_SCHEDULED_FOR".into(), at.to_rfc3339()));
        }
        if let Some(p) = &row.payload {
            env.push(("JOBWARD_PAYLOAD".into(), p.to_string()));
        }
        if let Some(c) = &row.checkpoint {
            env.push(("JOBWARD_CHECKPOINT".into(), c.to_string()));
        }
        if let Some(tp) = crate::telemetry::traceparent(&row) {
            env.push(("TRACEPARENT".into(), tp));
        }
        if let (Some(url), Some(token)) = (&self.cfg.api_url, &row.lease_token) {
            env.push(("JOBWARD_SERVER_URL".into(), url.clone()));
            env.push(("JOBWARD_LEASE_TOKEN".into(), token.clone()));
        }
        let launch = Launch {
            command: row.command.clone(),
            env,
            log_path: log_path(&self.cfg.log_dir, &row.job, row.id),
            log_max_bytes: self.cfg.log_max_bytes,
            cwd: None,
            echo: false,
        };
        let lease = row.lease();
        let running = match jobward_exec::spawn(&launch) {
            Ok(r) => r,
            Err(e) => {
                let outcome = Outcome {
                    reason: Some(Reason::SpawnError),
                    message: Some(format!("could not start `sh -c`: {e}")),
                    exit_code: None,
                    signal: None,
                };
                self.record(&row, outcome).await;
                return;
            }
        };
        let ident = running.identity.clone();
        let info = ProcessInfo {
            pid: ident.pid,
            pgid: ident.pgid,
            start_ticks: ident.start_ticks,
            boot_id: ident.boot_id.clone(),
        };
        if let Err(e) = self.store.record_process(&lease, &info).await {
            // The lease is already gone (or the ledger is unreachable): do not run unrecorded.
            warn!(execution = row.id, error = %e, "could not record the process; stopping it");
            self.stop(row.id, Stop::Immediate, None);
        }
        let now = self
            .store
            .now()
            .await
            .unwrap_or_else(|_| chrono::Utc::now());
        let started = row.started_at.unwrap_or(now);
        let terminate_in = deadline::between(now, row.timeouts.terminate_at(started));
        let terminate_at = tokio::time::Instant::now() + terminate_in;
        let finished = running
            .supervise(Some(terminate_at), row.timeouts.kill_grace, stop)
            .await;
        let stopping = self
            .running
            .lock()
            .expect("executor lock")
            .get(&row.id)
            .and_then(|h| h.stopping);
        let outcome = outcome_of(&row, &finished, stopping);
        self.record(&row, outcome).await;
    }

    /// Records the end of a run, retrying while the store is briefly unavailable. A refusal
    /// (lease lost) is final: the ledger already decided, and the refusal is in its event log.
    async fn record(&self, row: &ExecutionRow, outcome: Outcome) {
        // The database may be briefly unreachable (a restart, a failover): keep trying for a
        // while. The run stays in this node's heartbeat batch meanwhile, so its lease is
        // renewed as soon as the database answers again.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut delay = Duration::from_millis(100);
        loop {
            let params = CompleteParams {
                lease: row.lease(),
                outcome: outcome.clone(),
                actor: row.lease_owner.clone().unwrap_or_else(|| self.owner()),
            };
            match self.service.complete(params, None).await {
                Ok(_) => return,
                Err(e @ StoreError::LeaseLost { .. }) => {
                    warn!(job = %row.job, number = row.number, execution = row.id, "report refused: {e}");
                    return;
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                    crate::metrics::database_error("complete");
                    warn!(execution = row.id, error = %e, "could not record the end yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    error!(execution = row.id, error = %e, "could not record the end; the reaper will settle it at its lease expiry");
                    return;
                }
            }
        }
    }

    /// One batched heartbeat for every run of this node (and the node's own lease).
    pub async fn heartbeat(&self, node_lease: Duration) -> Result<HeartbeatReport, StoreError> {
        let owner = self.owner();
        let report = self
            .service
            .heartbeat(HeartbeatParams {
                owner: owner.clone(),
                leases: self.leases().into_iter().map(Into::into).collect(),
                node: Some((owner, node_lease)),
            })
            .await?;
        for lost in &report.lost {
            warn!(execution = lost.id, state = ?lost.state, "lease lost: killing the process group at once");
            self.stop(lost.id, Stop::Immediate, None);
        }
        for (id, reason) in &report.cancel_requested {
            self.stop(*id, Stop::Graceful, Some(*reason));
        }
        Ok(report)
    }

    /// Acts on cancel requests written by other processes (`jobward runs cancel`).
    pub async fn poll_cancels(&self) -> Result<(), StoreError> {
        if self.running_count() == 0 {
            return Ok(());
        }
        for (id, reason) in self.store.cancel_requests(&self.owner()).await? {
            if self.stop(id, Stop::Graceful, Some(reason)) {
                info!(execution = id, reason = %reason, "stopping on cancel request");
            }
        }
        Ok(())
    }

    /// Waits until no run is left, or `timeout` passes. Returns what still runs.
    pub async fn wait_idle(&self, timeout: Duration) -> Vec<ExecutionId> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.finished.notified();
            if self.running_count() == 0 {
                return vec![];
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.running_ids();
            }
        }
    }

    /// Waits for every run task to end (after they were all told to stop).
    pub async fn join_all(&self) {
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

impl LocalRuns for Executor {
    fn stop_gracefully(&self, id: ExecutionId, reason: Reason) -> bool {
        self.stop(id, Stop::Graceful, Some(reason))
    }

    fn kill(&self, id: ExecutionId) -> bool {
        self.stop(id, Stop::Immediate, None)
    }
}

/// How a finished process is recorded.
pub fn outcome_of(row: &ExecutionRow, f: &Finished, stopping: Option<Reason>) -> Outcome {
    let (exit_code, signal) = match f.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    let how = match f.exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("ended by {}", signal_name(s)),
    };
    let kill = if f.escalated {
        format!(
            "SIGKILL after {} grace",
            format_duration(row.timeouts.kill_grace)
        )
    } else {
        "SIGTERM".to_string()
    };
    let fail = |reason, message| Outcome {
        reason: Some(reason),
        message: Some(message),
        exit_code,
        signal,
    };
    match (f.ending, f.exit) {
        (Ending::Exited, Exit::Code(0)) => Outcome {
            reason: None,
            message: None,
            exit_code,
            signal,
        },
        (Ending::Exited, Exit::Code(127)) => fail(
            Reason::ExitCode,
            "exited with code 127 (command not found)".into(),
        ),
        (Ending::Exited, Exit::Code(c)) => fail(Reason::ExitCode, format!("exited with code {c}")),
        (Ending::Exited, Exit::Signal(s)) => fail(
            Reason::Signal,
            format!("killed by signal {s} ({})", signal_name(s)),
        ),
        (Ending::RunTimeout, _) => fail(
            Reason::RunTimeout,
            format!(
                "exceeded its run timeout of {}; stopped with {kill} ({how})",
                format_duration(row.timeouts.run)
            ),
        ),
        (Ending::Stopped(Stop::Graceful), _) => {
            let reason = stopping.unwrap_or(Reason::CancelRequested);
            fail(
                reason,
                format!("stopped on request ({reason}) with {kill} ({how})"),
            )
        }
        (Ending::Stopped(Stop::Immediate), _) => {
            // The lease was lost: this report will be refused, and says what really happened.
            fail(
                Reason::Signal,
                format!("killed with SIGKILL after its lease was lost ({how})"),
            )
        }
    }
}
