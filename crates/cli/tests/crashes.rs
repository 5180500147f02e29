//! The post-mortems as tests: children that die, hang, or outlive a killed jobward; a frozen
//! jobward whose late reports must not rewrite the ledger; a graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: &str = r#"
[[job]]
name = "long"
command = "sleep 300 & echo $! > child.pid; echo $$ > sh.pid; wait"
"#;

/// Seed 001/003: the process died; the ledger must say so at once, not hours later.
#[test]
fn a_child_killed_with_sigkill_is_failed_with_its_signal_at_once() {
    let env = Env::new("", LONG);
    let _server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let sh = env.pid_file("sh.pid");
    let killed_at = chrono::Utc::now();
    kill(Pid::from_raw(sh), Signal::SIGKILL).unwrap();
    let e = env.wait_state(id, "failed", Duration::from_secs(10));
    assert_eq!(e["reason"], "signal");
    assert_eq!(e["signal"], 9);
    assert!(e["message"].as_str().unwrap().contains("SIGKILL"), "{e}");
    let latency = parse_time(&e["finished_at"]) - killed_at;
    assert!(
        latency < chrono::TimeDelta::seconds(1),
        "recorded {latency:?} after the kill: not noticed at once"
    );
    let child = env.pid_file("child.pid");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(child), "the rest of the process group was killed");
}

#[test]
fn a_hanging_child_is_timed_out_at_its_run_timeout_and_its_group_is_gone() {
    let env = Env::new(
        "",
        r#"
[[job]]
name = "hang"
command = "trap '' TERM; sleep 300 & echo $! > child.pid; wait; wait"
run_timeout = "2s"
kill_grace = "1s"
"#,
    );
    let _server = env.serve();
    let id = env.trigger("hang");
    let started = env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    let e = env.wait_state(id, "timed_out", Duration::from_secs(15));
    assert_eq!(e["reason"], "run_timeout");
    let ran = parse_time(&e["finished_at"]) - parse_time(&started["started_at"]);
    assert!(
        ran >= chrono::TimeDelta::seconds(2) && ran < chrono::TimeDelta::seconds(5),
        "ran {ran:?}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("SIGKILL after 1s grace"),
        "SIGTERM was trapped: {e}"
    );
    assert!(!alive(child), "the whole process group is gone");
}

/// Seed 004 and invariant 8: after `kill -9 jobward`, the restarted node settles what its
/// previous incarnation ran before it schedules anything, and kills what survived of it.
#[test]
fn jobward_killed_then_restarted_settles_its_orphan_before_any_new_fire() {
    let env = Env::new(
        "",
        &format!(
            "{LONG}\n[[job]]\nname = \"tick\"\ncommand = \"true\"\nevery = \"1s\"\n[defaults]\nheartbeat_timeout = \"30s\"\n"
        ),
    );
    let mut server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    let killed_at = Instant::now();
    server.kill9();
    while alive(child) && killed_at.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(1),
        "the grandchild must die within 1 s of its jobward's SIGKILL (its supervisor kills the group), took {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        env.execution(id)["status"],
        "running",
        "nothing settles it while no node runs"
    );

    let _server = env.serve();
    let e = env.execution(id);
    assert_eq!(e["status"], "failed", "settled during startup: {e}");
    assert_eq!(e["reason"], "node_restarted");
    assert!(e["finished_at"].is_string());
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no surviving process was found"),
        "its processes died with the node, not at the restart: {e}"
    );

    // Before any new fire: the recovery event precedes every execution the new incarnation created.
    let events = env.show(id)["events"].as_array().unwrap().clone();
    let settled = events
        .iter()
        .find(|ev| ev["reason"] == "node_restarted")
        .expect("a node_restarted event");
    let settled_id = settled["id"].as_i64().unwrap();
    let nodes = env.json(&["nodes", "list", "--json"]);
    let new_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["stopped_at"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for run in env.runs(&["--job", "tick"]) {
        let created = &env.show(run["id"].as_i64().unwrap())["events"][0];
        if created["actor"].as_str().unwrap().contains(&new_node) {
            assert!(
                created["id"].as_i64().unwrap() > settled_id,
                "a fire came before startup recovery: {created}"
            );
        }
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let running = env.runs(&["--running"]);
        if running.is_empty() {
            break;
        }
        assert!(running.iter().all(|r| r["job"] == "tick"), "{running:?}");
        assert!(
            Instant::now() < until,
            "runs list --running never emptied: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Invariant 4 across processes: a frozen node loses its lease to an operator's cleanup; when
/// it wakes up, its late heartbeat and completion are refused and logged, and it kills its child.
#[test]
fn a_frozen_node_cannot_overwrite_what_cleanup_decided() {
    let env = Env::new(
        "",
        &format!("{LONG}\n[defaults]\nheartbeat_timeout = \"2s\"\n"),
    );
    let server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    server.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));

    // A dry run changes nothing.
    // runtime_ms is derived from the clock, not stored: leave it out of the comparison.
    let stored = |mut v: serde_json::Value| {
        let e = v["execution"].as_object_mut().unwrap();
        for derived in ["runtime_ms", "heartbeat_age_ms", "status_text"] {
            e.remove(derived);
        }
        v
    };
    let before = stored(env.show(id));
    let dry = env.run(&["cleanup", "--stale-after", "1s"]);
    assert!(dry.status.success());
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        out.contains("WOULD BECOME") && out.contains("dry run: 1 execution(s) would change"),
        "{out}"
    );
    assert_eq!(
        stored(env.show(id)),
        before,
        "cleanup without --apply changed the ledger"
    );

    let applied = env.run(&["cleanup", "--stale-after", "1s", "--apply"]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        String::from_utf8_lossy(&applied.stdout)
            .contains("applied: 1 changed to timed_out (manual_cleanup)")
    );
    let settled = env.execution(id);
    assert_eq!(
        (settled["status"].as_str(), settled["reason"].as_str()),
        (Some("timed_out"), Some("manual_cleanup"))
    );
    // Cleanup ran on the host: it killed the frozen node's child (proven by its recorded pid
    // and start time) before it recorded the execution as ended, and says so.
    assert!(
        !alive(child),
        "the ledger says timed_out while the frozen node's child still runs"
    );
    let message = settled["message"].as_str().unwrap();
    assert!(
        message.contains("surviving process(es) of its group"),
        "{message}"
    );

    server.signal(Signal::SIGCONT);
    // Give the completion report time to arrive and be refused.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let show = env.show(id);
        let refused: Vec<_> = show["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "refused")
            .cloned()
            .collect();
        if refused
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("completion"))
        {
            assert!(refused.iter().all(|e| e["reason"] == "lease_lost"));
            break;
        }
        assert!(
            Instant::now() < until,
            "no refused completion in the event log: {show}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        env.execution(id),
        settled,
        "the late reports changed nothing"
    );
}

/// Invariant 10: SIGTERM stops intake, lets work finish within the grace, then cancels the rest.
#[test]
fn graceful_shutdown_cancels_what_outlives_the_grace() {
    let env = Env::new(
        "shutdown_grace = \"1s\"",
        &format!(
            "{LONG}\n[[job]]\nname = \"quick\"\ncommand = \"sleep 0.3\"\n[defaults]\nkill_grace = \"1s\"\n"
        ),
    );
    let mut server = env.serve();
    let long = env.trigger("long");
    let quick = env.trigger("quick");
    env.wait_state(long, "running", Duration::from_secs(10));
    env.wait_state(quick, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(15)), Some(0));
    assert_eq!(
        env.execution(quick)["status"],
        "completed",
        "finished within the grace"
    );
    let e = env.execution(long);
    assert_eq!(
        (e["status"].as_str(), e["reason"].as_str()),
        (Some("cancelled"), Some("shutdown")),
        "{e}"
    );
    assert!(!alive(child));
    assert!(env.runs(&["--running"]).is_empty(), "nothing is left live");
    let nodes = env.json(&["nodes", "list", "--json"]);
    assert!(nodes[0]["stopped_at"].is_string());
}

#[test]
fn runs_cancel_from_another_process_stops_a_running_execution() {
    let env = Env::new("", &format!("{LONG}\n[defaults]\nkill_grace = \"1s\"\n"));
    let _server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    let out = env.run(&["runs", "cancel", &id.to_string()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is cancelled"), "{text}");
    let e = env.execution(id);
    assert_eq!(
        (e["status"].as_str(), e["reason"].as_str()),
        (Some("cancelled"), Some("cancel_requested"))
    );
    assert!(!alive(child));
}
