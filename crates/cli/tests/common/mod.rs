//! Test harness: a temporary directory with a config, the real `jobward` binary, and a
//! `serve` process that is killed when the test ends.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_jobward");

impl Env {
    /// A config whose `[server]` points into a fresh directory, followed by `rest`.
    pub fn new(server_extra: &str, rest: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
        Env::with_db(dir, &db, server_extra, rest)
    }

    /// The same, on a fresh schema of the PostgreSQL at `JOBWARD_TEST_POSTGRES` (never skipped:
    /// an unreachable PostgreSQL fails the test).
    pub fn postgres(server_extra: &str, rest: &str) -> (Env, PgSchema) {
        let (schema, url) = pg_schema();
        (
            Env::with_db(tempfile::tempdir().unwrap(), &url, server_extra, rest),
            schema,
        )
    }

    fn with_db(dir: tempfile::TempDir, db: &str, server_extra: &str, rest: &str) -> Env {
        let config = dir.path().join("jobward.toml");
        let text = format!(
            "[server]\ndb = \"{db}\"\nlog_dir = \"{}\"\nnode_name = \"test-node\"\nbind = \"127.0.0.1:0\"\npoll_interval = \"100ms\"\nreaper_interval = \"200ms\"\n{server_extra}\n{rest}",
            dir.path().join("logs").display()
        );
        fs::write(&config, text).unwrap();
        Env { dir, config }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("JOBWARD_DATABASE_URL");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed and prints JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "jobward {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn serve(&self) -> Server {
        self.serve_as(None)
    }

    /// A node with its own name (several nodes share one database).
    pub fn serve_as(&self, name: Option<&str>) -> Server {
        let log = self.path(&format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut args = vec!["serve"];
        if let Some(n) = name {
            args.extend(["--node-name", n]);
        }
        let child = self
            .cmd(&args)
            .env("JOBWARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Server {
            child: Some(child),
            log,
        };
        s.wait_log("jobward node serving", Duration::from_secs(20));
        s
    }

    pub fn trigger(&self, job: &str) -> i64 {
        let v = self.json(&["jobs", "trigger", job, "--json"]);
        v["id"].as_i64().unwrap()
    }

    pub fn show(&self, id: i64) -> Value {
        self.json(&["runs", "show", &id.to_string(), "--json"])
    }

    pub fn execution(&self, id: i64) -> Value {
        self.show(id)["execution"].clone()
    }

    /// Polls until `f` holds for the execution, or panics after `limit`.
    pub fn wait_for(
        &self,
        id: i64,
        limit: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + limit;
        loop {
            let e = self.execution(id);
            if f(&e) {
                return e;
            }
            assert!(
                Instant::now() < until,
                "execution {id} never became {what}: {e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_state(&self, id: i64, state: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, state, |e| e["status"] == state)
    }

    pub fn wait_file(&self, name: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            if let Ok(s) = fs::read_to_string(self.path(name))
                && !s.trim().is_empty()
            {
                return s;
            }
            assert!(Instant::now() < until, "file {name} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a pid file written by a job and reads it.
    pub fn pid_file(&self, name: &str) -> i32 {
        self.wait_file(name, Duration::from_secs(10))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn runs(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["runs", "list", "--json", "--limit", "1000"];
        args.extend_from_slice(extra);
        self.json(&args).as_array().unwrap().clone()
    }
}

pub struct Server {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// The API's base URL, read from the startup log line.
    pub fn api(&self) -> String {
        let text = self.log_text();
        let at = text.find("api=").expect("serving line names its api");
        text[at + 4..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches('"')
            .to_string()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < until,
                "serve never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < until,
                "serve did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next().unwrap_or('?'))
                .unwrap_or('?');
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> i32 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

pub fn parse_time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

pub fn pg_admin() -> String {
    std::env::var("JOBWARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn pg_exec(sql: String) {
    let out = std::process::Command::new("psql")
        .arg(pg_admin())
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", &sql])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "PostgreSQL at {} refused `{sql}`: {}",
            pg_admin(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run psql: {e}"),
    }
}

/// A schema dropped when the test ends.
pub struct PgSchema(pub String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(pg_admin())
            .args([
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0),
            ])
            .output();
    }
}

pub fn pg_schema() -> (PgSchema, String) {
    let name = format!(
        "jw_e2e_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    pg_exec(format!("CREATE SCHEMA {name}"));
    let admin = pg_admin();
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options=-c%20search_path%3D{name}");
    (PgSchema(name), url)
}

/// A plain HTTP POST with an empty body; returns the status code.
pub fn http_post(base: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP GET; returns the body.
pub fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A TCP proxy on a free loopback port that the test can cut: while cut, it forwards nothing
/// (connections stay open, bytes wait), as a network partition would leave them.
pub struct Cuttable {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cuttable {
    pub fn to(target: &str) -> Cuttable {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let flag = cut.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(up) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (conn.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, conn),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while flag.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { port, cut }
    }

    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Env {
    /// Like `postgres`, but every connection of this environment goes through `proxy`.
    pub fn postgres_through(proxy: &Cuttable, server_extra: &str, rest: &str) -> (Env, PgSchema) {
        let (schema, url) = pg_schema();
        let (scheme, rest_url) = url.split_once('@').unwrap();
        let path = &rest_url[rest_url.find('/').unwrap()..];
        let url = format!("{scheme}@127.0.0.1:{}{path}", proxy.port);
        (
            Env::with_db(tempfile::tempdir().unwrap(), &url, server_extra, rest),
            schema,
        )
    }
}

/// Where the test PostgreSQL listens (host:port of `pg_admin()`).
pub fn pg_address() -> String {
    let admin = pg_admin();
    let after = admin.split_once('@').map(|(_, r)| r).unwrap_or(&admin);
    after.split('/').next().unwrap().to_string()
}

/// An HTTP request with an optional bearer token and JSON body; returns the status and the
/// JSON answer (`Value::Null` when the body is not JSON).
pub fn http_json(
    method: &str,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(text).unwrap_or(Value::Null))
}

/// Polls `f` until it holds, or panics after `limit` naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
