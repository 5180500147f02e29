//! Remote workers across a real HTTP connection: a real server on port 0 and real
//! `jobward worker` processes that get SIGKILL, SIGSTOP and SIGTERM.

mod common;

use std::fs;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

struct Worker {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(env: &Env, api: &str, id: &str, extra: &[&str]) -> Worker {
        let log = env.path(&format!("worker-{id}.log"));
        let mut cmd = std::process::Command::new(BIN);
        cmd.args([
            "worker",
            "--server",
            api,
            "--queue",
            "q1",
            "--worker-id",
            id,
        ])
        .arg("--log-dir")
        .arg(env.path(&format!("wlogs-{id}")))
        .args(extra)
        .current_dir(env.dir.path())
        .env("JOBWARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
        Worker {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }
    fn signal(&self, s: Signal) {
        kill(self.pid(), s).unwrap();
    }
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        let until = Instant::now() + limit;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < until,
                "worker did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn remote(command: &str, extra: &str) -> String {
    format!(
        "[[job]]\nname = \"remote\"\nqueue = \"q1\"\ncommand = \"{command}\"\noverlap = \"allow\"\n{extra}\n"
    )
}

/// A remote worker SIGKILLed mid-run: its execution is timed_out (heartbeat_timeout) within
/// the heartbeat timeout plus one reaper tick, then retried and completed by another worker.
#[test]
fn a_killed_worker_loses_its_execution_to_the_next_worker() {
    let env = Env::new(
        "",
        &remote(
            "if [ $JOBWARD_ATTEMPT = 1 ]; then sleep 30; fi; echo finished by $JOBWARD_WORKER_ID",
            "retry = { max_attempts = 2, backoff = \"100ms\" }",
        ),
    );
    let server = env.serve();
    let api = server.api();
    let mut a = Worker::start(&env, &api, "wa", &[]);
    let id = env.trigger("remote");
    let running = env.wait_state(id, "running", Duration::from_secs(10));
    assert_eq!(running["lease_owner"], "wa");
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = chrono::Utc::now();
    a.child.take().unwrap().kill().unwrap();
    let e = env.wait_state(id, "timed_out", Duration::from_secs(10));
    assert_eq!(e["reason"], "heartbeat_timeout");
    let took = parse_time(&e["finished_at"]) - killed_at;
    // Heartbeat timeout 3 s (the default) plus one reaper tick (200 ms in these tests).
    assert!(
        took <= chrono::TimeDelta::milliseconds(3200 + 300),
        "settled {took:?} after the kill"
    );
    let _b = Worker::start(&env, &api, "wb", &[]);
    let retry = env
        .runs(&["--job", "remote"])
        .into_iter()
        .find(|r| r["attempt"] == 2)
        .expect("a retry");
    let done = env.wait_state(
        retry["id"].as_i64().unwrap(),
        "completed",
        Duration::from_secs(15),
    );
    assert_eq!(done["lease_owner"], "wb");
    let log = env.json(&["runs", "show", &retry["id"].to_string(), "--json"]);
    assert!(
        log["log_tail"]
            .as_str()
            .unwrap_or("")
            .contains("finished by wb"),
        "{log}"
    );
}

/// A worker frozen past its lease, then resumed: its heartbeat and completion get 409
/// lease_lost, the ledger is unchanged, and the worker kills its child.
#[test]
fn a_frozen_worker_is_refused_and_kills_its_child() {
    let env = Env::new("", &remote("sleep 60 & echo $! > child.pid; wait", ""));
    let server = env.serve();
    let w = Worker::start(&env, &server.api(), "wf", &[]);
    let id = env.trigger("remote");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child = env.pid_file("child.pid");
    w.signal(Signal::SIGSTOP);
    let settled = env.wait_state(id, "timed_out", Duration::from_secs(10));
    assert_eq!(settled["reason"], "heartbeat_timeout");
    assert!(alive(child), "the frozen worker's child still runs");
    w.signal(Signal::SIGCONT);
    wait_until(
        Duration::from_secs(10),
        "the resumed worker to kill its child",
        || !alive(child),
    );
    wait_until(Duration::from_secs(10), "the refused completion", || {
        env.show(id)["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "refused" && e["message"].as_str().unwrap().starts_with("completion")
        })
    });
    let events = env.show(id)["events"].as_array().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "refused"
                && e["message"].as_str().unwrap().starts_with("heartbeat")),
        "{events:?}"
    );
    assert_eq!(
        env.execution(id),
        settled,
        "the late reports changed nothing"
    );
    let log = w.log_text();
    assert!(
        log.contains("lease_lost"),
        "the worker was answered 409 lease_lost:\n{log}"
    );
}

/// SIGTERM: stop claiming, let running work finish within the grace, hand back the rest,
/// which runs again at once (not after a lease expiry).
#[test]
fn a_terminated_worker_hands_back_what_it_cannot_finish() {
    let env = Env::new(
        "",
        &format!(
            "{}{}",
            remote("sleep 30", ""),
            "[[job]]\nname = \"quick\"\nqueue = \"q1\"\ncommand = \"sleep 0.3\"\n"
        ),
    );
    let server = env.serve();
    let api = server.api();
    let mut a = Worker::start(
        &env,
        &api,
        "wt",
        &["--concurrency", "2", "--shutdown-grace", "1s"],
    );
    let long = env.trigger("remote");
    let quick = env.trigger("quick");
    env.wait_state(long, "running", Duration::from_secs(10));
    env.wait_state(quick, "running", Duration::from_secs(10));
    a.signal(Signal::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(15)), Some(0));
    assert_eq!(
        env.execution(quick)["status"],
        "completed",
        "it finished within the grace"
    );
    let handed = env.execution(long);
    assert_eq!(
        (handed["status"].as_str(), handed["reason"].as_str()),
        (Some("cancelled"), Some("handed_back")),
        "{handed}"
    );
    let next = env
        .runs(&["--job", "remote"])
        .into_iter()
        .find(|r| r["attempt"] == 2)
        .expect("queued again");
    assert_eq!(next["status"], "queued");
    let _b = Worker::start(&env, &api, "wt2", &[]);
    let started = env.wait_state(
        next["id"].as_i64().unwrap(),
        "running",
        Duration::from_secs(5),
    );
    let gap = parse_time(&started["started_at"]) - parse_time(&handed["finished_at"]);
    assert!(
        gap < chrono::TimeDelta::seconds(3),
        "it ran again at once, not after a lease expiry: {gap:?}"
    );
}

/// `jobward heartbeat` from inside a job records progress, phases and a checkpoint.
#[test]
fn a_job_reports_its_progress_and_phases() {
    let cmd = format!(
        "{BIN} heartbeat --progress 0.25 --phase download && {BIN} heartbeat --progress 0.75 --phase parse --checkpoint '{{\\\"page\\\": 3}}' && sleep 0.5"
    );
    let env = Env::new(
        "",
        &format!("[[job]]\nname = \"steps\"\ncommand = \"{cmd}\"\n"),
    );
    let _server = env.serve();
    let id = env.trigger("steps");
    let e = env.wait_state(id, "completed", Duration::from_secs(10));
    assert_eq!(e["phase"], "parse");
    assert_eq!(e["progress"], 1.0, "completed runs show full progress");
    let phases: Vec<String> = env.show(id)["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "phase")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, vec!["phase: download", "phase: parse"]);
    let out = env
        .cmd(&["heartbeat", "--progress", "0.5"])
        .env_remove("JOBWARD_EXECUTION_ID")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "outside an execution it is a usage error"
    );
}

/// Webhooks: a final failure and a reaper recovery are posted, the ledger never waits for them.
#[test]
fn alerts_reach_a_webhook() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = {
        let received = received.clone();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                    let received = received.clone();
                    async move {
                        received.lock().unwrap().push(v);
                        "ok"
                    }
                }),
            );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
            port
        })
    };
    let env = Env::new(
        "",
        &format!(
            "[[alert]]\nurl = \"http://127.0.0.1:{port}/hook\"\n[[job]]\nname = \"bad\"\ncommand = \"exit 3\"\n{}",
            remote("sleep 30", "")
        ),
    );
    let server = env.serve();
    let bad = env.trigger("bad");
    env.wait_state(bad, "failed", Duration::from_secs(10));
    let w = Worker::start(&env, &server.api(), "wk", &[]);
    let r = env.trigger("remote");
    env.wait_state(r, "running", Duration::from_secs(10));
    drop(w);
    env.wait_state(r, "timed_out", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "both alerts", || {
        received.lock().unwrap().len() >= 2
    });
    let got = received.lock().unwrap().clone();
    let failed = got
        .iter()
        .find(|v| v["event"] == "failed")
        .expect("a failed alert");
    assert_eq!(failed["data"]["execution"]["id"], bad);
    let recovered = got
        .iter()
        .find(|v| v["event"] == "recovered")
        .expect("a recovered alert");
    assert_eq!(recovered["data"]["id"], r);
    assert_eq!(recovered["data"]["reason"], "heartbeat_timeout");
}

/// Reload (SIGHUP or `jobs reload`) adds jobs without disturbing a running execution.
#[test]
fn reload_changes_jobs_and_leaves_running_executions_alone() {
    let env = Env::new("", "[[job]]\nname = \"long\"\ncommand = \"sleep 3\"\n");
    let server = env.serve();
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let mut text = fs::read_to_string(&env.config).unwrap();
    text.push_str("[[job]]\nname = \"added\"\ncommand = \"true\"\n");
    fs::write(&env.config, &text).unwrap();
    let out = env.run(&["jobs", "reload", "--server", &server.api()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 added [\"added\"]"));
    fs::write(
        &env.config,
        format!("{text}[[job]]\nname = \"bad\"\ncommand = \"true\"\nschedule = \"nope\"\n"),
    )
    .unwrap();
    let out = env.run(&["jobs", "reload", "--server", &server.api()]);
    assert_eq!(out.status.code(), Some(1), "an invalid config is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid cron pattern"));
    fs::write(
        &env.config,
        format!("{text}[[job]]\nname = \"by-hup\"\ncommand = \"true\"\n"),
    )
    .unwrap();
    server.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "the SIGHUP reload", || {
        env.json(&["jobs", "list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["name"] == "by-hup")
    });
    assert_eq!(
        env.wait_state(id, "completed", Duration::from_secs(10))["attempt"],
        1,
        "the running execution finished undisturbed"
    );
}

#[test]
fn binding_beyond_loopback_needs_tokens_and_tokens_are_enforced() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"a\"\ncommand = \"true\"\nqueue = \"q1\"\n",
    );
    let out = env.run(&["serve", "--bind", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without tokens"));
    let env = Env::new(
        "",
        "[[token]]\nname = \"w\"\nrole = \"worker\"\nsecret = \"worker-secret-0123456789\"\n[[job]]\nname = \"a\"\ncommand = \"true\"\nqueue = \"q1\"\n",
    );
    let server = env.serve();
    let out = env
        .cmd(&[
            "worker",
            "--server",
            &server.api(),
            "--queue",
            "q1",
            "--token",
            "wrong-secret-0123456789",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    assert!(
        !server.log_text().contains("worker-secret"),
        "a secret was logged"
    );
    let _w = Worker::start(
        &env,
        &server.api(),
        "wok",
        &["--token", "worker-secret-0123456789"],
    );
    let id = env.trigger("a");
    env.wait_state(id, "completed", Duration::from_secs(10));
}
