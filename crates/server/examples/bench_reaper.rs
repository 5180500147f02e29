//! Reaper `run_once` cost against a large ledger: 1,000,000 terminal executions and 10,000
//! running ones (defaults), on a real SQLite file. Prints the query plan of the reaper's
//! selection and the timings; nothing is asserted.
//!
//!   cargo run --release -p jobward-server --example bench_reaper [TERMINAL] [RUNNING]

use std::time::{Duration, Instant};

use jobward_core::{History, JobSpec, Overlap};
use jobward_server::Reaper;
use jobward_store::{OpenMode, SyncJobs};

fn spec() -> JobSpec {
    JobSpec {
        overlap: Overlap::Allow,
        history: History {
            keep_last: None,
            max_age: None,
        },
        ..JobSpec::new("bench", "true")
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:?}, p95 {:?}, max {:?} ({} runs)",
        p(0.5),
        p(0.95),
        v[v.len() - 1],
        v.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let terminal = args.first().copied().unwrap_or(1_000_000);
    let running = args.get(1).copied().unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate).await?;
    store
        .sync_jobs(SyncJobs {
            jobs: vec![spec()],
            limits: Default::default(),
        })
        .await?;

    let c = rusqlite::Connection::open(&path)?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = Instant::now();
    let cols = "job, number, attempt, max_attempts, trigger, state, command, overlap, heartbeat_timeout_ms, run_timeout_ms, \
                queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after";
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {terminal}) \
         INSERT INTO executions ({cols}, started_at, finished_at, reason, message, exit_code) \
         SELECT 'bench', i, 1, 1, 'schedule', CASE i % 3 WHEN 0 THEN 'completed' WHEN 1 THEN 'failed' ELSE 'timed_out' END, \
           'true', 'allow', 30000, 86400000, 3600000, 10000, 10000, 600000, {now} - i * 1000, {now} - i * 1000, \
           {now} - i * 1000, {now} - i * 1000 + 500, \
           CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN 'exit_code' ELSE 'heartbeat_timeout' END, \
           CASE i % 3 WHEN 0 THEN NULL ELSE 'seeded' END, CASE i % 3 WHEN 1 THEN 1 ELSE 0 END FROM n"
    ))?;
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {running}) \
         INSERT INTO executions ({cols}, started_at, heartbeat_at, lease_owner, lease_token, lease_expires_at, run_deadline, node_id) \
         SELECT 'bench', {terminal} + i, 1, 1, 'manual', 'running', 'true', 'allow', 30000, 86400000, 3600000, 10000, 10000, \
           600000, {now}, {now}, {now}, {now}, 'worker-' || (i % 50), 'tok-' || i, {now} + 3600000, {now} + 86400000, NULL FROM n"
    ))?;
    c.execute_batch("ANALYZE")?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "seeded {terminal} terminal and {running} running executions in {:?} ({} MB file)",
        t.elapsed(),
        size / 1_000_000
    );

    println!("query plan of the reaper's selection:");
    let mut plan = c.prepare(&format!(
        "EXPLAIN QUERY PLAN SELECT id FROM executions {}",
        jobward_store::REAPER_DUE
    ))?;
    let details: Vec<String> = plan
        .query_map(rusqlite::params![now, 500], |r| r.get(3))?
        .collect::<Result<_, _>>()?;
    for detail in details {
        println!("  {detail}");
    }

    let reaper = Reaper {
        service: jobward_server::service::Service::new(store.clone(), std::env::temp_dir(), None),
        actor: "bench".into(),
        batch: 500,
    };
    let mut idle = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = reaper.run_once().await?;
        idle.push(t.elapsed());
        assert!(r.recovered.is_empty());
    }
    println!("run_once with nothing due: {}", stats(idle));

    for due in [100, 1000] {
        c.execute(
            "UPDATE executions SET lease_expires_at = ?1 WHERE id IN (SELECT id FROM executions WHERE state = 'running' LIMIT ?2)",
            [now - 1000, due],
        )?;
        let t = Instant::now();
        let r = reaper.run_once().await?;
        println!(
            "run_once settling {} expired leases: {:?}",
            r.recovered.len(),
            t.elapsed()
        );
    }
    Ok(())
}
