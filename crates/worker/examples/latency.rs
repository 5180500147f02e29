//! Trigger→start latency at a steady rate, through the worker protocol: one worker loop
//! long-polls `/api/worker/exchange` (so it is woken when work arrives), and a producer sends
//! one trigger every 1000/RATE ms for SECONDS seconds. The latency of a run is from the moment
//! its trigger request was sent to the moment the worker holds its claim (same process, same
//! clock).
//!
//!   latency URL JOB QUEUE RATE SECONDS
//! Tokens, when the server has them: JOBWARD_OPERATE_TOKEN and JOBWARD_WORKER_TOKEN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobward_protocol::{CompletionReport, ExchangeRequest, Outcome, TriggerResponse};
use jobward_worker::Client;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, job, queue, rate, seconds] = args.as_slice() else {
        return Err("usage: latency URL JOB QUEUE RATE SECONDS".into());
    };
    let (rate, seconds): (f64, u64) = (rate.parse()?, seconds.parse()?);
    let worker = Client::new(url, std::env::var("JOBWARD_WORKER_TOKEN").ok())?;
    let operate_token = std::env::var("JOBWARD_OPERATE_TOKEN").ok();
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let started: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let total = (rate * seconds as f64) as usize;

    let w = {
        let (started, queue) = (started.clone(), queue.clone());
        tokio::spawn(async move {
            let mut completions = Vec::new();
            while started.lock().unwrap().len() < total {
                let req = ExchangeRequest {
                    handlers: None,
                    commands: None,
                    worker_id: format!("latency-{}", std::process::id()),
                    completions: std::mem::take(&mut completions),
                    queues: vec![queue.clone()],
                    batch: 10,
                    wait_ms: 1000,
                };
                let r = worker.exchange(&req).await?;
                let now = Instant::now();
                for e in r.executions {
                    started.lock().unwrap().insert(e.id, now);
                    completions.push(CompletionReport {
                        id: e.id,
                        attempt: e.attempt,
                        lease_token: e.lease_token,
                        outcome: Outcome::Completed,
                        exit_code: Some(0),
                        signal: None,
                        error: None,
                        log_tail: None,
                    });
                }
            }
            Ok::<(), Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let every = Duration::from_secs_f64(1.0 / rate);
    let begin = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(begin + every * i as u32).await;
        let mut req = http
            .post(format!("{url}/api/jobs/{job}/trigger"))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(t) = &operate_token {
            req = req.bearer_auth(t);
        }
        let t0 = Instant::now();
        let r: TriggerResponse = req.send().await?.error_for_status()?.json().await?;
        sent.lock().unwrap().insert(r.execution.id, t0);
    }
    tokio::time::timeout(Duration::from_secs(30), w).await???;
    let (sent, started) = (sent.lock().unwrap(), started.lock().unwrap());
    let mut ms: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t0)| started.get(id).map(|t1| (*t1 - *t0).as_secs_f64() * 1000.0))
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((p / 100.0) * ms.len() as f64) as usize].min(ms[ms.len() - 1]);
    println!(
        "jobward {}/{total} runs at {rate}/s: p50 {:.1} ms p99 {:.1} ms",
        ms.len(),
        pct(50.0),
        pct(99.0)
    );
    Ok(())
}
