//! The ledger stays true at its edges: a killed node takes every process of its executions
//! with it, a dead owner's run reads as such everywhere, a node frozen inside a transaction
//! cannot hold a row from recovery, a paused node rejoins instead of dying, and without any
//! fault nothing is ever refused.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A POST with a JSON body; returns (status, body).
fn http_post_json(base: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Issue: a node killed with SIGKILL left grandchildren (and anything that left the group
/// with setsid) running until its next start, and `cleanup --apply` then settled the run while
/// they ran on. Now its supervisors kill them within a second, and cleanup says what it found.
#[test]
fn every_process_of_a_killed_node_dies_within_a_second() {
    let env = Env::new(
        "",
        r#"[[job]]
name = "tree"
command = "sh -c 'echo $$ > grandchild.pid; exec sleep 600' & setsid sh -c 'echo $$ > escaped.pid; exec sleep 601' & echo start; wait"
heartbeat_timeout = "2s"
retry = { max_attempts = 2, backoff = "100ms" }
"#,
    );
    let mut server = env.serve();
    let id = env.trigger("tree");
    env.wait_state(id, "running", Duration::from_secs(10));
    let pids = [env.pid_file("grandchild.pid"), env.pid_file("escaped.pid")];
    assert!(pids.iter().all(|p| alive(*p)));
    let killed_at = Instant::now();
    server.kill9();
    while pids.iter().any(|p| alive(*p)) && killed_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed_at.elapsed();
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "processes outlived their node: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert!(
        took < Duration::from_secs(1),
        "gone {took:?} after the node's SIGKILL"
    );

    // The operator's cleanup on this host settles the run and says it found nothing alive.
    std::thread::sleep(Duration::from_millis(2500));
    let out = env.run(&["cleanup", "--stale-after", "2s", "--apply"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let e = env.execution(id);
    assert_eq!(
        (e["status"].as_str(), e["reason"].as_str()),
        (Some("timed_out"), Some("manual_cleanup"))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no surviving process was found"),
        "{e}"
    );
    assert!(stdout(&out).contains("no surviving process was found"));
}

/// Issue: 15 s after `kill -9` of a single node, `runs list --running` and `jobs list` still
/// said plainly "running". Every read surface marks a running execution whose lease expired.
#[test]
fn a_dead_owners_run_reads_as_lease_expired() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"long\"\ncommand = \"sleep 600\"\nheartbeat_timeout = \"1s\"\n",
    );
    let mut server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    server.kill9();
    std::thread::sleep(Duration::from_millis(2500));

    let table = stdout(&env.run(&["runs", "list", "--running"]));
    assert!(
        table.contains("running — no heartbeat for") && table.contains("(lease expired)"),
        "{table}"
    );
    let json = &env.runs(&["--running"])[0];
    assert_eq!(json["status"], "running", "the state itself is unchanged");
    assert_eq!(json["lease_expired"], true, "{json}");
    assert!(json["heartbeat_age_ms"].as_u64().unwrap() >= 2000, "{json}");
    assert!(
        json["status_text"]
            .as_str()
            .unwrap()
            .starts_with("running — no heartbeat for"),
        "{json}"
    );
    let jobs = stdout(&env.run(&["jobs", "list"]));
    assert!(jobs.contains("(lease expired)"), "{jobs}");
    let jobs = env.json(&["jobs", "list", "--json"]);
    assert_eq!(jobs[0]["lease_expired"], true, "{jobs}");
    let show = stdout(&env.run(&["runs", "show", &id.to_string()]));
    assert!(show.contains("(lease expired)"), "{show}");
}

/// A silent remote owner on an unknown host: cleanup settles its run and says in the record
/// that its process may still be alive there (invariant 11).
#[test]
fn cleanup_says_where_an_unreachable_process_may_still_run() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"remote\"\ncommand = \"sleep 600\"\nqueue = \"far\"\nheartbeat_timeout = \"1h\"\n",
    );
    let server = env.serve();
    let id = env.trigger("remote");
    let (code, body) = http_post_json(
        &server.api(),
        "/api/worker/claim",
        r#"{"worker_id": "ghost-on-far-host", "queues": ["far"], "batch": 1}"#,
    );
    assert_eq!(code, 200, "{body}");
    env.wait_state(id, "running", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1200));
    let out = env.run(&["cleanup", "--stale-after", "1s", "--apply"]);
    assert!(out.status.success());
    let e = env.execution(id);
    assert_eq!(e["reason"], "manual_cleanup");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("may still be alive on the host of worker 'ghost-on-far-host'"),
        "{message}"
    );
}

/// Invariant 12: without any fault, no report is ever refused. Quick runs make the owner's
/// batched heartbeat race its own completions all the time, locally and through a worker.
#[test]
fn without_a_fault_nothing_is_refused() {
    let env = Env::new(
        "max_running = 16",
        r#"[[job]]
name = "quick"
command = "true"
overlap = "allow"
heartbeat_timeout = "1s"
[[job]]
name = "remote"
command = "true"
overlap = "allow"
queue = "q"
heartbeat_timeout = "1s"
"#,
    );
    let server = env.serve();
    let api = server.api();
    let n = 400;
    for job in ["quick", "remote"] {
        for _ in 0..n / 50 {
            let mut children: Vec<_> = (0..50)
                .map(|_| {
                    std::process::Command::new("curl")
                        .args(["-s", "-o", "/dev/null", "-X", "POST"])
                        .arg(format!("{api}/api/jobs/{job}/trigger"))
                        .spawn()
                        .unwrap()
                })
                .collect();
            for c in &mut children {
                c.wait().unwrap();
            }
        }
    }
    let mut worker = std::process::Command::new(BIN)
        .args([
            "worker",
            "--server",
            &api,
            "--queue",
            "q",
            "--concurrency",
            "8",
        ])
        .arg("--log-dir")
        .arg(env.path("wlogs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(120), "every run to complete", || {
        env.runs(&["--status", "completed"]).len() >= 2 * n
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        Signal::SIGTERM,
    );
    let _ = worker.wait();
    let metrics = http_get(&api, "/metrics");
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("jobward_stale_reports_refused_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(refused, 0.0, "refusals counted without a fault");
    let refused_events: i64 = rusqlite::Connection::open(env.path("ledger.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refused_events, 0, "refused events without a fault");
    for run in env.runs(&[]).iter().take(50) {
        let show = env.show(run["id"].as_i64().unwrap());
        assert!(
            show["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["kind"] != "refused"),
            "{show}"
        );
    }
    assert!(
        !server.log_text().contains("lease lost"),
        "a node logged a lost lease without a fault"
    );
}

/// Issue: a node SIGSTOPped inside a completion transaction kept its row lock; every other
/// node's reaper skipped the row for as long as the freeze lasted. PostgreSQL now ends such a
/// session after `pg_idle_in_transaction_timeout`, so the row is settled within the lease
/// plus that plus one tick, while the holder is still frozen.
#[test]
fn a_node_frozen_inside_a_transaction_cannot_hold_a_row_from_recovery() {
    let (env, _schema) = Env::postgres(
        "pg_idle_in_transaction_timeout = \"2s\"",
        "[[job]]\nname = \"short\"\ncommand = \"sleep 1\"\n",
    );
    // Node a completes inside a transaction that stays open (its row lock held) for 20 s.
    let a = {
        let log = env.path("serve-a.log");
        let child = env
            .cmd(&["serve", "--node-name", "a"])
            .env("JOBWARD_LOG", "info")
            .env("FAILPOINTS", "complete_before_commit=1*sleep(20000)")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Server {
            child: Some(child),
            log,
        };
        s.wait_log("jobward node serving", Duration::from_secs(20));
        s
    };
    let id = env.trigger("short");
    env.wait_state(id, "running", Duration::from_secs(10));
    let _b = env.serve_as(Some("b"));
    // Wait until a's completion transaction has written and sits open, then freeze a.
    wait_until(
        Duration::from_secs(15),
        "a's open completion transaction",
        || {
            let out = std::process::Command::new("psql")
                .arg(pg_admin())
                .args([
                    "-tAc",
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' \
                 AND backend_xid IS NOT NULL AND application_name = 'jobward'",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() != "0"
        },
    );
    let frozen_at = chrono::Utc::now();
    a.signal(Signal::SIGSTOP);
    let e = env.wait_for(
        id,
        Duration::from_secs(15),
        "settled while a is frozen",
        |e| e["status"] != "running",
    );
    let settled_after = parse_time(&e["finished_at"]) - frozen_at;
    assert!(
        e["reason"] == "heartbeat_timeout" || e["reason"] == "node_lost",
        "{e}"
    );
    // Node lease 3 s + idle-in-transaction timeout 2 s + a tick, with room for a's last
    // heartbeat having been up to a second before the freeze.
    assert!(
        settled_after < chrono::TimeDelta::milliseconds(3000 + 2000 + 1500),
        "settled {settled_after:?} after the freeze: {e}"
    );
    // The event says when the change happened, not when some transaction began.
    let events = env.show(id)["events"].as_array().unwrap().clone();
    let end = events
        .iter()
        .rev()
        .find(|ev| ev["kind"] == "transition")
        .unwrap();
    let skew = parse_time(&end["at"]) - parse_time(&e["finished_at"]);
    assert!(skew.num_milliseconds().abs() < 1000, "{end} vs {e}");
    a.signal(Signal::SIGCONT);
    // a's commit cannot land: its session was ended; its retried completion is refused.
    wait_until(
        Duration::from_secs(30),
        "a's late completion refused",
        || {
            env.show(id)["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|ev| ev["kind"] == "refused")
        },
    );
    let after = env.execution(id);
    assert_eq!(
        (after["status"].clone(), after["reason"].clone()),
        (e["status"].clone(), e["reason"].clone()),
        "the frozen node's report changed nothing"
    );
}

/// Issue: a node frozen longer than its node lease woke up, killed its children (right) and
/// then exited, saying a newer incarnation had taken over (none had). It now kills what it no
/// longer owns and rejoins as a new incarnation, ready for work.
#[test]
fn a_node_paused_past_its_lease_rejoins_as_a_new_incarnation() {
    let (env, _schema) = Env::postgres(
        "",
        "[[job]]\nname = \"long\"\ncommand = \"echo $$ > long.pid; exec sleep 600\"\n[[job]]\nname = \"after\"\ncommand = \"echo ran\"\n",
    );
    let a = env.serve_as(Some("a"));
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("long.pid");
    let mut b = env.serve_as(Some("b"));
    a.signal(Signal::SIGSTOP);
    let e = env.wait_state(id, "failed", Duration::from_secs(15));
    assert_eq!(e["reason"], "node_lost", "{e}");
    // b settled it; the process, on this host and marked as a's, was killed by b.
    wait_until(
        Duration::from_secs(5),
        "the lost node's child killed",
        || !alive(child),
    );
    a.signal(Signal::SIGCONT);
    a.wait_log("rejoined as a new incarnation", Duration::from_secs(15));
    let nodes = env.json(&["nodes", "list", "--json"]);
    let named_a: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == "a")
        .collect();
    assert_eq!(named_a.len(), 2, "{nodes}");
    assert!(
        named_a.iter().any(|n| n["stopped_at"].is_null()),
        "a's new incarnation is live: {nodes}"
    );
    assert!(
        named_a.iter().any(|n| n["stop_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("lost"))),
        "a's old incarnation is recorded as lost: {nodes}"
    );
    // Node a still serves: with b gone, a runs the next job.
    b.kill9();
    let next = env.trigger("after");
    let done = env.wait_state(next, "completed", Duration::from_secs(15));
    let live_a = named_a.iter().find(|n| n["stopped_at"].is_null()).unwrap()["id"].clone();
    assert_eq!(done["node_id"], live_a, "{done}");
    assert!(!a.log_text().contains("could not rejoin"));
}

/// Issue: a PostgreSQL outage alone (every node cut off at once, no restart) got nodes
/// declared lost when it ended: whichever node reached the database first settled the
/// others. Leases now count again from the moment the database is back, for every node alike.
#[test]
fn every_node_cut_off_from_postgres_at_once_loses_nothing() {
    let proxy = Cuttable::to(&pg_address());
    let (env, _schema) = Env::postgres_through(
        &proxy,
        "",
        r#"[[job]]
name = "work"
command = "sleep 10; echo finished"
overlap = "allow"
"#,
    );
    let a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    let ids: Vec<i64> = (0..4).map(|_| env.trigger("work")).collect();
    for id in &ids {
        env.wait_state(*id, "running", Duration::from_secs(15));
    }
    proxy.cut(true);
    std::thread::sleep(Duration::from_secs(6));
    proxy.cut(false);
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
    assert_eq!(nodes.len(), 2, "no node had to rejoin: {nodes:?}");
    assert!(
        nodes.iter().all(|n| n["stopped_at"].is_null()),
        "no node was declared lost: {nodes:?}"
    );
    for n in [&a, &b] {
        assert!(!n.log_text().contains("declared lost"), "{}", n.log_text());
    }
}

/// Found by the chaos run: a node cut off inside its own heartbeat held the one liveness row
/// until PostgreSQL ended its session (5 s), every other node's heartbeat queued behind it,
/// their leases ran out, and healthy nodes were declared lost (by themselves). A heartbeat
/// never waits for that row now, and a node never declares itself lost.
#[test]
fn a_session_stuck_on_the_liveness_row_costs_no_healthy_node() {
    let (env, schema) = Env::postgres(
        "",
        "[[job]]\nname = \"work\"\ncommand = \"sleep 12\"\noverlap = \"allow\"\n",
    );
    let a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    let ids: Vec<i64> = (0..4).map(|_| env.trigger("work")).collect();
    for id in &ids {
        env.wait_state(*id, "running", Duration::from_secs(15));
    }
    // A session that takes the liveness row and sits on it for 4.5 s: longer than a lease (3 s),
    // shorter than the lock timeout (5 s), so heartbeats that queue behind it wait it out.
    let admin = pg_admin();
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options=-c%20search_path%3D{}", schema.0);
    let out = std::process::Command::new("psql")
        .arg(&url)
        .args([
            "-q",
            "-c",
            "BEGIN",
            "-c",
            "SELECT 1 FROM ledger_liveness FOR UPDATE",
            "-c",
            "SELECT pg_sleep(4.5)",
            "-c",
            "COMMIT",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        let e = env.wait_for(*id, Duration::from_secs(30), "terminal", |e| {
            e["status"] != "running" && e["status"] != "queued"
        });
        assert_eq!(
            (e["status"].as_str(), e["attempt"].as_u64()),
            (Some("completed"), Some(1)),
            "a healthy node's run was settled: {e}"
        );
    }
    let nodes = env.json(&["nodes", "list", "--json"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["stopped_at"].is_null()),
        "no healthy node was declared lost: {nodes}"
    );
    for n in [&a, &b] {
        assert!(!n.log_text().contains("declared lost"), "{}", n.log_text());
    }
}
