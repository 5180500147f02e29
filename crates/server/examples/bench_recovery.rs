//! Time from a restart to the recovery of N orphaned executions (default 1,000), each with a
//! real surviving process that startup recovery must find and kill. Nothing is asserted.
//!
//!   cargo run --release -p jobward-server --example bench_recovery [ORPHANS]

use std::time::{Duration, Instant};

use jobward_core::{JobSpec, Overlap, Reason};
use jobward_server::{Node, NodeConfig};
use jobward_store::{ClaimParams, NewNode, OpenMode, ProcessInfo, SyncJobs, TriggerParams};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate).await?;
    let job = JobSpec {
        overlap: Overlap::Allow,
        ..JobSpec::new("orphan", "sleep 600")
    };
    store
        .sync_jobs(SyncJobs {
            jobs: vec![job.clone()],
            limits: Default::default(),
        })
        .await?;
    // The previous incarnation: its process (a short-lived child standing in for the killed
    // jobward) is gone, so the new one can prove it dead.
    let mut dead = std::process::Command::new("true").spawn()?;
    let dead_pid = dead.id() as i32;
    dead.wait()?;
    let hostname = nix::unistd::gethostname()?
        .into_string()
        .unwrap_or_default();
    store
        .register_node(NewNode {
            id: "previous".into(),
            name: "bench".into(),
            hostname,
            pid: dead_pid,
            start_ticks: Some(1),
            boot_id: jobward_exec::procfs::boot_id(),
            lease: Duration::from_secs(30),
            supersede: vec![],
        })
        .await?;
    for _ in 0..n {
        store
            .trigger(TriggerParams {
                job: "orphan".into(),
                actor: "bench".into(),
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
            })
            .await?;
    }
    let claimed = store
        .claim(ClaimParams {
            serves: Default::default(),
            owner: "previous".into(),
            runner: "local".into(),
            node_id: Some("previous".into()),
            limit: n as u32,
        })
        .await?;
    let mut children = Vec::new();
    for row in &claimed {
        let mut c = std::process::Command::new("/bin/sh");
        c.args(["-c", "sleep 600"])
            .env("JOBWARD_EXECUTION_ID", row.id.to_string())
            .env("JOBWARD_NODE_ID", "previous");
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let child = c.spawn()?;
        let pid = child.id() as i32;
        let ticks = jobward_exec::procfs::stat(pid)
            .map(|s| s.start_ticks)
            .unwrap_or(0);
        store
            .record_process(
                &row.lease(),
                &ProcessInfo {
                    pid,
                    pgid: pid,
                    start_ticks: ticks,
                    boot_id: jobward_exec::procfs::boot_id(),
                },
            )
            .await?;
        children.push(child);
    }
    println!(
        "{} orphaned executions with {} live process groups",
        claimed.len(),
        children.len()
    );

    let mut cfg = NodeConfig::new("bench", dir.path().join("logs"));
    cfg.max_running = 1;
    let t = Instant::now();
    let node = Node::start(
        store.clone(),
        cfg,
        SyncJobs {
            jobs: vec![job],
            limits: Default::default(),
        },
    )
    .await?;
    let took = t.elapsed();
    let r = &node.recovery;
    println!(
        "restart -> {} orphans settled ({} node_restarted), {} processes killed, scheduling started: {:?}",
        r.report.recovered.len(),
        r.report.count(Reason::NodeRestarted),
        r.processes_killed,
        took
    );
    let mut alive = 0;
    for c in &mut children {
        if c.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(1));
            if c.try_wait()?.is_none() {
                alive += 1;
            }
        }
    }
    println!("processes still alive afterwards: {alive}");
    node.shutdown().await;
    Ok(())
}
