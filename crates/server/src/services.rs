//! Maintenance services. Each owns a config with defaults and is a `run_once()` returning a
//! report whose counts are what changed; the loops around them (in `node`, one `spawn_every`
//! each) are thin and tests call `run_once` directly.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use jobward_store::{
    DynStore, FireReport, HealthParams, PruneParams, PruneReport, ReapParams, ReapReport,
    StoreError,
};
use tracing::info;

use crate::alerts::{AlertKind, Alerts};
use crate::executor::log_path;
use crate::health::HealthSettings;
use crate::service::Service;

/// The reaper's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaperConfig {
    /// How often it runs (the node's maintenance tick is the shorter of this and the
    /// heartbeat interval).
    pub interval: Duration,
    /// Most executions settled per pass.
    pub batch: u32,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            interval: Duration::from_secs(1),
            batch: 500,
        }
    }
}

/// The scheduler's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Longest sleep between ticks (it wakes earlier for the next due instant).
    pub max_sleep: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_sleep: Duration::from_secs(1),
        }
    }
}

/// Retention's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub interval: Duration,
    /// Most executions pruned per pass.
    pub batch: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval: Duration::from_secs(60),
            batch: 1000,
        }
    }
}

/// Lost-node settlement's settings. It runs on the node's maintenance tick, right after the
/// node renewed its own leases and before the reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostNodesConfig {
    /// Kill the processes a lost node left on this host (they carry its incarnation).
    pub kill_local_survivors: bool,
}

impl Default for LostNodesConfig {
    fn default() -> Self {
        LostNodesConfig {
            kill_local_survivors: true,
        }
    }
}

/// The health alert's settings.
#[derive(Debug, Clone)]
pub struct HealthAlertConfig {
    pub interval: Duration,
    pub settings: HealthSettings,
}

impl Default for HealthAlertConfig {
    fn default() -> Self {
        HealthAlertConfig {
            interval: Duration::from_secs(15),
            settings: HealthSettings::default(),
        }
    }
}

/// The reaper: enforces every deadline (invariant 2).
pub struct Reaper {
    pub service: Arc<Service>,
    pub actor: String,
    pub batch: u32,
}

impl Reaper {
    pub fn new(service: Arc<Service>, actor: String, cfg: ReaperConfig) -> Reaper {
        Reaper {
            service,
            actor,
            batch: cfg.batch,
        }
    }
}

impl Reaper {
    pub async fn run_once(&self) -> Result<ReapReport, StoreError> {
        let report = self
            .service
            .store
            .reap(ReapParams {
                actor: self.actor.clone(),
                batch: self.batch,
            })
            .await?;
        self.service
            .recovered("reaper recovered execution", &report.recovered);
        self.service.flag_overdue(&self.actor).await?;
        Ok(report)
    }
}

/// The scheduler: fires due instants, each at most once (invariant 9).
pub struct Scheduler {
    pub service: Arc<Service>,
    pub actor: String,
}

impl Scheduler {
    /// Fires what is due; a run replaced by a fire (overlap = replace) is stopped at once
    /// when this node runs it.
    pub async fn run_once(&self) -> Result<FireReport, StoreError> {
        let report = self.service.store.fire_due(&self.actor).await?;
        self.service.replaced(&report.replaced);
        if !report.caught_up.is_empty() {
            info!(executions = ?report.caught_up, "catch-up runs created for instants missed during downtime");
        }
        if !report.skipped.is_empty() {
            info!(executions = ?report.skipped, "fires recorded as skipped");
            crate::telemetry::ended_ids(
                &self.service.store,
                &report
                    .skipped
                    .iter()
                    .map(|id| (*id, None))
                    .collect::<Vec<_>>(),
            );
        }
        Ok(report)
    }
}

/// Retention: prunes terminal history beyond each job's limits, with its logs.
pub struct Retention {
    pub store: DynStore,
    pub log_dir: PathBuf,
    pub batch: u32,
}

impl Retention {
    pub fn new(store: DynStore, log_dir: PathBuf, cfg: RetentionConfig) -> Retention {
        Retention {
            store,
            log_dir,
            batch: cfg.batch,
        }
    }
}

impl Retention {
    pub async fn run_once(&self) -> Result<PruneReport, StoreError> {
        let report = self.store.prune(PruneParams { batch: self.batch }).await?;
        for (job, id) in &report.deleted {
            jobward_exec::log::remove(&log_path(&self.log_dir, job, *id));
        }
        if !report.deleted.is_empty() {
            info!(
                count = report.deleted.len(),
                "pruned terminal executions beyond their job's history limits"
            );
        }
        Ok(report)
    }
}

/// What lost-node settlement did.
#[derive(Debug, Clone, Default)]
pub struct LostNodesReport {
    pub settled: ReapReport,
    /// Processes of lost nodes killed on this host.
    pub processes_killed: usize,
}

/// Lost-node settlement: the local executions of nodes that stopped heartbeating are settled
/// (`node_lost`) by whichever live node gets to them first, and what those nodes left
/// running on this host is killed (invariant 11).
pub struct LostNodes {
    pub service: Arc<Service>,
    pub actor: String,
    /// This node's incarnation: it never declares itself lost.
    pub own: Option<String>,
    pub cfg: LostNodesConfig,
}

impl LostNodes {
    pub async fn run_once(&self) -> Result<LostNodesReport, StoreError> {
        let settled = self
            .service
            .store
            .settle_lost_nodes(&self.actor, self.own.as_deref())
            .await?;
        self.service.recovered("lost node", &settled.recovered);
        // A lost node on this host left processes behind: they carry its incarnation as
        // their marker, which proves they are its own.
        let lost: BTreeSet<String> = settled
            .recovered
            .iter()
            .filter_map(|rec| rec.node_id.clone())
            .collect();
        let mut processes_killed = 0;
        if self.cfg.kill_local_survivors && !lost.is_empty() {
            processes_killed = tokio::task::spawn_blocking(move || {
                let table = jobward_exec::ProcessTable::snapshot();
                lost.iter()
                    .map(|id| table.sweep_owner(id).killed.len())
                    .sum::<usize>()
            })
            .await
            .unwrap_or(0);
            if processes_killed > 0 {
                info!(
                    killed = processes_killed,
                    "killed processes that lost nodes left on this host"
                );
            }
        }
        Ok(LostNodesReport {
            settled,
            processes_killed,
        })
    }
}

/// The health alert: one alert each time health turns `warning`.
pub struct HealthAlert {
    pub store: DynStore,
    pub cfg: HealthAlertConfig,
    pub alerts: Alerts,
    pub was_warning: bool,
}

impl HealthAlert {
    /// Checks health once; returns whether an alert was sent.
    pub async fn run_once(&mut self) -> Result<bool, StoreError> {
        let params = HealthParams {
            long_running_after: self.cfg.settings.long_running_after,
            stale_after: None,
        };
        let m = self.store.health(params).await?;
        let view = crate::views::health(m, &self.cfg.settings);
        let warning = view.status == jobward_protocol::HealthStatus::Warning;
        let sent = warning && !self.was_warning;
        if sent {
            self.alerts
                .send(AlertKind::Health, serde_json::json!({ "health": view }));
        }
        self.was_warning = warning;
        Ok(sent)
    }
}
