//! The ledger's own ceiling, without HTTP: bulk enqueue, then CONCURRENCY loops that claim a
//! batch and complete it in one call, on a fresh SQLite file and on a fresh PostgreSQL schema.
//! Every transition and its event are written, as in production.
//!
//!   cargo run --release -p jobward-store --example bench_ledger -- [COUNT] [CONCURRENCY] [BATCH]
//!
//! PostgreSQL from JOBWARD_BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test).

use std::time::{Duration, Instant};

use jobward_core::{History, JobSpec, Overlap};
use jobward_store::*;

fn spec() -> JobSpec {
    let mut s = JobSpec::new("noop", "true");
    s.queue = Some("fast".into());
    s.overlap = Overlap::Allow;
    s.history = History {
        keep_last: None,
        max_age: None,
    };
    s.timeouts.queue = Duration::from_secs(3600);
    s
}

async fn run(name: &str, store: DynStore, count: usize, concurrency: usize, batch: u32) {
    store
        .sync_jobs(SyncJobs {
            jobs: vec![spec()],
            limits: Default::default(),
        })
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in 0..count.div_ceil(1000) {
        let n = (count - chunk * 1000).min(1000);
        let items = (0..n)
            .map(|_| TriggerParams {
                job: "noop".into(),
                actor: "bench".into(),
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
            })
            .collect();
        store.trigger_many(items).await.unwrap();
    }
    let enqueue = t.elapsed();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let got = store
                    .claim(ClaimParams {
                        serves: Default::default(),
                        owner: format!("w{w}"),
                        runner: "fast".into(),
                        node_id: None,
                        limit: batch,
                    })
                    .await
                    .unwrap();
                if got.is_empty() {
                    return done;
                }
                done += got.len();
                let reports = got
                    .iter()
                    .map(|e| CompleteParams {
                        lease: e.lease(),
                        outcome: Outcome::success(0),
                        actor: format!("w{w}"),
                    })
                    .collect();
                for r in store.complete_many(reports).await.unwrap() {
                    r.unwrap();
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let took = t.elapsed();
    println!(
        "{name}: enqueue {count} in {enqueue:?} = {:.0}/s; claim+complete {total} (concurrency {concurrency}, batch {batch}) in {took:?} = {:.0} jobs/s",
        count as f64 / enqueue.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let count = args.first().copied().unwrap_or(10_000);
    let concurrency = args.get(1).copied().unwrap_or(10);
    let batch = args.get(2).copied().unwrap_or(100) as u32;

    let only = std::env::var("JOBWARD_BENCH_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    if only != "postgres" {
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let (store, _) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
        run("sqlite", store, count, concurrency, batch).await;
    }
    if only == "sqlite" {
        return;
    }

    let admin = std::env::var("JOBWARD_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("jw_bench_{}", std::process::id());
    let status = std::process::Command::new("psql")
        .args([&admin, "-qc", &format!("CREATE SCHEMA {schema}")])
        .status()
        .unwrap();
    assert!(status.success());
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options=-c%20search_path%3D{schema}");
    let (store, _) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    run("postgres", store.clone(), count, concurrency, batch).await;
    drop(store);
    let _ = std::process::Command::new("psql")
        .args([&admin, "-qc", &format!("DROP SCHEMA {schema} CASCADE")])
        .status();
}
