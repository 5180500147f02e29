//! A real node on a real SQLite file with real child processes.

use std::time::{Duration, Instant};

use jobward_core::{History, JobSpec, Overlap, Reason, State};
use jobward_server::{Node, NodeConfig, Retention, log_path};
use jobward_store::{DynStore, ExecutionId, ExecutionRow, OpenMode, SyncJobs, TriggerParams};

async fn node(dir: &tempfile::TempDir, jobs: Vec<JobSpec>) -> (DynStore, Node) {
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
        .await
        .unwrap();
    let mut cfg = NodeConfig::new("node-test", dir.path().join("logs"));
    cfg.poll_interval = Duration::from_millis(50);
    cfg.reaper.interval = Duration::from_millis(100);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.node_lease = Duration::from_secs(3);
    cfg.shutdown_grace = Duration::from_millis(200);
    let node = Node::start(
        store.clone(),
        cfg,
        SyncJobs {
            jobs,
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    (store, node)
}

async fn trigger(store: &DynStore, node: &Node, job: &str) -> ExecutionId {
    let id = store
        .trigger(TriggerParams {
            job: job.into(),
            actor: "test".into(),
            payload: None,
            idempotency_key: None,
            run_at: None,
            priority: None,
        })
        .await
        .unwrap()
        .execution
        .id;
    node.executor().wake.notify_one();
    id
}

async fn wait(
    store: &DynStore,
    id: ExecutionId,
    f: impl Fn(&ExecutionRow) -> bool,
) -> ExecutionRow {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let e = store.get_execution(id).await.unwrap().unwrap();
        if f(&e) {
            return e;
        }
        assert!(Instant::now() < until, "timed out: {e:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Heartbeats keep a long run alive: running for three heartbeat timeouts is not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_its_heartbeat_timeout_is_kept_alive_by_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = JobSpec::new("long", "sleep 3");
    job.timeouts.heartbeat = Duration::from_secs(1);
    let (store, node) = node(&dir, vec![job]).await;
    let id = trigger(&store, &node, "long").await;
    let e = wait(&store, id, |e| e.state.is_terminal()).await;
    assert_eq!(e.state, State::Completed, "{e:?}");
    assert!(e.runtime(e.finished_at.unwrap()).unwrap() >= Duration::from_secs(3));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_replace_stops_the_running_process_and_records_it_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = JobSpec::new("r", "sleep 30");
    job.overlap = Overlap::Replace;
    job.timeouts.kill_grace = Duration::from_millis(500);
    let (store, node) = node(&dir, vec![job]).await;
    let first = trigger(&store, &node, "r").await;
    let running = wait(&store, first, |e| {
        e.state == State::Running && e.process.is_some()
    })
    .await;
    let second = trigger(&store, &node, "r").await;
    let old = wait(&store, first, |e| e.state.is_terminal()).await;
    assert_eq!(
        (old.state, old.reason),
        (State::Cancelled, Some(Reason::Replaced))
    );
    let pid = running.process.unwrap().pid;
    assert!(
        jobward_exec::procfs::stat(pid).is_none_or(|s| s.state == 'Z'),
        "the replaced process is gone"
    );
    wait(&store, second, |e| e.state == State::Running).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_error_is_failed_with_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, node) = node(&dir, vec![JobSpec::new("nolog", "true")]).await;
    // The job's log directory is a file: the run cannot be started.
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/nolog"), "").unwrap();
    let id = trigger(&store, &node, "nolog").await;
    let e = wait(&store, id, |e| e.state.is_terminal()).await;
    assert_eq!(
        (e.state, e.reason),
        (State::Failed, Some(Reason::SpawnError)),
        "{e:?}"
    );
    assert!(e.message.unwrap().contains("could not start"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_executions_with_their_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = JobSpec::new("chatty", "echo hello");
    job.history = History {
        keep_last: Some(1),
        max_age: None,
    };
    let (store, node) = node(&dir, vec![job]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = trigger(&store, &node, "chatty").await;
        wait(&store, id, |e| e.state == State::Completed).await;
        ids.push(id);
    }
    let logs = dir.path().join("logs");
    assert!(ids.iter().all(|id| log_path(&logs, "chatty", *id).exists()));
    let report = Retention {
        store: store.clone(),
        log_dir: logs.clone(),
        batch: 10,
    }
    .run_once()
    .await
    .unwrap();
    assert_eq!(report.deleted.len(), 2);
    assert!(
        !log_path(&logs, "chatty", ids[0]).exists() && !log_path(&logs, "chatty", ids[1]).exists()
    );
    assert!(
        log_path(&logs, "chatty", ids[2]).exists(),
        "the kept execution keeps its log"
    );
    assert!(store.get_execution(ids[0]).await.unwrap().is_none());
    node.shutdown().await;
}

/// Health turning `warning` posts one alert (seed 001: "more than N running for over an hour").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turning_warning_posts_one_alert() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, hook).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
        .await
        .unwrap();
    let mut cfg = NodeConfig::new("alerting", dir.path().join("logs"));
    cfg.poll_interval = Duration::from_millis(50);
    cfg.shutdown_grace = Duration::from_millis(100);
    cfg.health_alert.settings = jobward_server::health::HealthSettings {
        long_running_after: Duration::from_millis(300),
        warn_long_running: 0,
    };
    cfg.health_alert.interval = Duration::from_millis(100);
    let webhook = jobward_server::alerts::Webhook {
        url: format!("http://127.0.0.1:{port}/hook"),
        on: vec![jobward_server::alerts::AlertKind::Health],
        kind: jobward_server::alerts::SinkKind::Json,
    };
    cfg.alerts = jobward_server::alerts::Alerts::start(vec![webhook]);
    let mut job = JobSpec::new("slow", "sleep 3");
    job.overlap = Overlap::Allow;
    let node = Node::start(
        store.clone(),
        cfg,
        SyncJobs {
            jobs: vec![job],
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    trigger(&store, &node, "slow").await;
    let until = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "no health alert");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "one alert when it turns warning, not one per check: {got:?}"
    );
    assert_eq!(got[0]["event"], "health");
    assert_eq!(got[0]["data"]["health"]["status"], "warning");
    assert!(
        got[0]["data"]["health"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("running for more than")
    );
    node.shutdown().await;
}

/// Invariant 11: a starting node kills every proven survivor of its name's earlier
/// incarnations, whatever their rows say now (here: the execution was already settled by an
/// operator from another host, while its process ran on here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_kills_survivors_of_earlier_incarnations_whatever_their_rows_say() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, _) = jobward_store::open(&url, OpenMode::CreateAndMigrate)
        .await
        .unwrap();
    let host = jobward_server::default_node_name();
    // An earlier incarnation of "node-test" on this host, long stopped.
    store
        .register_node(jobward_store::NewNode {
            id: "earlier-incarnation".into(),
            name: "node-test".into(),
            hostname: host,
            pid: 1,
            start_ticks: None,
            boot_id: None,
            lease: Duration::from_secs(1),
            supersede: vec![],
        })
        .await
        .unwrap();
    store
        .stop_node("earlier-incarnation", "settled elsewhere")
        .await
        .unwrap();
    // A process it left running: it carries that incarnation's marker.
    let mut survivor = std::process::Command::new("/bin/sh");
    survivor
        .args(["-c", "exec sleep 600"])
        .env("JOBWARD_EXECUTION_ID", "4242")
        .env("JOBWARD_NODE_ID", "earlier-incarnation");
    std::os::unix::process::CommandExt::process_group(&mut survivor, 0);
    let mut survivor = survivor.spawn().unwrap();
    // And an unrelated process with a marker of some other node: never touched.
    let mut stranger = std::process::Command::new("/bin/sh");
    stranger
        .args(["-c", "exec sleep 600"])
        .env("JOBWARD_EXECUTION_ID", "4242")
        .env("JOBWARD_NODE_ID", "someone-else");
    let mut stranger = stranger.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(store);

    let (_store, node) = node(&dir, vec![]).await;
    let gone = survivor.try_wait().unwrap().is_some() || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        survivor.try_wait().unwrap().is_some()
    };
    assert!(gone, "the earlier incarnation's process survived the start");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "a process of another node was killed"
    );
    assert!(node.recovery.processes_killed >= 1);
    let _ = stranger.kill();
    let _ = stranger.wait();
    node.shutdown().await;
}
