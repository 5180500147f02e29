//! Operator cleanup of stale executions (`jobward cleanup --apply`, the API, the dashboard):
//! before a stale execution is settled, its surviving processes on this host are killed (only
//! those proven its own), so the ledger never shows ended what still runs here. Where its
//! processes are on another host, or none was recorded, its message says that they may still
//! be alive there (invariant 11).

use std::collections::HashMap;
use std::time::Duration;

use jobward_exec::{ProcessTable, Recorded};
use jobward_store::{CleanupParams, CleanupReport, DynStore, ExecutionRow, StoreError};

/// Lists (dry run) or settles the running executions whose last heartbeat is older than
/// `stale_after`.
pub async fn stale_executions(
    store: &DynStore,
    stale_after: Duration,
    apply: bool,
    actor: String,
) -> Result<CleanupReport, StoreError> {
    let params = CleanupParams {
        stale_after,
        apply: false,
        actor,
        process_notes: None,
    };
    let dry = store.cleanup(params.clone()).await?;
    if !apply || dry.candidates.is_empty() {
        return Ok(dry);
    }
    let hosts: HashMap<String, String> = store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| (n.id, n.hostname))
        .collect();
    let candidates = dry.candidates;
    let notes = tokio::task::spawn_blocking(move || kill_local(&candidates, &hosts))
        .await
        .map_err(|e| StoreError::Database(format!("process sweep failed: {e}")))?;
    let report = store
        .cleanup(CleanupParams {
            apply: true,
            process_notes: Some(notes),
            ..params
        })
        .await?;
    crate::telemetry::recovered(store, &report.changed);
    Ok(report)
}

/// For each execution: kills its proven survivors when it ran on this host (same boot), or
/// says where they may still be alive.
fn kill_local(rows: &[ExecutionRow], hosts: &HashMap<String, String>) -> HashMap<i64, String> {
    let here = jobward_exec::procfs::boot_id();
    let this_host = crate::node::default_node_name();
    let table = ProcessTable::snapshot();
    let mut killed = Vec::new();
    let notes = rows
        .iter()
        .map(|row| {
            let owner = row.lease_owner.clone().unwrap_or_default();
            let host = row
                .node_id
                .as_ref()
                .and_then(|n| hosts.get(n).cloned())
                .unwrap_or_else(|| format!("the host of worker '{owner}'"));
            // The recorded process is only provable here if it started in this boot; the
            // execution's environment markers prove any process of it, wherever it runs.
            let recorded = row
                .process
                .as_ref()
                .filter(|p| p.boot_id.is_some() && p.boot_id == here)
                .map(|p| Recorded {
                    pid: p.pid,
                    pgid: p.pgid,
                    start_ticks: p.start_ticks,
                    boot_id: p.boot_id.clone(),
                });
            let sweep = table.sweep(recorded.as_ref(), &row.id.to_string(), &owner);
            killed.extend(sweep.killed.iter().copied());
            let note = match (&recorded, &row.process, sweep.killed.is_empty()) {
                (Some(_), _, _) | (None, _, false) => format!("on {this_host}: {}", sweep.describe()),
                (None, Some(p), true) => format!(
                    "its process (pid {}) may still be alive on {host}: it could not be checked from {this_host}",
                    p.pid
                ),
                (None, None, true) => format!(
                    "no process of it was found on {this_host}; if one was started elsewhere, it may still be alive on {host}"
                ),
            };
            (row.id, note)
        })
        .collect();
    jobward_exec::wait_gone(&killed, Duration::from_secs(2));
    notes
}
