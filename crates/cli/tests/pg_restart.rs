//! PostgreSQL restarted (`-m immediate`) under two running nodes. Alone in its test binary:
//! cargo runs test binaries one at a time, so no other test is using PostgreSQL meanwhile.

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

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
        .unwrap();
    let out = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "immediate",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = Instant::now() + Duration::from_secs(60);
    while !pg_ready() {
        assert!(Instant::now() < until, "PostgreSQL did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nodes log the outage, keep their child processes, reconnect; afterwards every deadline is
/// honoured, no execution is left live, each instant fired at most once, `audit` is clean,
/// and `/metrics` counted the database errors.
#[test]
fn a_postgres_restart_loses_nothing_and_kills_nothing() {
    let (env, _schema) = Env::postgres(
        "",
        r#"[[job]]
name = "work"
command = "sleep 8; echo finished"
overlap = "allow"
[[job]]
name = "tick"
command = "true"
every = "1s"
overlap = "allow"
"#,
    );
    let a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    let ids: Vec<i64> = (0..4).map(|_| env.trigger("work")).collect();
    for id in &ids {
        env.wait_state(*id, "running", Duration::from_secs(15));
    }
    std::thread::sleep(Duration::from_secs(1));
    restart_postgres();
    for id in &ids {
        let e = env.wait_state(*id, "completed", Duration::from_secs(60));
        assert_eq!(e["attempt"], 1, "the run survived the outage: {e}");
    }
    // Ticks resume after the outage.
    let before = env.runs(&["--job", "tick"]).len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        env.runs(&["--job", "tick"]).len() > before,
        "the scheduler resumed"
    );
    let mut seen = std::collections::HashSet::new();
    for r in env
        .json(&["runs", "list", "--json", "--limit", "5000", "--job", "tick"])
        .as_array()
        .unwrap()
    {
        if r["attempt"] == 1 {
            assert!(
                seen.insert(r["scheduled_for"].to_string()),
                "an instant fired twice: {r}"
            );
        }
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let out = env.run(&["audit"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < until,
            "audit not clean: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors: f64 = [&a, &b]
        .iter()
        .map(|n| {
            http_get(&n.api(), "/metrics")
                .lines()
                .filter(|l| l.starts_with("jobward_database_errors_total"))
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .sum::<f64>()
        })
        .sum();
    assert!(errors > 0.0, "the outage was counted in /metrics");
    for n in [&a, &b] {
        let log = n.log_text();
        assert!(!log.contains("panicked"), "{log}");
        assert!(log.contains("WARN"), "the outage was logged");
    }
    let nodes = env.json(&["nodes", "list", "--json"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["stopped_at"].is_null()),
        "both nodes survived: {nodes}"
    );
}
