//! Dashboard server time against a large ledger: 1,000,000 executions (default) over 20 jobs,
//! 50 of them running, on a real SQLite file (or PostgreSQL with `--db URL` on an empty
//! schema). Each page is requested through the real router, and its handler time (request in,
//! full HTML out) is measured; nothing is asserted.
//!
//!   cargo run --release -p jobward-server --example bench_dashboard [EXECUTIONS] [JOBS]
//!
//! JOBS (default 20) spreads the executions round-robin; 1 puts them all in one job.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use jobward_core::{History, JobSpec, Overlap, Schedule};
use jobward_server::http::{AppState, Tokens, app};
use jobward_store::{OpenMode, SyncJobs};
use tower::ServiceExt;

fn spec(i: u64) -> JobSpec {
    JobSpec {
        overlap: Overlap::Allow,
        schedule: Schedule::cron("0 */5 * * * *", "UTC").expect("valid cron"),
        history: History {
            keep_last: None,
            max_age: None,
        },
        ..JobSpec::new(format!("job-{i}"), "true")
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:>8.2?}  p95 {:>8.2?}  max {:>8.2?}",
        p(0.5),
        p(0.95),
        v[v.len() - 1]
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let jobs: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20);
    let running = 50;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate).await?;
    store
        .sync_jobs(SyncJobs {
            jobs: (0..jobs).map(spec).collect(),
            limits: Default::default(),
        })
        .await?;

    let c = rusqlite::Connection::open(&path)?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = Instant::now();
    let cols = "job, number, attempt, max_attempts, trigger, state, command, overlap, heartbeat_timeout_ms, run_timeout_ms, \
                queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, queued_at, run_after";
    let terminal = total - running;
    // Oldest first, one execution per second back from now, round-robin over the jobs.
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {terminal}) \
         INSERT INTO executions ({cols}, started_at, finished_at, reason, message, exit_code) \
         SELECT 'job-' || (i % {jobs}), i, 1, 1, 'schedule', \
           CASE WHEN i % 10 = 0 THEN 'failed' WHEN i % 17 = 0 THEN 'timed_out' ELSE 'completed' END, \
           'true', 'allow', 30000, 86400000, 3600000, 10000, 10000, 600000, \
           {now} - ({terminal} - i) * 1000 - 2000, {now} - ({terminal} - i) * 1000 - 2000, \
           {now} - ({terminal} - i) * 1000 - 1900, {now} - ({terminal} - i) * 1000 - 1900 + (i % 7) * 100, \
           CASE WHEN i % 10 = 0 THEN 'exit_code' WHEN i % 17 = 0 THEN 'heartbeat_timeout' ELSE NULL END, \
           CASE WHEN i % 10 = 0 OR i % 17 = 0 THEN 'seeded failure' ELSE NULL END, \
           CASE WHEN i % 10 = 0 THEN 1 WHEN i % 17 = 0 THEN NULL ELSE 0 END FROM n"
    ))?;
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {running}) \
         INSERT INTO executions ({cols}, started_at, heartbeat_at, lease_owner, lease_token, lease_expires_at, run_deadline, node_id, progress, phase) \
         SELECT 'job-' || (i % {jobs}), {terminal} + i, 1, 1, 'manual', 'running', 'true', 'allow', 30000, 86400000, 3600000, \
           10000, 10000, 600000, {now}, {now}, {now}, {now}, 'worker-' || (i % 5), 'tok-' || i, {now} + 3600000, \
           {now} + 86400000, NULL, 0.5, 'copying' FROM n"
    ))?;
    // An event log for the execution page.
    c.execute_batch(&format!(
        "INSERT INTO events (execution_id, at, kind, from_state, to_state, reason, message, actor) \
         SELECT id, {now}, 'note', NULL, NULL, NULL, 'seeded note', 'bench' FROM executions WHERE id > {terminal} - 200"
    ))?;
    c.execute_batch("ANALYZE")?;
    println!(
        "seeded {total} executions ({running} running) over {jobs} jobs in {:?} ({} MB file)",
        t.elapsed(),
        std::fs::metadata(&path)?.len() / 1_000_000
    );

    if std::env::var_os("JOBWARD_BENCH_KEEP").is_some() {
        let kept = std::env::temp_dir().join("jobward-bench-dashboard.db");
        std::fs::copy(&path, &kept)?;
        println!("copied the database to {}", kept.display());
    }
    let router = app(AppState::new(
        store,
        Tokens::default(),
        dir.path().join("logs"),
    ));
    let mid = terminal / 2;
    let pages = [
        ("overview", "/".to_string()),
        ("jobs list", "/jobs".to_string()),
        ("job page, newest", format!("/jobs/job-{}", 7 % jobs)),
        (
            "job page, mid-history",
            format!("/jobs/job-{}?before={mid}", 7 % jobs),
        ),
        ("execution page", format!("/executions/{}", terminal - 3)),
        ("stale executions", "/stale?stale_after=1s".to_string()),
        ("executions, all", "/executions".to_string()),
        (
            "executions, failed of one job",
            format!("/executions?job=job-{}&status=failed", 7 % jobs),
        ),
        (
            "executions, lease expired",
            "/executions?lease_expired=true".to_string(),
        ),
        (
            "executions, older page",
            format!("/executions?before={mid}"),
        ),
        ("queues", "/queues".to_string()),
        ("workers", "/workers".to_string()),
        ("nodes", "/nodes".to_string()),
    ];
    for (label, uri) in pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let r = router
                .clone()
                .oneshot(Request::get(&uri).body(Body::empty())?)
                .await?;
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), usize::MAX).await?;
            times.push(t.elapsed());
            anyhow::ensure!(status == StatusCode::OK, "{uri}: {status}");
            bytes = body.len();
        }
        // The first request of a page is its cold figure (nothing of it cached by SQLite).
        let first = times[0];
        println!(
            "{label:<24} {uri:<28} first {first:>8.2?}  {}  ({} KB)",
            stats(times),
            bytes / 1024
        );
    }
    Ok(())
}
