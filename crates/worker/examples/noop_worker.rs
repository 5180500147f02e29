//! Protocol throughput: one process, N concurrent claim → complete loops that run nothing
//! (no child process), against a live jobward server. It first queues COUNT executions of a
//! queue job through the trigger API, then times how fast they are claimed and completed.
//!
//!   cargo run --release -p jobward-worker --example noop_worker -- URL JOB QUEUE COUNT CONCURRENCY [TOKEN_OPERATE TOKEN_WORKER]
//!
//! CONCURRENCY 0 only queues the executions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use jobward_protocol::{ClaimRequest, CompleteRequest, Outcome};
use jobward_worker::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, job, queue, count, concurrency, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: noop_worker URL JOB QUEUE COUNT CONCURRENCY [OPERATE_TOKEN WORKER_TOKEN]"
                .into(),
        );
    };
    let (count, concurrency): (u64, u64) = (count.parse()?, concurrency.parse()?);
    let operate = Client::new(url, rest.first().cloned())?;
    let worker = Client::new(url, rest.get(1).cloned())?;
    let http = reqwest::Client::new();
    // Queue the work (20 triggers at a time).
    let t = Instant::now();
    let queued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url, job, queued, token) = (
            http.clone(),
            url.clone(),
            job.clone(),
            queued.clone(),
            rest.first().cloned(),
        );
        tasks.push(tokio::spawn(async move {
            while queued.fetch_add(1, Ordering::SeqCst) < count {
                let mut req = http.post(format!("{url}/api/jobs/{job}/trigger"));
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.expect("trigger");
                assert!(r.status().is_success(), "trigger: {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    drop(operate);
    eprintln!("queued {count} executions in {:?}", t.elapsed());
    if concurrency == 0 {
        return Ok(());
    }
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (worker, queue, done) = (worker.clone(), queue.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let worker_id = format!("noop-{}", std::process::id());
            loop {
                let claim = ClaimRequest {
                    worker_id: worker_id.clone(),
                    queues: vec![queue.clone()],
                    batch: 1,
                    wait_ms: 0,
                };
                let got = worker.claim(&claim).await.expect("claim").executions;
                if got.is_empty() {
                    if done.load(Ordering::SeqCst) >= count {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                for e in got {
                    let req = CompleteRequest {
                        worker_id: worker_id.clone(),
                        id: e.id,
                        attempt: e.attempt,
                        lease_token: e.lease_token,
                        outcome: Outcome::Completed,
                        exit_code: Some(0),
                        signal: None,
                        error: None,
                        log_tail: None,
                    };
                    worker.complete(&req).await.expect("complete");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{count} claim→complete in {secs:.2}s at concurrency {concurrency}: {:.0} jobs/s",
        count as f64 / secs
    );
    Ok(())
}
