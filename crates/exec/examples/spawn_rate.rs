//! This machine's process spawn rate, side by side: `sh -c true` in its own process group
//! (the baseline), and the same under jobward's per-execution supervisor with a bounded log
//! (what a node does for each local run).
//!
//!   cargo run --release -p jobward-exec --example spawn_rate -- [COUNT] [CONCURRENCY]

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn baseline(count: usize, concurrency: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < count {
                    let status = std::process::Command::new("/bin/sh")
                        .args(["-c", "true"])
                        .process_group(0)
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    count as f64 / t.elapsed().as_secs_f64()
}

async fn supervised(count: usize, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let dir = dir.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    return;
                }
                let launch = jobward_exec::Launch {
                    command: "true".into(),
                    env: vec![("JOBWARD_EXECUTION_ID".into(), i.to_string())],
                    log_path: dir.join(format!("{i}.log")),
                    log_max_bytes: 1 << 20,
                    cwd: None,
                    echo: false,
                };
                let r = jobward_exec::spawn(&launch).unwrap();
                let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let f = r.supervise(None, Duration::from_secs(1), rx).await;
                assert!(f.exit.success());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let count = args.first().copied().unwrap_or(3000);
    let concurrency = args.get(1).copied().unwrap_or(4);
    let base = baseline(count, concurrency);
    let sup = supervised(count, concurrency).await;
    println!(
        "spawn rate (count {count}, concurrency {concurrency}): sh -c true in its own group {base:.0}/s; \
         under jobward's supervisor with a log {sup:.0}/s ({:.2}x)",
        sup / base
    );
}
