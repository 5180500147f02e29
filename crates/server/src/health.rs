//! When the ledger's health is `warning` (seed 001: "more than 5 running for over an hour"),
//! shared by `jobward health`, `/api/system/health` and the health alert.

use std::time::Duration;

use jobward_core::duration::format_duration;
use jobward_store::HealthMetrics;

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub long_running_after: Duration,
    /// Warn when more than this many executions run longer than `long_running_after`.
    pub warn_long_running: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            long_running_after: Duration::from_secs(3600),
            warn_long_running: 5,
        }
    }
}

/// The warnings the figures call for; none means healthy.
pub fn assess(m: &HealthMetrics, s: &HealthSettings) -> Vec<String> {
    let mut w = Vec::new();
    if m.long_running_executions > s.warn_long_running {
        w.push(format!(
            "{} executions have been running for more than {} (warning above {})",
            m.long_running_executions,
            format_duration(s.long_running_after),
            s.warn_long_running
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
