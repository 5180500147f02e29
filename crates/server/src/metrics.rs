//! Prometheus metrics. Counters and the latency histogram are this process's; gauges about
//! the ledger (executions by state, slots, oldest heartbeat) are read from the store at
//! scrape time, so they are true for every node.

use std::sync::OnceLock;

use jobward_store::{ExecutionRow, MetricsSnapshot, Recovered};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("jobward_claim_to_start_seconds".into()),
                &[
                    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding several nodes); the
        // handle still renders what this recorder saw.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A terminal transition this process recorded.
pub fn transition(e: &ExecutionRow) {
    let reason = e.reason.map(|r| r.as_str()).unwrap_or("none");
    counter!("jobward_transitions_total", "to" => e.state.as_str(), "reason" => reason)
        .increment(1);
}

/// An execution the reaper (or startup recovery, or cleanup) settled.
pub fn recovered(r: &Recovered) {
    counter!("jobward_reaper_recoveries_total", "reason" => r.reason.as_str()).increment(1);
    counter!("jobward_transitions_total", "to" => r.to.as_str(), "reason" => r.reason.as_str())
        .increment(1);
}

/// A late or forged report refused because its lease is lost.
pub fn refused(kind: &'static str) {
    counter!("jobward_stale_reports_refused_total", "kind" => kind).increment(1);
}

pub fn database_error(kind: &'static str) {
    counter!("jobward_database_errors_total", "kind" => kind).increment(1);
}

pub fn claimed(e: &ExecutionRow) {
    if let Some(started) = e.started_at {
        let wait = jobward_core::deadline::between(e.run_after, started);
        histogram!("jobward_claim_to_start_seconds", "runner" => e.runner.clone())
            .record(wait.as_secs_f64());
    }
}

pub fn alert(result: &'static str) {
    counter!("jobward_alerts_total", "result" => result).increment(1);
}

/// Sets the ledger gauges from a snapshot and renders everything. `store_errors` are the
/// database errors the store met, retried ones included.
pub fn render(snapshot: &MetricsSnapshot, store_errors: u64) -> String {
    let h = handle();
    counter!("jobward_database_errors_total", "kind" => "store").absolute(store_errors);
    let (statements, commits) = jobward_store::database_counts();
    counter!("jobward_database_statements_total").absolute(statements);
    counter!("jobward_database_commits_total").absolute(commits);
    for (state, n) in &snapshot.by_state {
        gauge!("jobward_executions", "state" => state.as_str()).set(*n as f64);
    }
    let age = snapshot
        .oldest_heartbeat_at
        .map(|t| jobward_core::deadline::between(t, snapshot.now).as_secs_f64())
        .unwrap_or(0.0);
    gauge!("jobward_oldest_heartbeat_age_seconds").set(age);
    for s in &snapshot.slots {
        gauge!("jobward_slots_in_use", "key" => s.key.clone()).set(s.used as f64);
        gauge!("jobward_slots_limit", "key" => s.key.clone()).set(s.limit as f64);
    }
    h.render()
}
