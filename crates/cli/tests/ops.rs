//! Operating jobward as a new user would: install-time checks, backups, logs, probes, and a
//! CLI that never surprises (closed pipes, one error prefix, names instead of ids).

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One line, `jobward: error: ...`, and the exit code.
fn assert_error_line(out: &std::process::Output, code: i32, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code for {needle:?}: {err}"
    );
    assert!(
        err.starts_with("jobward: error: "),
        "no error prefix: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const JOBS: &str = r#"
[[job]]
name = "every-ten"
command = "true"
every = "10s"
[[job]]
name = "nightly"
command = "true"
schedule = "0 30 2 * * *"
timezone = "Europe/Berlin"
[[job]]
name = "by-hand"
command = "true"
"#;

#[test]
fn check_validates_and_shows_next_fires_without_touching_any_database() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("jobward.toml");
    // Neither database exists, and nothing may be created or connected to.
    let missing = dir.path().join("no-such-dir/ledger.db");
    fs::write(
        &conf,
        format!("[server]\ndb = \"sqlite://{}\"\n{JOBS}", missing.display()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("valid: 3 job(s)"), "{text}");
    let line = |job: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(job))
            .unwrap_or_else(|| panic!("no line for {job}: {text}"))
            .to_string()
    };
    assert_eq!(
        line("every-ten").matches("Z").count(),
        3,
        "three next fires: {text}"
    );
    assert!(line("nightly").contains("00:30:00Z") || line("nightly").contains("01:30:00Z"));
    assert!(line("by-hand").contains("only when triggered"), "{text}");
    assert!(
        !missing.parent().unwrap().exists(),
        "check created a directory"
    );

    // A PostgreSQL that nobody listens on: still valid, still instant.
    fs::write(
        &conf,
        format!("[server]\ndb = \"postgres://nobody@127.0.0.1:1/none\"\n{JOBS}"),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&conf)
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "check waited for a database"
    );

    // Invalid: exit 2 and the one-line error, naming the field (and the cron field).
    fs::write(
        &conf,
        "[[job]]\nname = \"x\"\ncommand = \"true\"\nschedule = \"0 61 * * * *\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_error_line(&out, 2, "job 'x': field 'schedule': invalid cron pattern");
    assert!(
        stderr(&out).contains("minute field '61'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn backup_copies_a_live_sqlite_ledger_and_names_pg_dump_for_postgres() {
    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    let server = env.serve();
    let id = env.trigger("a");
    env.wait_state(id, "completed", Duration::from_secs(10));
    let copy = env.path("copy.db");
    let out = env.run(&["backup", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("backed up"), "{}", stdout(&out));
    drop(server);
    let url = format!("sqlite://{}", copy.display());
    let rows = env.json(&["--db", &url, "runs", "list", "--json"]);
    assert_eq!(rows[0]["id"], id, "the copy holds the ledger: {rows}");
    assert_eq!(rows[0]["status"], "completed");
    // A second backup to the same file is refused; nothing is overwritten.
    let out = env.run(&["backup", copy.to_str().unwrap()]);
    assert_error_line(&out, 2, "already exists");

    let (pg, _schema) = Env::postgres("", "");
    assert!(pg.run(&["migrate"]).status.success());
    let out = pg.run(&["backup", pg.path("x.dump").to_str().unwrap()]);
    assert_error_line(&out, 2, "pg_dump");
}

#[test]
fn a_relative_ledger_path_is_relative_to_the_config_file_not_the_working_directory() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let conf = home.path().join("jobward.toml");
    fs::write(
        &conf,
        "[server]\ndb = \"sqlite://ledger.db\"\nlog_dir = \"logs\"\nbind = \"127.0.0.1:0\"\nnode_name = \"rel\"\n[[job]]\nname = \"hello\"\ncommand = \"echo hello from $JOBWARD_JOB\"\n",
    )
    .unwrap();
    let log = elsewhere.path().join("serve.log");
    let mut server = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&conf)
        .current_dir(elsewhere.path())
        .env("JOBWARD_LOG", "info")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "serve", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("node serving")
    });
    assert!(
        home.path().join("ledger.db").exists(),
        "the ledger is beside the config"
    );
    assert!(!elsewhere.path().join("ledger.db").exists());
    // From a third directory, the same file finds the same ledger and logs.
    let third = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&conf)
            .args(args)
            .current_dir(third.path())
            .output()
            .unwrap()
    };
    let out = cli(&["jobs", "trigger", "hello", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["runs", "list", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let out = cli(&["runs", "show", "1"]);
    assert!(
        stdout(&out).contains("hello from hello"),
        "the log is found beside the config: {}",
        stdout(&out)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    let _server = env.serve();
    env.trigger("a");
    for args in [
        &["runs", "list"][..],
        &["runs", "list", "--json"],
        &["jobs", "list"],
        &["health"],
    ] {
        // A pipe whose reader is already gone: every write fails with EPIPE.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let out = env
            .cmd(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.code() == Some(0) || (args[0] == "health" && out.status.code() == Some(1)),
            "{args:?} exit {:?}: {}",
            out.status.code(),
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{args:?} printed on a closed pipe");
    }
    // The shell's way: `jobward runs list | head -1`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; for i in $(seq 1 40); do '{BIN}' --config '{}' jobs trigger a >/dev/null; done; '{BIN}' --config '{}' runs list --limit 1000 | head -1",
            env.config.display(),
            env.config.display()
        ))
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert!(stdout(&out).starts_with("ID") || stdout(&out).contains("JOB"));
}

#[test]
fn every_failure_is_one_line_with_one_prefix() {
    let env = Env::new("", "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
    assert_error_line(
        &env.run(&["runs", "list", "--frobnicate"]),
        2,
        "--frobnicate",
    );
    assert_error_line(&env.run(&["runs", "list"]), 2, "does not exist");
    assert_error_line(
        &env.run(&["jobs", "reload", "--server", "http://127.0.0.1:1"]),
        1,
        "reload failed",
    );
    // Worker and heartbeat read no configuration: given before the command it is ignored,
    // after it is refused.
    let out = env
        .cmd(&["heartbeat", "--progress", "0.5"])
        .env_remove("JOBWARD_EXECUTION_ID")
        .output()
        .unwrap();
    assert_error_line(&out, 2, "JOBWARD_EXECUTION_ID is not set");
    let out = Command::new(BIN)
        .args(["heartbeat", "--config", "x.toml"])
        .output()
        .unwrap();
    assert_error_line(&out, 2, "--config");
}

#[test]
fn an_unreachable_database_says_which_and_why_without_its_password() {
    let env = Env::new("", "");
    let out = env.run(&[
        "--db",
        "postgres://app:hunter2secret@127.0.0.1:1/ledger",
        "runs",
        "list",
    ]);
    let err = assert_error_line(&out, 2, "127.0.0.1:1");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        !err.contains("hunter2secret"),
        "the password was shown: {err}"
    );
    // Something listens but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://app@127.0.0.1:{port}/ledger");
    let out = env.run(&["--db", &url, "health"]);
    let err = assert_error_line(&out, 2, &format!("127.0.0.1:{port}"));
    assert!(!err.to_lowercase().contains("pool timed out"), "{err}");
    assert!(err.contains("did not answer as PostgreSQL"), "{err}");
    drop(silent);
}

#[test]
fn humans_read_node_names_and_millisecond_times_json_keeps_ids() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"long\"\ncommand = \"sleep 30\"\nkill_grace = \"1s\"\n",
    );
    let _server = env.serve();
    let id = env.trigger("long");
    let e = env.wait_state(id, "running", Duration::from_secs(10));
    let incarnation = e["lease_owner"].as_str().unwrap().to_string();
    assert_eq!(
        incarnation.len(),
        36,
        "the JSON keeps the incarnation id: {e}"
    );
    let out = env.run(&["runs", "show", &id.to_string()]);
    let text = stdout(&out);
    let short = &incarnation[..8];
    assert!(
        text.contains(&format!("owner         test-node ({short})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("by test-node ({short})")),
        "event actors are names: {text}"
    );
    assert!(
        !text.contains(&incarnation),
        "a full incarnation id is shown: {text}"
    );
    let out = env.run(&["cleanup", "--stale-after", "1ms"]);
    let text = stdout(&out);
    assert!(text.contains(&format!("test-node ({short})")), "{text}");
    assert!(!text.contains(&incarnation), "{text}");
    let out = env.run(&["health"]);
    let ts = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("timestamp: ").map(str::to_string))
        .unwrap();
    assert_eq!(ts.len(), "2026-01-01T00:00:00.000Z".len(), "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    let out = env.run(&["runs", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn logs_can_be_one_json_object_per_line_with_stable_field_names() {
    for (how, flag, env_var, file) in [
        ("flag", true, false, false),
        ("env", false, true, false),
        ("config", false, false, true),
    ] {
        let extra = if file { "log_format = \"json\"" } else { "" };
        let env = Env::new(extra, "[[job]]\nname = \"a\"\ncommand = \"true\"\n");
        let log = env.path("serve.log");
        let mut cmd = env.cmd(&["serve"]);
        if flag {
            cmd.args(["--log-format", "json"]);
        }
        if env_var {
            cmd.env("JOBWARD_LOG_FORMAT", "json");
        } else {
            cmd.env_remove("JOBWARD_LOG_FORMAT");
        }
        let mut child = cmd
            .env("JOBWARD_LOG", "info")
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(20), "serve", || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("node serving")
        });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap();
        let lines = json_lines(&fs::read_to_string(&log).unwrap());
        assert!(lines.len() >= 3, "{how}: {lines:?}");
        for l in &lines {
            for field in ["timestamp", "level", "target", "message"] {
                assert!(l.get(field).is_some(), "{how}: no {field} in {l}");
            }
        }
        let serving = lines
            .iter()
            .find(|l| l["message"] == "jobward node serving")
            .expect("the serving line");
        assert_eq!(serving["level"], "INFO");
        assert_eq!(serving["node"], "test-node", "{how}: {serving}");
        assert!(
            serving["api"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
    }
}

#[test]
fn probes_answer_without_tokens_and_readyz_knows_the_node() {
    let env = Env::new(
        "",
        "[[token]]\nname = \"ops\"\nrole = \"operate\"\nsecret = \"probe-test-secret-0123456789\"\n",
    );
    let server = env.serve();
    let api = server.api();
    let live: Value = serde_json::from_str(&http_get(&api, "/livez")).unwrap();
    assert_eq!(live["status"], "ok");
    let ready: Value = serde_json::from_str(&http_get(&api, "/readyz")).unwrap();
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["node"].as_str().unwrap().len(), 36, "{ready}");
    // Everything else still needs a token.
    let denied: Value = serde_json::from_str(&http_get(&api, "/api/jobs")).unwrap();
    assert_eq!(denied["error"]["code"], "unauthorized");
}

#[test]
fn the_worker_logs_its_start_and_claims_at_the_default_level() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"r\"\ncommand = \"true\"\nqueue = \"q1\"\n",
    );
    let server = env.serve();
    let log = env.path("worker.log");
    let mut worker = Command::new(BIN)
        .args(["worker", "--server", &server.api(), "--queue", "q1"])
        .arg("--log-dir")
        .arg(env.path("wlogs"))
        .current_dir(env.dir.path())
        .env_remove("JOBWARD_LOG")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let id = env.trigger("r");
    env.wait_state(id, "completed", Duration::from_secs(15));
    wait_until(Duration::from_secs(5), "the worker's claim line", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("claimed")
    });
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("worker started"), "{text}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    worker.wait().unwrap();
    assert!(fs::read_to_string(&log).unwrap().contains("worker stopped"));
}
