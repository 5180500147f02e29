//! Protocol throughput: one process, N concurrent loops that claim and complete executions
//! without running anything (no child process), against a live jobward server. It first queues
//! COUNT executions of a queue job, then times how fast they are claimed and completed.
//!
//!   noop_worker URL JOB QUEUE COUNT CONCURRENCY [--batch N] [--enqueue bulk|single]
//!
//! `--batch 1` (the default) is the one-at-a-time protocol: claim one, complete it, repeat.
//! `--batch N` (N > 1) is the batched protocol: each loop calls `/api/worker/exchange`, which
//! records the completions of its previous batch and claims the next N in one request.
//! `--enqueue bulk` (the default) queues through `/api/triggers`, 1,000 per request;
//! `--enqueue single` sends one trigger request per execution, 20 in flight.
//! Tokens, when the server has them: JOBWARD_OPERATE_TOKEN and JOBWARD_WORKER_TOKEN.
//! CONCURRENCY 0 only queues the executions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobward_protocol::{
    ClaimRequest, CompleteRequest, CompletionReport, ExchangeRequest, ItemResult, Outcome,
    TriggerBatchRequest, TriggerItem,
};
use jobward_worker::Client;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut flag = |name: &str, default: &str| -> String {
        match args.iter().position(|a| a == name) {
            Some(i) if i + 1 < args.len() => {
                let v = args.remove(i + 1);
                args.remove(i);
                v
            }
            _ => default.to_string(),
        }
    };
    let batch: u32 = flag("--batch", "1").parse()?;
    let enqueue = flag("--enqueue", "bulk");
    let [url, job, queue, count, concurrency] = args.as_slice() else {
        return Err(
            "usage: noop_worker URL JOB QUEUE COUNT CONCURRENCY [--batch N] [--enqueue bulk|single]"
                .into(),
        );
    };
    if !(1..=100).contains(&batch) {
        return Err("--batch must be between 1 and 100".into());
    }
    let (count, concurrency): (u64, u64) = (count.parse()?, concurrency.parse()?);
    let operate = Client::new(url, std::env::var("JOBWARD_OPERATE_TOKEN").ok())?;
    let worker = Client::new(url, std::env::var("JOBWARD_WORKER_TOKEN").ok())?;

    let t = Instant::now();
    match enqueue.as_str() {
        "bulk" => enqueue_bulk(&operate, job, count).await?,
        "single" => enqueue_single(&operate, job, count).await?,
        other => return Err(format!("--enqueue must be bulk or single, got {other}").into()),
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "enqueued {count} ({enqueue}) in {secs:.2}s: {:.0} triggers/s",
        count as f64 / secs
    );
    if concurrency == 0 {
        return Ok(());
    }

    let done = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (worker, queue, done, calls) =
            (worker.clone(), queue.clone(), done.clone(), calls.clone());
        let worker_id = format!("noop-{}-{i}", std::process::id());
        tasks.push(tokio::spawn(async move {
            if batch == 1 {
                one_at_a_time(&worker, &worker_id, &queue, count, &done, &calls).await
            } else {
                batched(&worker, &worker_id, &queue, batch, count, &done, &calls).await
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{count} claim→complete in {secs:.2}s at concurrency {concurrency}, batch {batch}: {:.0} jobs/s ({:.2} HTTP calls per job)",
        count as f64 / secs,
        calls.load(Ordering::SeqCst) as f64 / count as f64
    );
    Ok(())
}

/// Bulk enqueue: batches of up to 1,000 triggers, `IN_FLIGHT` requests at a time (as an
/// application enqueueing from several tasks would).
async fn enqueue_bulk(c: &Client, job: &str, count: u64) -> Result<(), Error> {
    const IN_FLIGHT: usize = 4;
    let mut sent = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while sent < count && tasks.len() < IN_FLIGHT {
            let n = (count - sent).min(1000);
            sent += n;
            let (c, job) = (c.clone(), job.to_string());
            tasks.spawn(async move {
                let req = TriggerBatchRequest {
                    triggers: (0..n)
                        .map(|_| TriggerItem {
                            job: job.clone(),
                            ..Default::default()
                        })
                        .collect(),
                };
                let r = c.trigger_batch(&req).await.map_err(|e| e.to_string())?;
                match r.results.iter().find(|r| r.result != ItemResult::Accepted) {
                    Some(bad) => Err(format!("a trigger was refused: {bad:?}")),
                    None => Ok(()),
                }
            });
        }
        match tasks.join_next().await {
            None => return Ok(()),
            Some(r) => r.map_err(|e| e.to_string())??,
        }
    }
}

async fn enqueue_single(c: &Client, job: &str, count: u64) -> Result<(), Error> {
    let queued = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let token = std::env::var("JOBWARD_OPERATE_TOKEN").ok();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url, job, queued, token) = (
            http.clone(),
            c.base().to_string(),
            job.to_string(),
            queued.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while queued.fetch_add(1, Ordering::SeqCst) < count {
                let mut req = http.post(format!("{url}/api/jobs/{job}/trigger"));
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("trigger: {}", r.status()));
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn one_at_a_time(
    worker: &Client,
    worker_id: &str,
    queue: &str,
    count: u64,
    done: &AtomicU64,
    calls: &AtomicU64,
) -> Result<(), Error> {
    loop {
        let claim = ClaimRequest {
            handlers: None,
            commands: None,
            worker_id: worker_id.to_string(),
            queues: vec![queue.to_string()],
            batch: 1,
            wait_ms: 0,
        };
        calls.fetch_add(1, Ordering::Relaxed);
        let got = worker.claim(&claim).await?.executions;
        if got.is_empty() {
            if done.load(Ordering::SeqCst) >= count {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        for e in got {
            let req = CompleteRequest {
                worker_id: worker_id.to_string(),
                id: e.id,
                attempt: e.attempt,
                lease_token: e.lease_token,
                outcome: Outcome::Completed,
                exit_code: Some(0),
                signal: None,
                error: None,
                log_tail: None,
            };
            calls.fetch_add(1, Ordering::Relaxed);
            worker.complete(&req).await?;
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn batched(
    worker: &Client,
    worker_id: &str,
    queue: &str,
    batch: u32,
    count: u64,
    done: &AtomicU64,
    calls: &AtomicU64,
) -> Result<(), Error> {
    let mut completions: Vec<CompletionReport> = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst) >= count;
        let req = ExchangeRequest {
            handlers: None,
            commands: None,
            worker_id: worker_id.to_string(),
            completions: std::mem::take(&mut completions),
            queues: vec![queue.to_string()],
            batch: if finished { 0 } else { batch },
            wait_ms: 0,
        };
        let sent = req.completions.len() as u64;
        calls.fetch_add(1, Ordering::Relaxed);
        let r = worker.exchange(&req).await?;
        if let Some(bad) = r.results.iter().find(|r| r.result != ItemResult::Accepted) {
            return Err(format!("a completion was not accepted: {bad:?}").into());
        }
        done.fetch_add(sent, Ordering::SeqCst);
        if r.executions.is_empty() {
            if done.load(Ordering::SeqCst) >= count {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        completions = r
            .executions
            .into_iter()
            .map(|e| CompletionReport {
                id: e.id,
                attempt: e.attempt,
                lease_token: e.lease_token,
                outcome: Outcome::Completed,
                exit_code: Some(0),
                signal: None,
                error: None,
                log_tail: None,
            })
            .collect();
    }
}
