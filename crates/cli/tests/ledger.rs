//! Scheduling, overlap, concurrency, audit and bad input, through the real binary.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Seed 002: the slot and the record are one. 50 triggers from 50 processes at once; the
/// limit of 2 is never exceeded, by the processes' own account and by the ledger's.
#[test]
fn a_concurrency_limit_holds_under_50_concurrent_triggers() {
    let env = Env::new(
        "max_running = 64",
        r#"
[concurrency]
reports = 2
[[job]]
name = "report"
command = "echo start >> spans.txt; sleep 0.2; echo end >> spans.txt"
overlap = "allow"
concurrency_key = "reports"
queue_timeout = "5m"
"#,
    );
    let _server = env.serve();
    let children: Vec<_> = (0..50)
        .map(|_| {
            env.cmd(&["jobs", "trigger", "report"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    wait_until(Duration::from_secs(60), "all 50 to complete", || {
        let runs = env.runs(&["--job", "report"]);
        runs.len() == 50 && runs.iter().all(|r| r["status"] == "completed")
    });
    let spans = std::fs::read_to_string(env.path("spans.txt")).unwrap();
    let (mut now, mut max) = (0i32, 0i32);
    for line in spans.lines() {
        now += if line == "start" { 1 } else { -1 };
        max = max.max(now);
    }
    assert_eq!(spans.lines().filter(|l| *l == "start").count(), 50);
    assert!(max <= 2, "{max} ran at once with a limit of 2");
    assert_eq!(max, 2, "the limit is used, not just respected");
    // The ledger agrees: no instant has more than 2 running intervals.
    let runs = env.runs(&["--job", "report"]);
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for r in &runs {
        edges.push((parse_time(&r["started_at"]), 1));
        edges.push((parse_time(&r["finished_at"]), -1));
    }
    edges.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    assert!(max <= 2, "the ledger shows {max} running at once");
    assert!(env.run(&["audit"]).status.success());
}

/// Seed 002, gap 2: a skip is a terminal record with its reason, never limbo.
#[test]
fn overlap_skip_writes_terminal_skipped_records_naming_the_blocker() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"slow\"\ncommand = \"sleep 3\"\nevery = \"1s\"\noverlap = \"skip\"\n",
    );
    let _server = env.serve();
    wait_until(Duration::from_secs(10), "two skipped records", || {
        env.runs(&["--status", "skipped"]).len() >= 2
    });
    let running = env.runs(&["--running"]);
    let blocker = running[0]["number"].as_i64().unwrap();
    for s in env.runs(&["--status", "skipped"]) {
        assert_eq!(s["reason"], "overlap");
        assert!(s["finished_at"].is_string(), "skipped is terminal");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains(&format!("run #{blocker}")),
            "{s}"
        );
    }
}

/// Invariant 9 and the misfire policy: every instant fires once; downtime is one record.
#[test]
fn instants_fire_once_and_a_downtime_yields_one_catch_up_or_one_skip() {
    let env = Env::new(
        "shutdown_grace = \"1s\"",
        r#"
[defaults]
misfire_grace = "1s"
[[job]]
name = "catchup"
command = "true"
every = "1s"
misfire = "run_once"
[[job]]
name = "skipper"
command = "true"
every = "1s"
misfire = "skip"
"#,
    );
    let mut server = env.serve();
    std::thread::sleep(Duration::from_secs(3));
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)), Some(0));
    let before = env.runs(&[]);
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for r in &before {
        *seen
            .entry((
                r["job"].as_str().unwrap().into(),
                r["scheduled_for"].to_string(),
            ))
            .or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "an instant fired twice: {seen:?}"
    );
    assert!(before.len() >= 4);

    std::thread::sleep(Duration::from_secs(5));
    let _server = env.serve();
    std::thread::sleep(Duration::from_millis(500));
    let known: Vec<i64> = before.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let after: Vec<_> = env
        .runs(&[])
        .into_iter()
        .filter(|r| !known.contains(&r["id"].as_i64().unwrap()))
        .collect();
    let catch_ups: Vec<_> = after
        .iter()
        .filter(|r| r["job"] == "catchup" && r["trigger"] == "catch_up")
        .collect();
    assert_eq!(
        catch_ups.len(),
        1,
        "one catch-up run, not a storm: {after:?}"
    );
    let missed: Vec<_> = after
        .iter()
        .filter(|r| r["job"] == "skipper" && r["reason"] == "missed_schedule")
        .collect();
    assert_eq!(missed.len(), 1, "one skip record: {after:?}");
    let msg = missed[0]["message"].as_str().unwrap();
    assert!(msg.contains("instants between"), "{msg}");
    let n: u64 = msg.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        (4..=7).contains(&n),
        "about 5 instants were missed, the record says {n}: {msg}"
    );
    let events = env.show(catch_ups[0]["id"].as_i64().unwrap())["events"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(events.contains("one catch-up run for"), "{events}");
}

#[test]
fn audit_finds_a_hand_corrupted_row_and_repair_applies_the_reaper_rules() {
    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    assert!(env.run(&["migrate"]).status.success());
    // A node that syncs the jobs, then stops; the execution stays queued.
    let mut server = env.serve();
    server.signal(Signal::SIGTERM);
    server.wait(Duration::from_secs(10));
    let id = env.trigger("a");
    assert!(env.run(&["audit"]).status.success());

    let c = rusqlite::Connection::open(env.path("ledger.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let past = chrono::Utc::now().timestamp_millis() - 3_600_000;
    c.execute(
        "UPDATE executions SET start_deadline = ?1 WHERE id = ?2",
        [past, id],
    )
    .unwrap();
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "invariant 2: execution {id}: queued past its start deadline"
        )),
        "{text}"
    );
    let repair = env.run(&["audit", "--repair"]);
    assert_eq!(
        repair.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&repair.stdout)
    );
    assert_eq!(env.execution(id)["reason"], "queue_timeout");

    // Corruption the schema would refuse, written with its checks switched off.
    c.execute_batch(
        "PRAGMA ignore_check_constraints = ON; DROP TRIGGER executions_terminal_is_final;",
    )
    .unwrap();
    c.execute("UPDATE executions SET message = NULL WHERE id = ?1", [id])
        .unwrap();
    let out = env.run(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["violations"][0]["invariant"], 1);
    assert_eq!(v["violations"][0]["execution_id"], id);
}

#[test]
fn health_reports_the_seed_001_figures_and_warns() {
    let env = Env::new(
        "",
        "[health]\nlong_running_after = \"1s\"\nwarn_long_running = 1\n[[job]]\nname = \"long\"\ncommand = \"sleep 30\"\noverlap = \"allow\"\n",
    );
    let _server = env.serve();
    let v = env.json(&["health", "--json"]);
    assert_eq!(v["status"], "healthy");
    for k in [
        "running_executions",
        "queued_executions",
        "long_running_executions",
        "stale_executions",
        "recent_executions_24h",
        "timestamp",
    ] {
        assert!(!v["metrics"][k].is_null(), "health lacks {k}: {v}");
    }
    let a = env.trigger("long");
    let b = env.trigger("long");
    env.wait_state(a, "running", Duration::from_secs(10));
    env.wait_state(b, "running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200));
    let out = env.run(&["health", "--json"]);
    assert_eq!(out.status.code(), Some(1), "warning exits 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "warning");
    assert_eq!(v["metrics"]["long_running_executions"], 2);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("2 executions have been running for more than 1s")
    );
}

#[test]
fn runs_list_json_has_the_documented_fields_and_jobs_list_derives_status() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"ok\"\ncommand = \"echo fine\"\n[[job]]\nname = \"bad\"\ncommand = \"exit 4\"\n",
    );
    let _server = env.serve();
    let ok = env.trigger("ok");
    let bad = env.trigger("bad");
    env.wait_state(ok, "completed", Duration::from_secs(10));
    let e = env.wait_state(bad, "failed", Duration::from_secs(10));
    assert_eq!(
        (e["reason"].as_str(), e["exit_code"].as_i64()),
        (Some("exit_code"), Some(4))
    );
    for r in env.runs(&[]) {
        for k in [
            "id",
            "job",
            "number",
            "attempt",
            "status",
            "queued_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "reason",
            "message",
        ] {
            assert!(r.get(k).is_some(), "runs list --json lacks {k}: {r}");
        }
    }
    let jobs = env.json(&["jobs", "list", "--json"]);
    let status: HashMap<&str, &str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["name"].as_str().unwrap(), j["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status["ok"], "completed");
    assert_eq!(status["bad"], "failed");
    let show = env.run(&["runs", "show", &ok.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("queued -> running")
            && text.contains("running -> completed")
            && text.contains("fine"),
        "{text}"
    );
    let wait = env.run(&["jobs", "trigger", "bad", "--wait"]);
    assert_eq!(
        wait.status.code(),
        Some(1),
        "--wait exits 1 unless the run completed"
    );
}

fn assert_input_error(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2 for {needle:?}: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"a\"\ncommand = \"true\"\nschedule = \"0 0 25 * * *\"\n",
    );
    let out = env.run(&["serve"]);
    assert_input_error(&out, "job 'a': field 'schedule': invalid cron pattern");
    assert!(
        !env.path("ledger.db").exists(),
        "a bad config wrote a database"
    );

    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("afile"), "").unwrap();
    let bad_db = format!("sqlite://{}/afile/x.db", other.path().display());
    assert_input_error(
        &env.run(&["--db", &bad_db, "serve"]),
        "cannot open database",
    );
    assert_input_error(&env.run(&["runs", "list"]), "does not exist");
    assert!(
        !env.path("ledger.db").exists(),
        "a read command created the database"
    );
    assert_input_error(
        &env.cmd(&["serve"])
            .arg("--config")
            .arg("/nonexistent/x.toml")
            .output()
            .unwrap(),
        "cannot read config",
    );

    assert!(env.run(&["migrate"]).status.success());
    assert_input_error(
        &env.run(&["runs", "show", "999"]),
        "execution 999 does not exist",
    );
    assert_input_error(
        &env.run(&["runs", "list", "--stale-after", "10x"]),
        "invalid duration '10x'",
    );
    assert_input_error(&env.run(&["runs", "list", "--limit=-1"]), "--limit");
    assert_input_error(
        &env.run(&["runs", "list", "--status", "stuck"]),
        "unknown state 'stuck'",
    );
    assert_input_error(
        &env.run(&["cleanup", "--stale-after", "0s"]),
        "longer than zero",
    );
    assert_input_error(
        &env.run(&["jobs", "trigger", "nope"]),
        "job 'nope' does not exist",
    );
    let out = env.run(&["runs", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));

    // A database of a newer schema is refused and left as it was.
    rusqlite::Connection::open(env.path("ledger.db"))
        .unwrap()
        .execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (999, 'future', 1, x'00', 0)",
            [],
        )
        .unwrap();
    assert_input_error(&env.run(&["serve"]), "newer than this jobward");
    assert_input_error(&env.run(&["runs", "list"]), "newer than this jobward");
}

#[test]
fn a_second_node_with_the_same_name_is_refused_while_the_first_lives() {
    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    let _first = env.serve();
    let out = env.run(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another jobward node named 'test-node' is running"),
        "{err}"
    );
}
