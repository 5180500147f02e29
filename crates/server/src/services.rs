//! Maintenance services. Each is a `run_once()` returning a report whose counts are what
//! changed; the loops around them (in `node`) are thin and tests call `run_once` directly.

use std::path::PathBuf;

use jobward_store::{
    DynStore, FireReport, PruneParams, PruneReport, ReapParams, ReapReport, Recovered, StoreError,
};
use tracing::{info, warn};

use crate::executor::log_path;

/// One log line per recovered execution: job, number, attempt, last heartbeat, reason.
pub fn log_recovered(what: &str, r: &Recovered) {
    warn!(
        job = %r.job,
        number = r.number,
        attempt = r.attempt,
        execution = r.id,
        last_heartbeat = r.last_heartbeat.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
        reason = %r.reason,
        owner = r.lease_owner.as_deref().unwrap_or("-"),
        retry = r.retry.map(|id| id.to_string()).unwrap_or_else(|| "none".into()),
        "{what}: {}",
        r.message
    );
}

/// The reaper: enforces every deadline (invariant 2).
pub struct Reaper {
    pub store: DynStore,
    pub actor: String,
    pub batch: u32,
}

impl Reaper {
    pub async fn run_once(&self) -> Result<ReapReport, StoreError> {
        let report = self
            .store
            .reap(ReapParams {
                actor: self.actor.clone(),
                batch: self.batch,
            })
            .await?;
        for r in &report.recovered {
            log_recovered("reaper recovered execution", r);
            crate::metrics::recovered(r);
        }
        Ok(report)
    }
}

/// The scheduler: fires due instants, each at most once (invariant 9).
pub struct Scheduler {
    pub store: DynStore,
    pub actor: String,
}

impl Scheduler {
    pub async fn run_once(&self) -> Result<FireReport, StoreError> {
        let report = self.store.fire_due(&self.actor).await?;
        if !report.caught_up.is_empty() {
            info!(executions = ?report.caught_up, "catch-up runs created for instants missed during downtime");
        }
        if !report.skipped.is_empty() {
            info!(executions = ?report.skipped, "fires recorded as skipped");
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
