//! Prometheus metrics. Counters and the latency histogram are this process's; gauges about
//! the ledger (executions by state, slots, oldest heartbeat) are read from the store at
//! scrape time, so they are true for every node.

use std::sync::OnceLock;

use jobward_store::{ExecutionRow, MetricsSnapshot, Recovered};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
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
            .set_buckets_for_metric(
                Matcher::Full("jobward_job_duration_seconds".into()),
                &[
                    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0, 86400.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding several nodes); the
        // handle still renders what this recorder saw.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// `# HELP` for every series.
fn describe() {
    describe_counter!(
        "jobward_transitions_total",
        "Terminal transitions this process recorded, by state reached and reason."
    );
    describe_counter!(
        "jobward_reaper_recoveries_total",
        "Executions settled because their owner went silent (reaper, lost node, restart, cleanup), by reason."
    );
    describe_counter!(
        "jobward_stale_reports_refused_total",
        "Late or forged reports refused because their lease was no longer current, by kind."
    );
    describe_counter!(
        "jobward_database_errors_total",
        "Database errors met (store: every error the store saw, retried ones included)."
    );
    describe_counter!(
        "jobward_database_statements_total",
        "SQL statements this process sent."
    );
    describe_counter!(
        "jobward_database_commits_total",
        "Transactions this process committed."
    );
    describe_counter!(
        "jobward_alerts_total",
        "Alert deliveries: sent, failed (after retries) or dropped (queue full)."
    );
    describe_histogram!(
        "jobward_claim_to_start_seconds",
        "Time from when an execution could start to when it was claimed, by runner."
    );
    describe_histogram!(
        "jobward_job_duration_seconds",
        "Run durations of the executions this process recorded ending, per job."
    );
    describe_gauge!("jobward_executions", "Executions in the ledger per state.");
    describe_gauge!(
        "jobward_oldest_heartbeat_age_seconds",
        "Age of the oldest last heartbeat among running executions (0 when none runs)."
    );
    describe_gauge!(
        "jobward_stale_executions",
        "Running executions whose lease expired and that are not settled yet."
    );
    describe_gauge!(
        "jobward_slots_in_use",
        "Running executions holding a slot of a concurrency key."
    );
    describe_gauge!(
        "jobward_slots_limit",
        "The slot limit of a concurrency key."
    );
    describe_gauge!(
        "jobward_job_last_success_timestamp_seconds",
        "Unix time the job's latest completed execution finished."
    );
    describe_gauge!(
        "jobward_job_last_finish_timestamp_seconds",
        "Unix time the job's latest execution ending in this state finished."
    );
    describe_gauge!(
        "jobward_job_overdue",
        "Running executions of the job past the upper bound of their expected duration."
    );
}

/// A terminal transition this process recorded.
pub fn transition(e: &ExecutionRow) {
    let reason = e.reason.map(|r| r.as_str()).unwrap_or("none");
    counter!("jobward_transitions_total", "to" => e.state.as_str(), "reason" => reason)
        .increment(1);
    if let (Some(s), Some(f)) = (e.started_at, e.finished_at) {
        histogram!("jobward_job_duration_seconds", "job" => e.job.clone())
            .record(jobward_core::deadline::between(s, f).as_secs_f64());
    }
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
    gauge!("jobward_stale_executions").set(snapshot.stale as f64);
    let secs = |t: jobward_core::Timestamp| t.timestamp_millis() as f64 / 1000.0;
    for (job, state, at) in &snapshot.last_finished {
        gauge!("jobward_job_last_finish_timestamp_seconds", "job" => job.clone(), "state" => state.as_str())
            .set(secs(*at));
        if *state == jobward_core::State::Completed {
            gauge!("jobward_job_last_success_timestamp_seconds", "job" => job.clone())
                .set(secs(*at));
        }
    }
    let mut jobs: std::collections::BTreeSet<&str> = snapshot
        .last_finished
        .iter()
        .map(|(j, _, _)| j.as_str())
        .collect();
    jobs.extend(snapshot.overdue.iter().map(|(j, _)| j.as_str()));
    for job in jobs {
        let n = snapshot
            .overdue
            .iter()
            .find(|(j, _)| j == job)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        gauge!("jobward_job_overdue", "job" => job.to_string()).set(n as f64);
    }
    for s in &snapshot.slots {
        gauge!("jobward_slots_in_use", "key" => s.key.clone()).set(s.used as f64);
        gauge!("jobward_slots_limit", "key" => s.key.clone()).set(s.limit as f64);
    }
    h.render()
}
