//! Handlers embedded in a Rust service (`jobward_worker::Handler`), run by the worker loop
//! in this test process against a real `jobward serve`: a failure with its message, a retry
//! that resumes from the last checkpoint, a cancel and a run timeout told to the handler, a
//! command job not offered to a worker that runs no commands, and a shutdown that hands back
//! what still runs. (The same loop with the built-in command handler is `jobward worker`,
//! whose SIGKILL, SIGSTOP and SIGTERM tests are in `workers.rs`.)

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jobward_worker::{Context, Failure, Handler, Stopping, WorkerConfig};
use serde_json::{Value, json};

struct Render;

#[jobward_worker::async_trait]
impl Handler for Render {
    async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        if ctx.attempt() == 1 {
            ctx.phase("render");
            ctx.progress(0.3);
            ctx.checkpoint(json!({ "page": 3 }));
            ctx.log("rendered pages 1 to 3");
            return Err(Failure::new("disk full"));
        }
        let page = ctx
            .last_checkpoint()
            .and_then(|c| c["page"].as_u64())
            .unwrap_or(0);
        ctx.log(format!("resumed at page {page}"));
        match page {
            3 => Ok(()),
            _ => Err(Failure::new(format!("resumed at page {page}, not 3"))),
        }
    }
}

/// Works until it is asked to stop, then says why.
struct Wait;

#[jobward_worker::async_trait]
impl Handler for Wait {
    async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let why = ctx.stopped().await;
        ctx.log(format!("told to stop: {why:?}"));
        Err(Failure::new(format!("stopped: {why:?}")))
    }
}

fn runs_of(env: &Env, job: &str) -> Vec<Value> {
    env.runs(&["--job", job])
}

#[test]
fn embedded_handlers_run_fail_resume_stop_and_hand_back() {
    let env = Env::new(
        "",
        r#"[[job]]
name = "render"
queue = "rs"
overlap = "allow"
retry = { max_attempts = 2, backoff = "1s" }
[[job]]
name = "wait"
queue = "rs"
overlap = "allow"
heartbeat_timeout = "2s"
kill_grace = "1s"
[[job]]
name = "slow"
queue = "rs"
overlap = "allow"
run_timeout = "1s"
kill_grace = "1s"
[[job]]
name = "cmd"
queue = "rs"
command = "true"
"#,
    );
    let server = env.serve();
    let api = server.api();
    let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
    handlers.insert("render".into(), Arc::new(Render));
    handlers.insert("wait".into(), Arc::new(Wait));
    handlers.insert("slow".into(), Arc::new(Wait));
    let cfg = WorkerConfig {
        handlers,
        commands: false,
        server: api.clone(),
        token: None,
        queues: vec!["rs".into()],
        concurrency: 4,
        worker_id: "rs-1".into(),
        log_dir: env.path("wlogs"),
        log_max_bytes: 1 << 20,
        shutdown_grace: Duration::from_millis(500),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(jobward_worker::run(cfg, shutdown))
            .unwrap()
    });

    // A failure is recorded with its message; the retry gets the last checkpoint and completes.
    let first = env.trigger("render");
    let e = env.wait_state(first, "failed", Duration::from_secs(15));
    assert!(e["message"].as_str().unwrap().contains("disk full"), "{e}");
    assert_eq!(e["phase"], "render", "{e}");
    let shown = env.show(first);
    assert!(
        shown.to_string().contains("rendered pages 1 to 3"),
        "{shown}"
    );
    let retry = loop {
        let runs = runs_of(&env, "render");
        if let Some(r) = runs
            .iter()
            .find(|r| r["retry_of"] == first && r["status"] == "completed")
        {
            break r.clone();
        }
        assert!(
            runs.iter()
                .all(|r| r["status"] != "failed" || r["id"] == first),
            "the retry failed: {runs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = env.show(retry["id"].as_i64().unwrap());
    assert!(shown.to_string().contains("resumed at page 3"), "{shown}");

    // A cancel reaches the handler, which stops: the run is cancelled.
    let id = env.trigger("wait");
    env.wait_state(id, "running", Duration::from_secs(10));
    let out = env.run(&["runs", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let e = env.wait_state(id, "cancelled", Duration::from_secs(10));
    assert!(
        env.show(id)
            .to_string()
            .contains(&format!("told to stop: {:?}", Stopping::Cancel)),
        "{e}"
    );

    // The run timeout is told to the handler: timed out.
    let id = env.trigger("slow");
    let e = env.wait_for(id, Duration::from_secs(10), "ended", |e| {
        e["status"] != "running" && e["status"] != "queued"
    });
    assert_eq!(e["status"], "timed_out", "{e}");
    assert_eq!(e["reason"], "run_timeout", "{e}");

    // A worker that runs no commands is not offered a command job; the job page says so.
    let id = env.trigger("cmd");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.execution(id)["status"], "queued");
    let job: Value = serde_json::from_str(&http_get(&api, "/api/jobs/cmd")).unwrap();
    assert_eq!(
        job["served"], "1 worker claims from queue 'rs' but does not run its command",
        "{job}"
    );
    let job: Value = serde_json::from_str(&http_get(&api, "/api/jobs/render")).unwrap();
    assert!(
        job["served"]
            .as_str()
            .unwrap()
            .starts_with("served by 1 worker on queue 'rs' (rs-1;"),
        "{job}"
    );

    // Shutdown: what still runs after the grace is handed back and queued again at once.
    let id = env.trigger("wait");
    env.wait_state(id, "running", Duration::from_secs(10));
    stop.send(true).unwrap();
    let report = worker.join().unwrap();
    assert_eq!(report.handed_back, 1, "{report:?}");
    let e = env.execution(id);
    assert_eq!(e["status"], "cancelled", "{e}");
    assert_eq!(e["reason"], "handed_back", "{e}");
    assert!(
        runs_of(&env, "wait")
            .iter()
            .any(|r| r["retry_of"] == id && r["status"] == "queued"),
        "the handed-back run is queued again"
    );
}
