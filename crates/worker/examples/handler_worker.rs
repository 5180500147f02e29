//! A complete Rust worker with its own handler, against a running `jobward serve`:
//!
//! ```toml
//! [[job]]
//! name = "send-report"
//! queue = "rs"                 # no command: a worker with a handler for it runs it
//! retry = { max_attempts = 3, backoff = "10s" }
//! ```
//!
//!   cargo run -p jobward-worker --example handler_worker -- http://127.0.0.1:8080 [TOKEN]
//!   jobward jobs trigger send-report
//!
//! It claims from queue "rs", runs `send-report` with a checkpoint per page (a retry resumes
//! where the failed attempt got), stops when told (a cancel, the run timeout, a lost lease),
//! and on Ctrl-C stops claiming and hands back what still runs after 10 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobward_worker::{Context, Failure, Handler, WorkerConfig, async_trait};
use serde_json::json;

struct SendReport;

#[async_trait]
impl Handler for SendReport {
    async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let start = ctx
            .last_checkpoint()
            .and_then(|c| c["page"].as_u64())
            .unwrap_or(0);
        ctx.phase("render");
        for page in start..10 {
            tokio::select! {
                why = ctx.stopped() => return Err(Failure::new(format!("stopped at page {page}: {why:?}"))),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
            ctx.progress((page + 1) as f64 / 10.0);
            ctx.checkpoint(json!({ "page": page + 1 }));
            ctx.log(format!("rendered page {}", page + 1));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = args.next().or_else(|| std::env::var("JOBWARD_TOKEN").ok());
    let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
    handlers.insert("send-report".into(), Arc::new(SendReport));
    let cfg = WorkerConfig {
        handlers,
        commands: false,
        server,
        token,
        queues: vec!["rs".into()],
        concurrency: 4,
        worker_id: format!("handler-example-{}", std::process::id()),
        log_dir: std::env::temp_dir().join("jobward-handler-example"),
        log_max_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(10),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let report = jobward_worker::run(cfg, shutdown).await?;
    println!(
        "completed {}, lost {}, handed back {}",
        report.completed, report.lost, report.handed_back
    );
    Ok(())
}
