//! Jobs defined at run time through the API and the CLI, delayed runs, priorities and
//! backfill: end to end against a real `jobward serve`, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const READ: &str = "read-secret-0123456789";
const OPERATE: &str = "operate-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const WORKER: &str = "worker-secret-0123456789";

fn tokens() -> String {
    [
        ("reader", "read", READ),
        ("ops", "operate", OPERATE),
        ("root", "admin", ADMIN),
        ("w", "worker", WORKER),
    ]
    .iter()
    .map(|(n, r, s)| format!("[[token]]\nname = \"{n}\"\nrole = \"{r}\"\nsecret = \"{s}\"\n"))
    .collect()
}

const FILE_JOB: &str = "[[job]]\nname = \"from-file\"\ncommand = \"true\"\n";

fn lifecycle(env: &Env) {
    let server = env.serve();
    let api = server.api();
    let call =
        |m: &str, p: &str, t: Option<&str>, b: Option<Value>| http_json(m, &api, p, t, b.as_ref());

    // Roles: defining a job needs admin.
    let def =
        json!({"command": "echo made-by-api", "overlap": "allow", "retry": {"max_attempts": 2}});
    for t in [READ, OPERATE, WORKER] {
        let (s, v) = call("PUT", "/api/jobs/made", Some(t), Some(def.clone()));
        assert_eq!(s, 403, "{v}");
    }
    assert_eq!(
        call("PUT", "/api/jobs/made", None, Some(def.clone())).0,
        401
    );
    // One clear error per bad field, and nothing is created.
    let (s, v) = call(
        "PUT",
        "/api/jobs/made",
        Some(ADMIN),
        Some(json!({"command": "true", "run_timeout": "soon"})),
    );
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("field 'run_timeout'"), "{msg}");
    let (s, v) = call(
        "PUT",
        "/api/jobs/made",
        Some(ADMIN),
        Some(json!({"command": "true", "schedule": "61 * * * *"})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("field 'schedule'")
    );
    assert_eq!(call("GET", "/api/jobs/made", Some(READ), None).0, 404);

    // Create, then replace.
    let (s, v) = call("PUT", "/api/jobs/made", Some(ADMIN), Some(def.clone()));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["created"], true);
    assert_eq!(v["job"]["source"], "api");
    let (s, v) = call("PUT", "/api/jobs/made", Some(ADMIN), Some(def.clone()));
    assert_eq!((s, &v["created"]), (200, &json!(false)), "{v}");
    // The file's jobs are the file's.
    let (s, v) = call(
        "PUT",
        "/api/jobs/from-file",
        Some(ADMIN),
        Some(json!({"command": "false"})),
    );
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobward.toml"),
        "names the file: {v}"
    );
    assert_eq!(
        call("DELETE", "/api/jobs/from-file", Some(ADMIN), None).0,
        409
    );
    // A change: recorded with who, before and after.
    let (s, v) = call(
        "PATCH",
        "/api/jobs/made",
        Some(ADMIN),
        Some(json!({"run_timeout": "5m", "priority": 3})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["definition"]["run_timeout"], "5m");
    let (_, d) = call("GET", "/api/jobs/made", Some(READ), None);
    let change = &d["changes"][0];
    assert_eq!(change["action"], "changed", "{d}");
    assert_eq!(change["actor"], "api:root");
    assert_eq!(change["before"]["run_timeout"], "1d");
    assert_eq!(change["after"]["run_timeout"], "5m");
    assert_eq!(change["after"]["priority"], 3);
    // The CLI and the dashboard say where it comes from.
    let list = env.json(&["jobs", "list", "--json"]);
    let source = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .map(|j| j["source"].clone())
    };
    assert_eq!(source("made"), Some(json!("api")));
    assert_eq!(source("from-file"), Some(json!("file")));

    // A delayed run starts not before run_at, and within a tick after it.
    let (s, v) = call(
        "POST",
        "/api/jobs/made/trigger",
        Some(OPERATE),
        Some(json!({"delay": "2s"})),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["execution"]["id"].as_i64().unwrap();
    let run_at = parse_time(&v["execution"]["run_at"]);
    assert!(
        v["execution"]["status_text"]
            .as_str()
            .unwrap()
            .starts_with("scheduled for"),
        "{v}"
    );
    let done = env.wait_state(id, "completed", Duration::from_secs(15));
    let started = parse_time(&done["started_at"]);
    assert!(
        started >= run_at,
        "started {started} before run_at {run_at}"
    );
    assert!(
        started - run_at < chrono::Duration::milliseconds(1500),
        "started {started}, more than a tick after run_at {run_at}"
    );

    // Delete: refused while it has a live run, then with cancel=true.
    let (_, v) = call(
        "POST",
        "/api/jobs/made/trigger",
        Some(OPERATE),
        Some(json!({"delay": "1h"})),
    );
    let later = v["execution"]["id"].as_i64().unwrap();
    // Moved while queued: still scheduled, for the new time.
    let (s, v) = call(
        "PATCH",
        &format!("/api/executions/{later}"),
        Some(OPERATE),
        Some(json!({"delay": "2h"})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(parse_time(&v["run_at"]) > run_at + chrono::Duration::minutes(100));
    let (s, v) = call("DELETE", "/api/jobs/made", Some(ADMIN), None);
    assert_eq!(s, 409, "{v}");
    assert_eq!(call("DELETE", "/api/jobs/made", Some(OPERATE), None).0, 403);
    let (s, v) = call("DELETE", "/api/jobs/made?cancel=true", Some(ADMIN), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cancelled"], json!([later]));
    assert_eq!(env.execution(later)["status"], "cancelled");
    let (s, _) = call("POST", "/api/jobs/made/trigger", Some(OPERATE), None);
    assert_eq!(s, 409, "a deleted job cannot be triggered");
    // Its history stays.
    assert_eq!(env.execution(id)["status"], "completed");

    // The CLI through the server: roles hold, the actor is the token's name.
    let via = |token: &str, args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--server", &api, "--token", token]);
        env.run(&full)
    };
    let out = via(READ, &["jobs", "trigger", "from-file"]);
    assert_eq!(out.status.code(), Some(1), "a read token may not trigger");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("role read"), "{err}");
    let out = via(OPERATE, &["jobs", "trigger", "from-file", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = env.show(e["id"].as_i64().unwrap())["events"].clone();
    assert_eq!(events[0]["actor"], "api:ops", "{events}");
    // jobs apply -f / delete through the server, admin only.
    let file = env.path("job.toml");
    std::fs::write(&file, "name = \"applied\"\nqueue = \"q\"\nevery = \"1h\"\n").unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(
        via(OPERATE, &["jobs", "apply", "-f", f]).status.code(),
        Some(1)
    );
    let out = via(ADMIN, &["jobs", "create", "-f", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        via(ADMIN, &["jobs", "create", "-f", f]).status.code(),
        Some(1),
        "create refuses a job that exists"
    );
    assert!(via(ADMIN, &["jobs", "apply", "-f", f]).status.success());
    let shown = via(READ, &["jobs", "show", "applied"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("defined in    the API"), "{text}");
    assert!(via(ADMIN, &["jobs", "delete", "applied"]).status.success());
}

#[test]
fn jobs_through_the_api_on_sqlite() {
    let env = Env::new("api_commands = true\n", &format!("{}{FILE_JOB}", tokens()));
    lifecycle(&env);
}

#[test]
fn jobs_through_the_api_on_postgres() {
    let (env, _schema) = Env::postgres("api_commands = true\n", &format!("{}{FILE_JOB}", tokens()));
    lifecycle(&env);
}

#[test]
fn commands_through_the_api_are_off_unless_the_operator_allows_them() {
    let env = Env::new("", &format!("{}{FILE_JOB}", tokens()));
    let server = env.serve();
    let api = server.api();
    let (s, v) = http_json(
        "PUT",
        &api,
        "/api/jobs/rm",
        Some(ADMIN),
        Some(&json!({"command": "rm -rf /tmp/x"})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api_commands")
    );
    // A handler job (a queue, no command) runs no command on jobward hosts.
    let (s, v) = http_json(
        "PUT",
        &api,
        "/api/jobs/send-report",
        Some(ADMIN),
        Some(&json!({"queue": "reports"})),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn a_high_priority_run_overtakes_a_backlog_and_the_backlog_still_runs() {
    let env = Env::new(
        "api_commands = true\n",
        &format!(
            "{}[[job]]\nname = \"work\"\ncommand = \"true\"\nqueue = \"bulk\"\noverlap = \"allow\"\n",
            tokens()
        ),
    );
    let server = env.serve();
    let api = server.api();
    let low: Vec<Value> = (0..1000)
        .map(|_| json!({"job": "work", "priority": -5}))
        .collect();
    let (s, v) = http_json(
        "POST",
        &api,
        "/api/triggers",
        Some(OPERATE),
        Some(&json!({ "triggers": low })),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = http_json(
        "POST",
        &api,
        "/api/jobs/work/trigger",
        Some(OPERATE),
        Some(&json!({"priority": 10})),
    );
    let urgent = v["execution"]["id"].as_i64().unwrap();
    let claim = |batch: u32| {
        let (s, v) = http_json(
            "POST",
            &api,
            "/api/worker/claim",
            Some(WORKER),
            Some(&json!({"worker_id": "w1", "queues": ["bulk"], "batch": batch})),
        );
        assert_eq!(s, 200, "{v}");
        v["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        claim(1),
        vec![urgent],
        "the newest, highest-priority run first"
    );
    // The backlog still runs: all of it, oldest first.
    let mut rest = Vec::new();
    loop {
        let got = claim(100);
        if got.is_empty() {
            break;
        }
        rest.extend(got);
    }
    assert_eq!(rest.len(), 1000);
    assert!(rest.windows(2).all(|w| w[0] < w[1]), "ties by age");
}

#[test]
fn backfill_through_two_nodes_fires_each_instant_once() {
    let (env, _schema) = Env::postgres(
        "",
        "[[job]]\nname = \"hourly\"\ncommand = \"true\"\nschedule = \"0 * * * *\"\noverlap = \"allow\"\n",
    );
    let a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    // Exactly ten whole hours in [from, to], wherever `now` falls.
    let to = chrono::Utc::now() - chrono::Duration::minutes(1);
    let from = to - chrono::Duration::hours(10) + chrono::Duration::seconds(1);
    let body = json!({"from": from.to_rfc3339(), "to": to.to_rfc3339()});
    let (apis, body2) = ([a.api(), b.api()], body.clone());
    let both: Vec<(u16, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = apis
            .iter()
            .map(|api| {
                let body = body2.clone();
                s.spawn(move || {
                    http_json("POST", api, "/api/jobs/hourly/backfill", None, Some(&body))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: usize = both
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 200, "{v}");
            v["created"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(created, 10, "ten missed hours: {both:?}");
    assert_eq!(
        both.iter()
            .map(|(_, v)| v["already"].as_u64().unwrap())
            .sum::<u64>(),
        10,
        "whichever ran second found every instant taken"
    );
    // Once more through the CLI: nothing new.
    let out = env.run(&[
        "jobs",
        "backfill",
        "hourly",
        "--from",
        body["from"].as_str().unwrap(),
        "--to",
        body["to"].as_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 run(s) created, 10 instant(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Only due instants can have been missed: a range into the future stops at now.
    let ahead = json!({
        "from": to.to_rfc3339(),
        "to": (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339(),
    });
    let (s, v) = http_json(
        "POST",
        &apis[0],
        "/api/jobs/hourly/backfill",
        None,
        Some(&ahead),
    );
    assert_eq!(s, 200, "{v}");
    let asked_at = chrono::Utc::now();
    for id in v["created"].as_array().unwrap() {
        let e = env.execution(id.as_i64().unwrap());
        assert!(parse_time(&e["scheduled_for"]) <= asked_at, "{e}");
    }
    let runs = env.runs(&["--job", "hourly"]);
    let mut instants: Vec<String> = runs
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap().to_string())
        .collect();
    instants.sort();
    instants.dedup();
    assert_eq!(instants.len(), runs.len(), "no instant twice");
}

#[test]
fn trigger_wait_follows_the_retry_chain_and_a_skip_has_its_own_exit_code() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"flaky\"\ncommand = \"test -f ok || { touch ok; exit 1; }\"\nretry = { max_attempts = 3, backoff = \"200ms\" }\n\
         [[job]]\nname = \"slow\"\ncommand = \"sleep 5\"\noverlap = \"skip\"\n",
    );
    let _server = env.serve();
    let out = env.run(&["jobs", "trigger", "flaky", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("attempt 1 of 3") && text.contains("failed"),
        "{text}"
    );
    assert!(
        text.contains("attempt 2 of 3") && text.contains("completed"),
        "{text}"
    );
    let first = env.run(&["jobs", "trigger", "slow"]);
    assert!(first.status.success());
    let skipped = env.run(&["jobs", "trigger", "slow"]);
    assert_eq!(
        skipped.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&skipped.stdout)
    );
    assert!(String::from_utf8_lossy(&skipped.stdout).starts_with("skipped:"));
    // Flags a user expects.
    let out = env.run(&[
        "jobs",
        "trigger",
        "flaky",
        "--payload",
        "{\"k\":1}",
        "--idempotency-key",
        "k1",
        "--priority",
        "-7",
        "--in",
        "1h",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["payload"], json!({"k": 1}));
    assert_eq!(e["priority"], -7);
    assert!(
        e["status_text"]
            .as_str()
            .unwrap()
            .starts_with("scheduled for")
    );
    let bad = env.run(&["jobs", "trigger", "flaky", "--payload", "{nope"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_job_created_through_one_node_runs_on_another_within_a_tick() {
    let (env, _schema) = Env::postgres("api_commands = true\n", "");
    let mut a = env.serve_as(Some("a"));
    let b = env.serve_as(Some("b"));
    let marker = env.path("ran-on");
    let (s, v) = http_json(
        "PUT",
        &a.api(),
        "/api/jobs/everywhere",
        None,
        Some(&json!({
            "command": format!("echo $JOBWARD_NODE_ID >> {}", marker.display()),
            "every": "1s",
        })),
    );
    assert_eq!(s, 201, "{v}");
    // Node a goes away at once: node b, which was never told, fires and runs the new job.
    a.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait(Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "node b to run the job", || {
        std::fs::read_to_string(&marker).is_ok_and(|t| !t.trim().is_empty())
    });
    // And a change made through b is in effect at once: paused, it fires only skips.
    let (s, _) = http_json(
        "PATCH",
        &b.api(),
        "/api/jobs/everywhere",
        None,
        Some(&json!({"paused": true})),
    );
    assert_eq!(s, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let before = std::fs::read_to_string(&marker).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().lines().count(),
        before,
        "a paused job runs nothing"
    );
}
