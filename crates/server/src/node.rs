//! One jobward node: a fresh incarnation per start, startup recovery before any scheduling
//! (invariant 8), the loops that drive the executor, scheduler, reaper and retention, and a
//! graceful shutdown that leaves nothing of this node live (invariant 10).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use jobward_core::Reason;
use jobward_core::duration::format_duration;
use jobward_exec::service::Liveness;
use jobward_exec::{Recorded, Stop};
use jobward_store::{
    CancelParams, DynStore, ExecutionId, NewNode, ReapReport, RecoverParams, RegisterOutcome,
    StoreError, SyncJobs, SyncReport,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::alerts::Alerts;
use crate::executor::{Executor, ExecutorConfig};
use crate::service::{LocalRuns, Service};
use crate::services::{
    HealthAlert, HealthAlertConfig, LostNodes, LostNodesConfig, Reaper, ReaperConfig, Retention,
    RetentionConfig, Scheduler, SchedulerConfig,
};

/// Settings of a node, validated by the caller.
#[derive(Clone)]
pub struct NodeConfig {
    /// Stable name; a restart with the same name recovers what the previous incarnation ran.
    pub name: String,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub max_running: u32,
    /// How long the node's own lease lasts without a heartbeat.
    pub node_lease: Duration,
    /// How often leases (the node's and its executions') are renewed.
    pub heartbeat_interval: Duration,
    /// How often the executor looks for work and cancel requests written by other processes.
    pub poll_interval: Duration,
    /// How long a graceful shutdown lets running executions finish before cancelling them.
    pub shutdown_grace: Duration,
    /// Given to runs as JOBWARD_SERVER_URL (for `jobward heartbeat`).
    pub api_url: Option<String>,
    pub alerts: Option<Alerts>,
    pub reaper: ReaperConfig,
    pub scheduler: SchedulerConfig,
    pub retention: RetentionConfig,
    pub lost_nodes: LostNodesConfig,
    /// Health settings and how often the health alert checks them.
    pub health_alert: HealthAlertConfig,
}

impl NodeConfig {
    /// Defaults for a node named `name` that keeps logs in `log_dir`.
    pub fn new(name: impl Into<String>, log_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            log_dir: log_dir.into(),
            log_max_bytes: 1 << 20,
            max_running: 64,
            node_lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
            api_url: None,
            alerts: None,
            reaper: ReaperConfig::default(),
            scheduler: SchedulerConfig::default(),
            retention: RetentionConfig::default(),
            lost_nodes: LostNodesConfig::default(),
            health_alert: HealthAlertConfig::default(),
        }
    }
}

/// What the rest of the process (the HTTP probes, the watchdog) may know of the node.
#[derive(Debug, Default)]
pub struct NodeStatus {
    /// The current incarnation (a rejoin after being declared lost gives a new one).
    incarnation: std::sync::RwLock<String>,
    /// False while the node rejoins, and once it gave up (superseded).
    registered: std::sync::atomic::AtomicBool,
    /// Beats at the end of every maintenance tick (leases, lost nodes, reaper).
    pub maintenance: Liveness,
    /// Beats at the end of every scheduler tick.
    pub scheduler: Liveness,
    /// Beats at the end of every claim-and-cancel-poll tick.
    pub intake: Liveness,
    /// Cleared when a graceful shutdown stops the scheduler and the claimers on purpose.
    intake_watched: std::sync::atomic::AtomicBool,
    /// How long each loop sleeps between ticks (maintenance, scheduler, intake): a loop is
    /// stalled by the time since its last tick beyond its own sleep.
    intervals: [Duration; 3],
}

impl NodeStatus {
    pub fn incarnation(&self) -> String {
        self.incarnation.read().expect("node lock").clone()
    }

    /// The node holds a live registration (it is not rejoining, nor superseded).
    pub fn registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How long the most stalled of the node's main loops has gone without completing a
    /// tick (the service manager's watchdog is fed only while this is short). The scheduler
    /// and the claimers are not watched once a graceful shutdown stopped them.
    pub fn stalled_for(&self) -> Duration {
        let [maintenance, scheduler, intake] = self.intervals;
        let mut stalled = self.maintenance.age().saturating_sub(maintenance);
        if self
            .intake_watched
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            stalled = stalled
                .max(self.scheduler.age().saturating_sub(scheduler))
                .max(self.intake.age().saturating_sub(intake));
        }
        stalled
    }

    fn set_registered(&self, on: bool) {
        self.registered
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "another jobward node named '{name}' is running on this database (pid {pid} on {hostname}, last heartbeat {heartbeat_at}); \
         stop it first, or start this one with another --node-name"
    )]
    NameInUse {
        name: String,
        pid: i32,
        hostname: String,
        heartbeat_at: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What startup recovery did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub report: ReapReport,
    pub processes_killed: usize,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Executions that finished on their own during the grace period.
    pub drained: usize,
    /// Executions cancelled with reason `shutdown`.
    pub cancelled: Vec<ExecutionId>,
}

pub struct Node {
    status: Arc<NodeStatus>,
    store: DynStore,
    service: Arc<Service>,
    cfg: NodeConfig,
    executor: Arc<Executor>,
    intake: watch::Sender<bool>,
    maintenance: watch::Sender<bool>,
    intake_tasks: JoinSet<()>,
    maintenance_tasks: JoinSet<()>,
    superseded: Arc<Notify>,
    pub sync: SyncReport,
    pub recovery: Recovery,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The default node name: the host name.
pub fn default_node_name() -> String {
    hostname()
}

/// Registers a fresh incarnation of the node named in `cfg`. A live incarnation of the same
/// name is taken over only when it is provably dead (same host and boot, process gone).
async fn register(store: &DynStore, cfg: &NodeConfig) -> Result<String, NodeError> {
    let id = uuid::Uuid::new_v4().to_string();
    let me = std::process::id() as i32;
    let mut new = NewNode {
        id: id.clone(),
        name: cfg.name.clone(),
        hostname: hostname(),
        pid: me,
        start_ticks: jobward_exec::procfs::stat(me).map(|s| s.start_ticks),
        boot_id: jobward_exec::procfs::boot_id(),
        lease: cfg.node_lease,
        supersede: vec![],
    };
    loop {
        match store.register_node(new.clone()).await? {
            RegisterOutcome::Registered => return Ok(id),
            RegisterOutcome::NameInUse {
                node_id,
                hostname: host,
                pid,
                start_ticks,
                boot_id,
                heartbeat_at,
                ..
            } => {
                if new.supersede.contains(&node_id)
                    || !provably_dead(&new, &host, pid, start_ticks, boot_id.as_deref())
                {
                    return Err(NodeError::NameInUse {
                        name: cfg.name.clone(),
                        pid,
                        hostname: host,
                        heartbeat_at: heartbeat_at.to_rfc3339(),
                    });
                }
                info!(previous = %node_id, pid, "the previous incarnation of this node is dead; taking over");
                new.supersede.push(node_id);
            }
        }
    }
}

/// A node found declared lost (it was paused or cut off longer than its node lease, and
/// another node settled its executions): it kills what it no longer owns, and comes back as
/// a new incarnation instead of exiting. Claims stop meanwhile.
async fn rejoin(
    service: &Service,
    cfg: &NodeConfig,
    ex: &Executor,
    status: &NodeStatus,
) -> Result<String, NodeError> {
    let old = status.incarnation();
    status.set_registered(false);
    ex.pause_intake(true);
    let running = ex.running_ids();
    error!(
        incarnation = %old, running = running.len(),
        "this node was declared lost (no heartbeat within its node lease) and its executions were settled elsewhere; killing their processes and rejoining as a new incarnation"
    );
    for id in &running {
        ex.stop(*id, Stop::Immediate, None);
    }
    let left = ex.wait_idle(Duration::from_secs(10)).await;
    if !left.is_empty() {
        warn!(executions = ?left, "some runs had not ended 10 s after SIGKILL");
    }
    let new = register(&service.store, cfg).await?;
    *status.incarnation.write().expect("node lock") = new.clone();
    ex.rebind(new.clone());
    // What the old incarnation still held (normally nothing: it was settled as node_lost),
    // and any process of it that survived, are dealt with as at a start.
    recover_previous(service, &cfg.name, &new).await?;
    ex.pause_intake(false);
    status.set_registered(true);
    info!(previous = %old, incarnation = %new, "rejoined as a new incarnation");
    Ok(new)
}

impl Node {
    /// Registers a new incarnation, syncs job definitions, settles what the previous
    /// incarnation left, runs the reaper once, and only then starts scheduling.
    pub async fn start(
        store: DynStore,
        cfg: NodeConfig,
        jobs: SyncJobs,
    ) -> Result<Node, NodeError> {
        let id = register(&store, &cfg).await?;
        info!(node = %id, name = %cfg.name, "node registered");
        let sync = match store.sync_jobs(jobs).await {
            Ok(s) => s,
            Err(e) => {
                // This incarnation never ran anything: it is stopped, not left to be found lost.
                let _ = store.stop_node(&id, &format!("startup failed: {e}")).await;
                return Err(e.into());
            }
        };
        let service = Service::new(store.clone(), cfg.log_dir.clone(), cfg.alerts.clone());
        let recovery = recover_previous(&service, &cfg.name, &id).await?;
        let executor = Executor::new(
            service.clone(),
            ExecutorConfig {
                node_id: id.clone(),
                log_dir: cfg.log_dir.clone(),
                log_max_bytes: cfg.log_max_bytes,
                max_running: cfg.max_running,
                api_url: cfg.api_url.clone(),
            },
            Arc::new(Notify::new()),
        );
        let local: Arc<dyn LocalRuns> = executor.clone();
        service.attach_local(Arc::downgrade(&local));
        let reaper = Reaper::new(service.clone(), format!("reaper@{id}"), cfg.reaper);
        reaper.run_once().await?;
        let (intake, _) = watch::channel(false);
        let (maintenance, _) = watch::channel(false);
        let status = Arc::new(NodeStatus {
            incarnation: std::sync::RwLock::new(id),
            intervals: [
                cfg.heartbeat_interval.min(cfg.reaper.interval),
                cfg.scheduler.max_sleep,
                cfg.poll_interval,
            ],
            ..Default::default()
        });
        status.set_registered(true);
        status
            .intake_watched
            .store(true, std::sync::atomic::Ordering::SeqCst);
        status.maintenance.beat();
        status.scheduler.beat();
        status.intake.beat();
        let mut node = Node {
            status,
            store,
            service,
            cfg,
            executor,
            intake,
            maintenance,
            intake_tasks: JoinSet::new(),
            maintenance_tasks: JoinSet::new(),
            superseded: Arc::new(Notify::new()),
            sync,
            recovery,
        };
        node.spawn_loops(reaper);
        Ok(node)
    }

    /// The current incarnation id.
    pub fn id(&self) -> String {
        self.status.incarnation()
    }

    /// Registration and liveness, for probes and the service manager's watchdog.
    pub fn status(&self) -> Arc<NodeStatus> {
        self.status.clone()
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The service layer every caller of this node's ledger goes through (the HTTP server
    /// shares it).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Resolves when another incarnation took this node's place: it must stop at once.
    pub async fn superseded(&self) {
        self.superseded.notified().await
    }

    fn spawn_loops(&mut self, reaper: Reaper) {
        self.spawn_intake();
        self.spawn_scheduler();
        self.spawn_maintenance(reaper);
        self.spawn_health_alert();
        self.spawn_retention();
        self.spawn_work_listener();
    }

    /// Claiming and cancel polling; woken early when work may be claimable.
    fn spawn_intake(&mut self) {
        let ex = self.executor.clone();
        let status = self.status.clone();
        let every = self.cfg.poll_interval;
        spawn_every(
            &mut self.intake_tasks,
            self.intake.subscribe(),
            Some(self.executor.wake.clone()),
            move || {
                let (ex, status) = (ex.clone(), status.clone());
                async move {
                    if let Err(e) = ex.claim_once().await {
                        warn!(error = %e, "claim failed");
                    }
                    if let Err(e) = ex.poll_cancels().await {
                        warn!(error = %e, "cancel poll failed");
                    }
                    status.intake.beat();
                    Some(every)
                }
            },
        );
    }

    /// The scheduler: sleeps until the next due instant, at most `scheduler.max_sleep`.
    fn spawn_scheduler(&mut self) {
        let (service, status) = (self.service.clone(), self.status.clone());
        let max_sleep = self.cfg.scheduler.max_sleep;
        spawn_every(
            &mut self.intake_tasks,
            self.intake.subscribe(),
            None,
            move || {
                let (service, status) = (service.clone(), status.clone());
                async move {
                    let store = service.store.clone();
                    let sched = Scheduler {
                        service,
                        actor: format!("scheduler@{}", status.incarnation()),
                    };
                    let mut sleep = max_sleep;
                    match sched.run_once().await {
                        Ok(r) => {
                            if let (Some(next), Ok(now)) = (r.next_fire_at, store.now().await) {
                                sleep = sleep.min(
                                    jobward_core::deadline::between(now, next)
                                        .max(Duration::from_millis(5)),
                                );
                            }
                        }
                        Err(e) => warn!(error = %e, "scheduler tick failed"),
                    }
                    status.scheduler.beat();
                    Some(sleep)
                }
            },
        );
    }

    /// Leases, then lost nodes, then the reaper. This node renews its own leases (one batched
    /// statement for every run and the node itself) right before each reaper pass, so that a
    /// node that was stalled does not reap its own live runs; a lease someone else settled
    /// meanwhile comes back as lost, and its process group is killed at once. Each completed
    /// tick beats the node's maintenance liveness (the service manager's watchdog).
    fn spawn_maintenance(&mut self, reaper: Reaper) {
        let ex = self.executor.clone();
        let superseded = self.superseded.clone();
        let status = self.status.clone();
        let cfg = self.cfg.clone();
        let tick = cfg.heartbeat_interval.min(cfg.reaper.interval);
        let reaper = Arc::new(reaper);
        spawn_every(
            &mut self.maintenance_tasks,
            self.maintenance.subscribe(),
            None,
            move || {
                let (ex, superseded, status, cfg, reaper) = (
                    ex.clone(),
                    superseded.clone(),
                    status.clone(),
                    cfg.clone(),
                    reaper.clone(),
                );
                async move {
                    fail::fail_point!("maintenance_tick");
                    match ex.heartbeat(cfg.node_lease).await {
                        Ok(r) if !r.node_ok => {
                            if let Err(e) = rejoin(&reaper.service, &cfg, &ex, &status).await {
                                error!(error = %e, "could not rejoin; stopping every process and exiting");
                                for id in ex.running_ids() {
                                    ex.stop(id, Stop::Immediate, None);
                                }
                                status.set_registered(false);
                                superseded.notify_waiters();
                                superseded.notify_one();
                                return None;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            crate::metrics::database_error("heartbeat");
                            warn!(error = %e, "heartbeat failed; the processes keep running and the lease is renewed when the database answers");
                        }
                    }
                    let actor = format!("reaper@{}", status.incarnation());
                    let lost = LostNodes {
                        service: reaper.service.clone(),
                        actor: actor.clone(),
                        own: Some(status.incarnation()),
                        cfg: cfg.lost_nodes,
                    };
                    match lost.run_once().await {
                        Ok(_) => {}
                        Err(e) => {
                            crate::metrics::database_error("settle_lost_nodes");
                            warn!(error = %e, "lost-node check failed");
                        }
                    }
                    let reaper = Reaper {
                        service: reaper.service.clone(),
                        actor,
                        batch: reaper.batch,
                    };
                    match reaper.run_once().await {
                        Ok(_) => {}
                        Err(e) => {
                            crate::metrics::database_error("reap");
                            warn!(error = %e, "reaper tick failed");
                        }
                    }
                    status.maintenance.beat();
                    Some(tick)
                }
            },
        );
    }

    /// Health alerts: one alert when health turns `warning`.
    fn spawn_health_alert(&mut self) {
        let Some(alerts) = self.cfg.alerts.clone() else {
            return;
        };
        let every = self.cfg.health_alert.interval;
        let check = Arc::new(tokio::sync::Mutex::new(HealthAlert {
            store: self.store.clone(),
            cfg: self.cfg.health_alert.clone(),
            alerts,
            was_warning: false,
        }));
        spawn_every(
            &mut self.maintenance_tasks,
            self.maintenance.subscribe(),
            None,
            move || {
                let check = check.clone();
                async move {
                    let _ = check.lock().await.run_once().await;
                    Some(every)
                }
            },
        );
    }

    fn spawn_retention(&mut self) {
        let retention = Arc::new(Retention::new(
            self.store.clone(),
            self.cfg.log_dir.clone(),
            self.cfg.retention,
        ));
        let every = self.cfg.retention.interval;
        spawn_every(
            &mut self.maintenance_tasks,
            self.maintenance.subscribe(),
            None,
            move || {
                let retention = retention.clone();
                async move {
                    if let Err(e) = retention.run_once().await {
                        warn!(error = %e, "retention failed");
                    }
                    Some(every)
                }
            },
        );
    }

    /// Work for the local runner, queued by this process or another node, wakes the executor;
    /// work for remote queues does not.
    fn spawn_work_listener(&mut self) {
        let signal = self.store.work_signal();
        let wake = self.executor.wake.clone();
        let mut stop = self.intake.subscribe();
        self.intake_tasks.spawn(async move {
            let local = [jobward_core::LOCAL_RUNNER.to_string()];
            loop {
                tokio::select! {
                    _ = signal.notified(&local) => wake.notify_one(),
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Graceful shutdown: stop scheduling and claiming, let running executions finish within
    /// the grace period, cancel the rest with reason `shutdown`, and mark the node stopped.
    pub async fn shutdown(mut self) -> ShutdownReport {
        self.status
            .intake_watched
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.intake.send(true);
        while self.intake_tasks.join_next().await.is_some() {}
        let before = self.executor.running_count();
        if before > 0 {
            info!(running = before, grace = %format_duration(self.cfg.shutdown_grace), "shutting down: waiting for running executions");
        }
        let remaining = self.executor.wait_idle(self.cfg.shutdown_grace).await;
        let mut report = ShutdownReport {
            drained: before - remaining.len(),
            cancelled: vec![],
        };
        for id in remaining {
            let message = format!(
                "node {} shut down and it did not finish within the shutdown grace of {}",
                self.cfg.name,
                format_duration(self.cfg.shutdown_grace)
            );
            if let Err(e) = self
                .store
                .cancel(CancelParams {
                    id,
                    reason: Reason::Shutdown,
                    message,
                    actor: self.id(),
                })
                .await
            {
                warn!(execution = id, error = %e, "could not record the shutdown cancel request");
            }
            self.executor
                .stop(id, Stop::Graceful, Some(Reason::Shutdown));
            report.cancelled.push(id);
        }
        self.executor.join_all().await;
        let _ = self.maintenance.send(true);
        while self.maintenance_tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.stop_node(&self.id(), "graceful shutdown").await {
            warn!(error = %e, "could not mark the node stopped");
        }
        info!(
            drained = report.drained,
            cancelled = report.cancelled.len(),
            "node stopped"
        );
        report
    }
}

/// Runs `tick` in a loop until `stop` changes: after each tick, sleeps for the duration it
/// returned (or until `wake` is notified); a tick that returns `None` ends the loop. A tick
/// always runs to its end: `stop` is only looked at between ticks.
fn spawn_every<F, Fut>(
    tasks: &mut JoinSet<()>,
    mut stop: watch::Receiver<bool>,
    wake: Option<Arc<Notify>>,
    mut tick: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    tasks.spawn(async move {
        loop {
            let Some(sleep) = tick().await else {
                return;
            };
            let woken = async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = woken => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// True when the node recorded as (host, pid, start time, boot) cannot be alive: it ran on
/// this host, in this boot, and its pid is gone or belongs to a later process.
fn provably_dead(
    me: &NewNode,
    host: &str,
    pid: i32,
    start_ticks: Option<u64>,
    boot_id: Option<&str>,
) -> bool {
    if host != me.hostname {
        return false;
    }
    match (boot_id, me.boot_id.as_deref()) {
        (Some(then), Some(now)) if then != now => return true,
        (Some(_), Some(_)) => {}
        _ => return false,
    }
    if pid == me.pid {
        return start_ticks != me.start_ticks;
    }
    match jobward_exec::procfs::stat(pid) {
        None => true,
        Some(s) => s.state == 'Z' || Some(s.start_ticks) != start_ticks,
    }
}

/// Startup recovery: kill what previous incarnations of this node left running (only what is
/// provably theirs) and mark their executions `failed` with reason `node_restarted`.
pub async fn recover_previous(
    service: &Service,
    name: &str,
    node_id: &str,
) -> Result<Recovery, StoreError> {
    let store = &service.store;
    let orphans = store.orphans_of(name, node_id).await?;
    // Every earlier incarnation of this name that ran on this host: whatever their rows say
    // now (settled by a cleanup, a reaper, another node), a process still carrying one of
    // their markers is a survivor, and it goes.
    let host = hostname();
    let earlier: Vec<String> = store
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| n.name == name && n.id != node_id && n.hostname == host)
        .map(|n| n.id)
        .collect();
    // One read of the process table for all orphans, then one sweep per orphan.
    let (sweeps, marked) = {
        let orphans = orphans.clone();
        tokio::task::spawn_blocking(move || {
            let table = jobward_exec::ProcessTable::snapshot();
            let sweeps: Vec<_> = orphans
                .iter()
                .map(|row| {
                    let recorded = row.process.as_ref().map(|p| Recorded {
                        pid: p.pid,
                        pgid: p.pgid,
                        start_ticks: p.start_ticks,
                        boot_id: p.boot_id.clone(),
                    });
                    table.sweep(
                        recorded.as_ref(),
                        &row.id.to_string(),
                        row.node_id.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            let mut killed: Vec<i32> = sweeps
                .iter()
                .flat_map(|s: &jobward_exec::Sweep| s.killed.clone())
                .collect();
            let marked: Vec<i32> = earlier
                .iter()
                .flat_map(|id| table.sweep_owner(id).killed)
                .filter(|pid| !killed.contains(pid))
                .collect();
            killed.extend(&marked);
            jobward_exec::wait_gone(&killed, Duration::from_secs(2));
            (sweeps, marked)
        })
        .await
        .unwrap_or_default()
    };
    if !marked.is_empty() {
        warn!(killed = ?marked, "killed processes that earlier incarnations of this node left running");
    }
    let killed = sweeps.iter().map(|s| s.killed.len()).sum::<usize>() + marked.len();
    let settled = orphans
        .iter()
        .zip(sweeps.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(row, sweep)| {
            let old = row.node_id.clone().unwrap_or_default();
            let what = sweep
                .map(|s| s.describe())
                .unwrap_or_else(|| "its processes could not be checked".into());
            (
                row.lease(),
                format!("node '{name}' restarted (previous incarnation {old}); {what}"),
            )
        })
        .collect();
    let report = store
        .settle_orphans(
            RecoverParams {
                name: name.into(),
                node_id: node_id.into(),
                actor: format!("recovery@{node_id}"),
            },
            settled,
        )
        .await?;
    service.recovered("startup recovery", &report.recovered);
    if !report.recovered.is_empty() {
        info!(
            recovered = report.recovered.len(),
            processes_killed = killed,
            "startup recovery done before scheduling"
        );
    }
    Ok(Recovery {
        report,
        processes_killed: killed,
    })
}
