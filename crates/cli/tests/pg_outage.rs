//! PostgreSQL down for six seconds under two running nodes with a 3 s node lease. Alone in its
//! test binary: cargo runs test binaries one at a time, so no other test uses PostgreSQL.
//!
//! Issue: after such an outage, nodes found their leases expired, declared each other lost
//! and exited. An outage alone must never cost a node or an execution: leases count again from
//! the moment the database is back, for every node alike.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn pg_ready() -> bool {
    std::process::Command::new("psql")
        .arg(pg_admin())
        .args(["-q", "-c", "SELECT 1"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .unwrap();
    let mut args = vec!["--skip-systemctl-redirect", &version, "main", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let out = std::process::Command::new("pg_ctlcluster")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctlcluster {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts PostgreSQL again even if the test fails half-way.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        if !pg_ready() {
            pg_ctl("start");
        }
    }
}

#[test]
fn a_six_second_postgres_outage_costs_no_node_and_no_execution() {
    let (env, _schema) = Env::postgres(
        "",
        r#"[[job]]
name = "work"
command = "sleep 12; echo finished"
overlap = "allow"
[[job]]
name = "remote"
command = "sleep 12; echo finished"
overlap = "allow"
queue = "q"
"#,
    );
    let a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    let mut worker = std::process::Command::new(BIN)
        .args(["worker", "--server", &a.api(), "--queue", "q"])
        .arg("--log-dir")
        .arg(env.path("wlogs"))
        .env("JOBWARD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let mut ids: Vec<i64> = (0..3).map(|_| env.trigger("work")).collect();
    ids.push(env.trigger("remote"));
    for id in &ids {
        env.wait_state(*id, "running", Duration::from_secs(15));
    }
    let _restart = Restart;
    pg_ctl("stop");
    std::thread::sleep(Duration::from_secs(6));
    pg_ctl("start");
    let until = Instant::now() + Duration::from_secs(60);
    while !pg_ready() {
        assert!(Instant::now() < until, "PostgreSQL did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        let e = env.wait_for(*id, Duration::from_secs(60), "terminal", |e| {
            e["status"] != "running" && e["status"] != "queued"
        });
        assert_eq!(
            (e["status"].as_str(), e["attempt"].as_u64()),
            (Some("completed"), Some(1)),
            "the outage cost an execution: {e}"
        );
    }
    let nodes = env.json(&["nodes", "list", "--json"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(
        nodes.len(),
        2,
        "no node rejoined as a new incarnation: {nodes:?}"
    );
    assert!(
        nodes.iter().all(|n| n["stopped_at"].is_null()),
        "no node was declared lost: {nodes:?}"
    );
    for n in [&a, &b] {
        let log = n.log_text();
        assert!(!log.contains("declared lost"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = worker.wait();
}
