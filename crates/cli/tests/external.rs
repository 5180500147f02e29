//! Work jobward does not run: `jobward exec`, pings, missed instants of external jobs, and
//! duration bounds, with their alerts delivered to local receivers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// A local HTTP receiver that answers 200 and keeps every (path, JSON body) posted to it.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let keep = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap_or(0);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap_or(());
                    keep.lock()
                        .unwrap()
                        .push((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    let mut s = stream;
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                });
            }
        });
        Receiver { url, got }
    }

    fn bodies(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn exec_records_the_run_and_passes_the_exit_code_through() {
    let env = Env::new("", "[[job]]\nname = \"nightly\"\nrunner = \"external\"\n");
    let server = env.serve();
    let api = server.api();
    let out = env.run(&[
        "exec",
        "--job",
        "nightly",
        "--server",
        &api,
        "--",
        "sh",
        "-c",
        "echo to-stdout; exit 3",
    ]);
    assert_eq!(
        code(&out),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("to-stdout"));
    let runs = env.runs(&["--job", "nightly"]);
    assert_eq!(runs.len(), 1);
    let e = &runs[0];
    assert_eq!(
        (e["status"].as_str(), e["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(e["reason"], "exit_code");
    assert_eq!(e["trigger"], "external");
    let show = env.show(e["id"].as_i64().unwrap());
    assert!(
        show["log_tail"]
            .as_str()
            .unwrap_or("")
            .contains("to-stdout"),
        "{show}"
    );
    let started = show["events"].as_array().unwrap().iter().any(|ev| {
        ev["message"]
            .as_str()
            .unwrap_or("")
            .contains("jobward exec on")
    });
    assert!(started, "the record says where it ran: {show}");
    // Words reach the command as they were given.
    let out = env.run(&[
        "exec",
        "--job",
        "nightly",
        "--server",
        &api,
        "--",
        "sh",
        "-c",
        "test \"$1\" = 'a b'",
        "x",
        "a b",
    ]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With no ledger reachable the command still runs, and says so.
    let out = env.run(&[
        "exec",
        "--job",
        "nightly",
        "--server",
        "http://127.0.0.1:9",
        "--",
        "sh",
        "-c",
        "echo ran; exit 4",
    ]);
    assert_eq!(code(&out), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("running the command anyway"));
}

#[test]
fn exec_killed_mid_run_is_timed_out_within_the_lease_and_its_child_is_gone() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"long\"\nrunner = \"external\"\nheartbeat_timeout = \"1s\"\n",
    );
    let server = env.serve();
    let pidfile = env.path("child.pid");
    let mut wrapper = env
        .cmd(&[
            "exec",
            "--job",
            "long",
            "--server",
            &server.api(),
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(t) = std::fs::read_to_string(&pidfile)
                && let Ok(p) = t.trim().parse::<i32>()
            {
                break p;
            }
            assert!(Instant::now() < until, "the command never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let id = env.runs(&["--job", "long"])[0]["id"].as_i64().unwrap();
    assert_eq!(env.execution(id)["status"], "running");
    kill(Pid::from_raw(wrapper.id() as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let _ = wrapper.wait();
    wait_until(
        Duration::from_secs(5),
        "the command to die with its wrapper",
        || !alive(child),
    );
    let e = env.wait_state(id, "timed_out", Duration::from_secs(10));
    assert_eq!(e["reason"], "heartbeat_timeout", "{e}");
    // Lease (1s) plus a reaper tick (200ms) plus margins.
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn pings_start_and_end_runs_a_start_without_end_times_out_and_tokens_are_per_job() {
    let env = Env::new(
        "",
        "[[token]]\nname = \"ops\"\nrole = \"operate\"\nsecret = \"operate-secret-0123456789\"\n\
         [[job]]\nname = \"scraper\"\nrunner = \"external\"\nrun_timeout = \"2s\"\nkill_grace = \"0s\"\nping_token = \"scraper-ping-0123456789\"\n\
         [[job]]\nname = \"other\"\nrunner = \"external\"\nping_token = \"other-ping-0123456789\"\n",
    );
    let server = env.serve();
    let api = server.api();
    let ping = |job: &str, what: &str, token: Option<&str>, body: Value| {
        http_json(
            "POST",
            &api,
            &format!("/api/ping/{job}/{what}"),
            token,
            Some(&body),
        )
    };
    assert_eq!(ping("scraper", "start", None, json!({})).0, 401);
    assert_eq!(
        ping("scraper", "start", Some("other-ping-0123456789"), json!({})).0,
        403,
        "a ping token pings only its own job"
    );
    // A paired start and end.
    let (s, v) = ping(
        "scraper",
        "start",
        Some("scraper-ping-0123456789"),
        json!({"run_id": "r1"}),
    );
    assert_eq!(s, 200, "{v}");
    let first = v["execution"]["id"].as_i64().unwrap();
    assert_eq!(v["execution"]["status"], "running");
    let (s, v) = ping(
        "scraper",
        "fail",
        Some("scraper-ping-0123456789"),
        json!({"run_id": "r1", "exit_code": 2, "message": "site down", "log_tail": "HTTP 503"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["execution"]["id"].as_i64(), Some(first));
    assert_eq!(v["execution"]["status"], "failed");
    assert_eq!(v["execution"]["exit_code"], 2);
    // The same end again is answered with that record, and changes nothing.
    let (s, again) = ping(
        "scraper",
        "fail",
        Some("scraper-ping-0123456789"),
        json!({"run_id": "r1", "exit_code": 2}),
    );
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["execution"]["id"].as_i64(), Some(first));
    assert_eq!(again["execution"]["status"], "failed");
    // An end without a start: a run of zero known duration.
    let (s, v) = ping(
        "scraper",
        "success",
        Some("operate-secret-0123456789"),
        json!({}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["unpaired"], true);
    assert_eq!(v["execution"]["status"], "completed");
    // A start with no end is settled timed_out at its run timeout.
    let (_, v) = ping(
        "scraper",
        "start",
        Some("scraper-ping-0123456789"),
        json!({}),
    );
    let open = v["execution"]["id"].as_i64().unwrap();
    let e = env.wait_state(open, "timed_out", Duration::from_secs(8));
    assert_eq!(e["reason"], "run_timeout", "{e}");
    let ran = parse_time(&e["finished_at"]) - parse_time(&e["started_at"]);
    assert!(
        ran >= chrono::Duration::seconds(2) && ran < chrono::Duration::milliseconds(3500),
        "settled at the run timeout: {ran}"
    );
}

#[test]
fn missed_instants_of_an_external_job_are_recorded_and_alerted_then_resolved() {
    let hook = Receiver::start();
    let env = Env::new(
        "",
        &format!(
            "[[alert]]\nurl = \"{}/hook\"\n\
             [[job]]\nname = \"watchdog\"\nrunner = \"external\"\nevery = \"2s\"\ngrace = \"1s\"\n",
            hook.url
        ),
    );
    let server = env.serve();
    std::thread::sleep(Duration::from_millis(6500));
    let missed: Vec<Value> = env
        .runs(&["--job", "watchdog"])
        .into_iter()
        .filter(|r| r["status"] == "timed_out")
        .collect();
    assert!(missed.len() >= 2, "{missed:?}");
    let mut instants: Vec<&str> = missed
        .iter()
        .map(|r| r["scheduled_for"].as_str().unwrap())
        .collect();
    instants.dedup();
    assert_eq!(instants.len(), missed.len(), "one record per instant");
    for r in &missed {
        assert!(
            r["message"].as_str().unwrap().starts_with("missed:")
                && r["message"]
                    .as_str()
                    .unwrap()
                    .contains(&r["scheduled_for"].as_str().unwrap()[..19]),
            "says which instant: {r}"
        );
    }
    wait_until(
        Duration::from_secs(5),
        "an alert per missed instant",
        || {
            let alerts: Vec<_> = hook
                .bodies()
                .into_iter()
                .filter(|(_, b)| b["event"] == "missed")
                .collect();
            alerts.len() >= missed.len()
        },
    );
    let per_run: Vec<i64> = hook
        .bodies()
        .iter()
        .filter(|(_, b)| b["event"] == "missed")
        .map(|(_, b)| b["data"]["id"].as_i64().unwrap())
        .collect();
    let mut unique = per_run.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), per_run.len(), "one alert each");
    // A success ping pairs with the due instant and resolves the open alert.
    let (s, v) = http_json(
        "POST",
        &server.api(),
        "/api/ping/watchdog/success",
        None,
        Some(&json!({})),
    );
    assert_eq!(s, 200, "{v}");
    wait_until(Duration::from_secs(5), "the resolved alert", || {
        hook.bodies()
            .iter()
            .any(|(_, b)| b["event"] == "resolved" && b["job"] == "watchdog")
    });
    // Each delivery is visible.
    let (_, report) = http_json("GET", &server.api(), "/api/system/alerts", None, None);
    assert!(
        report["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["event"] == "missed" && d["status"] == "sent"),
        "{report}"
    );
}

#[test]
fn an_overdue_and_a_too_short_run_each_deliver_one_alertmanager_alert() {
    let am = Receiver::start();
    let env = Env::new(
        "",
        &format!(
            "[[alert]]\nurl = \"{}\"\nkind = \"alertmanager\"\n\
             [[job]]\nname = \"slow\"\nrunner = \"external\"\nexpected_duration = \"..1s\"\n\
             [[job]]\nname = \"backup\"\nrunner = \"external\"\nexpected_duration = \"5s..\"\n",
            am.url
        ),
    );
    let server = env.serve();
    let api = server.api();
    let out = env.run(&[
        "exec", "--job", "slow", "--server", &api, "--", "sleep", "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["exec", "--job", "backup", "--server", &api, "--", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    let named = |name: &str| -> Vec<Value> {
        am.bodies()
            .into_iter()
            .filter(|(path, _)| path == "/api/v2/alerts")
            .flat_map(|(_, b)| b.as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["alertname"] == name && a.get("endsAt").is_none())
            .collect()
    };
    let overdue = named("JobwardRunOverdue");
    assert_eq!(overdue.len(), 1, "{:?}", am.bodies());
    assert_eq!(overdue[0]["labels"]["job"], "slow");
    let short = named("JobwardRunTooShort");
    assert_eq!(short.len(), 1, "{:?}", am.bodies());
    assert_eq!(short[0]["labels"]["job"], "backup");
    // Both are visible in the record.
    let slow = &env.runs(&["--job", "slow"])[0];
    assert_eq!(slow["overdue"], true, "{slow}");
    assert_eq!(slow["status"], "completed", "overdue is not killed");
    let backup = &env.runs(&["--job", "backup"])[0];
    assert_eq!(backup["too_short"], true, "{backup}");
    assert!(
        backup["status_text"]
            .as_str()
            .unwrap()
            .contains("too short")
    );
    let table = String::from_utf8_lossy(&env.run(&["runs", "list"]).stdout).to_string();
    assert!(
        table.contains("overdue") && table.contains("too short"),
        "{table}"
    );
}

#[test]
fn a_cancel_reaches_a_wrapped_command() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"long\"\nrunner = \"external\"\nheartbeat_timeout = \"1s\"\nkill_grace = \"2s\"\n",
    );
    let server = env.serve();
    let mut wrapper = env
        .cmd(&[
            "exec",
            "--job",
            "long",
            "--server",
            &server.api(),
            "--",
            "sleep",
            "60",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the run to be recorded", || {
        env.runs(&["--job", "long", "--status", "running"]).len() == 1
    });
    let id = env.runs(&["--job", "long"])[0]["id"].as_i64().unwrap();
    let out = env.run(&["runs", "cancel", &id.to_string(), "--server", &server.api()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let status = wrapper.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at its next heartbeat"
    );
    assert_eq!(status.code(), Some(128 + 15), "sleep ended by SIGTERM");
    let e = env.wait_state(id, "cancelled", Duration::from_secs(5));
    assert_eq!(e["reason"], "cancel_requested", "{e}");
}
