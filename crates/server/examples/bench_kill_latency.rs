//! Time from a child's SIGKILL to its terminal record, through a real node on a real SQLite
//! file. Nothing is asserted; the figures are printed.
//!
//!   cargo run --release -p jobward-server --example bench_kill_latency [RUNS]

use std::time::{Duration, Instant};

use jobward_core::{JobSpec, Overlap, State};
use jobward_server::{Node, NodeConfig};
use jobward_store::{OpenMode, SyncJobs, TriggerParams};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate).await?;
    let pidfile = dir.path().join("pid");
    let job = JobSpec {
        overlap: Overlap::Allow,
        ..JobSpec::new(
            "victim",
            format!(
                "echo $$ > {}.tmp && mv {0}.tmp {0} && exec sleep 600",
                pidfile.display()
            ),
        )
    };
    let mut cfg = NodeConfig::new("bench", dir.path().join("logs"));
    cfg.poll_interval = Duration::from_millis(50);
    let node = Node::start(
        store.clone(),
        cfg,
        SyncJobs {
            jobs: vec![job],
            limits: Default::default(),
        },
    )
    .await?;
    let mut ledger = Vec::new();
    let mut observed = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_file(&pidfile);
        let e = store
            .trigger(TriggerParams {
                job: "victim".into(),
                actor: "bench".into(),
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
            })
            .await?
            .execution;
        node.executor().wake.notify_one();
        let pid: i32 = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                break s.trim().parse()?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let killed_at = chrono::Utc::now();
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let done = loop {
            let row = store.get_execution(e.id).await?.expect("exists");
            if row.state.is_terminal() {
                break row;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        observed.push(t.elapsed());
        assert_eq!(done.state, State::Failed);
        ledger.push(
            (done.finished_at.expect("terminal") - killed_at)
                .to_std()
                .unwrap_or_default(),
        );
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        format!(
            "median {:?}, p95 {:?}, max {:?}",
            v[v.len() / 2],
            v[(v.len() * 95 / 100).min(v.len() - 1)],
            v[v.len() - 1]
        )
    };
    println!("{runs} SIGKILLed children, all recorded failed (signal 9)");
    println!("kill -> finished_at in the ledger: {}", stats(ledger));
    println!(
        "kill -> terminal row visible to a reader (1 ms polling): {}",
        stats(observed)
    );
    node.shutdown().await;
    Ok(())
}
