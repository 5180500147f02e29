//! The systemd notify protocol, with the real binary: `NOTIFY_SOCKET` points at a Unix
//! datagram socket this test binds and reads, as systemd's would be.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

struct Notify {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn bind(env: &Env) -> Notify {
        let path = env.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify { sock, path }
    }

    /// Messages received within `limit` (each one datagram: `KEY=VALUE` lines).
    fn until(
        &self,
        limit: Duration,
        mut done: impl FnMut(&[(Instant, String)]) -> bool,
    ) -> Vec<(Instant, String)> {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end && !done(&got) {
            if let Ok(n) = self.sock.recv(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        got
    }
}

fn has(msgs: &[(Instant, String)], what: &str) -> bool {
    msgs.iter().any(|(_, m)| m.lines().any(|l| l == what))
}

fn serve_notified(env: &Env, notify: &Notify, extra_env: &[(&str, &str)]) -> Server {
    let log = env.path("serve-notify.log");
    let mut cmd = env.cmd(&["serve"]);
    cmd.env("JOBWARD_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Server {
        child: Some(cmd.spawn().unwrap()),
        log,
    }
}

const LONG: &str = r#"
[[job]]
name = "long"
command = "env > env.txt; sleep 300"
kill_grace = "1s"
"#;

/// READY=1 only once startup recovery settled what the previous incarnation left; WATCHDOG=1
/// again and again; STOPPING=1 on SIGTERM; and the executions never see NOTIFY_SOCKET.
#[test]
fn the_node_speaks_the_notify_protocol_and_its_children_do_not_inherit_it() {
    let env = Env::new("shutdown_grace = \"4s\"", LONG);
    // A previous incarnation dies with a running execution: recovery has work to do.
    let mut first = env.serve();
    let orphan = env.trigger("long");
    env.wait_state(orphan, "running", Duration::from_secs(10));
    first.kill9();

    let notify = Notify::bind(&env);
    let mut server = serve_notified(&env, &notify, &[]);
    let msgs = notify.until(Duration::from_secs(20), |m| has(m, "READY=1"));
    assert!(
        has(&msgs, "READY=1"),
        "no READY=1: {msgs:?}\n{}",
        server.log_text()
    );
    // When READY=1 arrives, startup recovery is already done.
    let e = env.execution(orphan);
    assert_eq!(e["status"], "failed", "READY=1 came before recovery: {e}");
    assert_eq!(e["reason"], "node_restarted");
    assert!(
        server.log_text().contains("jobward node serving"),
        "READY=1 before the API listens"
    );

    let msgs = notify.until(Duration::from_secs(3), |_| false);
    let watchdogs = msgs
        .iter()
        .filter(|(_, m)| m.trim() == "WATCHDOG=1")
        .count();
    assert!(
        watchdogs >= 3,
        "WATCHDOG=1 every half WatchdogSec (1s), got {watchdogs} in 3s: {msgs:?}"
    );

    // The execution's environment: JOBWARD_* yes, the service manager's variables no.
    let id = env.trigger("long");
    env.wait_state(id, "running", Duration::from_secs(10));
    let child_env = env.wait_file("env.txt", Duration::from_secs(10));
    assert!(child_env.contains("JOBWARD_EXECUTION_ID="), "{child_env}");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !child_env.contains(&format!("{var}=")),
            "{var} leaked to the job"
        );
    }

    server.signal(Signal::SIGTERM);
    let msgs = notify.until(Duration::from_secs(10), |m| has(m, "STOPPING=1"));
    assert!(has(&msgs, "STOPPING=1"), "no STOPPING=1: {msgs:?}");
    // While the shutdown grace lets the execution finish, the scheduler and claimers are
    // stopped on purpose: the watchdog must still be fed, or systemd would kill the shutdown.
    let msgs = notify.until(Duration::from_secs(3), |_| false);
    let watchdogs = msgs
        .iter()
        .filter(|(_, m)| m.trim() == "WATCHDOG=1")
        .count();
    assert!(
        watchdogs >= 4,
        "the watchdog starved during shutdown: {msgs:?}"
    );
    assert_eq!(server.wait(Duration::from_secs(20)), Some(0));
}

/// A maintenance loop that stops completing ticks (here: frozen 4 s by a fail point) stops
/// feeding the watchdog, so systemd would restart the node; feeding resumes after it.
#[test]
fn a_stuck_maintenance_loop_stops_feeding_the_watchdog() {
    let env = Env::new("", "");
    let notify = Notify::bind(&env);
    let _server = serve_notified(
        &env,
        &notify,
        &[("FAILPOINTS", "maintenance_tick=1*sleep(4000)")],
    );
    let msgs = notify.until(Duration::from_secs(20), |m| has(m, "READY=1"));
    assert!(has(&msgs, "READY=1"), "{msgs:?}");
    let msgs = notify.until(Duration::from_secs(9), |_| false);
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| m.trim() == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let longest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest >= Duration::from_millis(2500),
        "the watchdog was fed while the loop was stuck: longest gap {longest:?}, {} pings",
        pings.len()
    );
    let last = *pings.last().expect("feeding resumed");
    assert!(
        pings
            .iter()
            .filter(|t| **t > last - Duration::from_secs(2))
            .count()
            >= 2,
        "feeding resumed once the loop ticked again: {pings:?}"
    );
}

/// The remote worker speaks the same protocol: READY=1 once it claims, WATCHDOG=1 while its
/// heartbeat loop runs, STOPPING=1 on SIGTERM.
#[test]
fn the_worker_speaks_the_notify_protocol_too() {
    let env = Env::new(
        "",
        "[[job]]\nname = \"r\"\ncommand = \"true\"\nqueue = \"q1\"\n",
    );
    let server = env.serve();
    let notify = Notify::bind(&env);
    let log = env.path("worker.log");
    let mut worker = std::process::Command::new(BIN)
        .args(["worker", "--server", &server.api(), "--queue", "q1"])
        .arg("--log-dir")
        .arg(env.path("wlogs"))
        .current_dir(env.dir.path())
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let msgs = notify.until(Duration::from_secs(10), |m| has(m, "READY=1"));
    assert!(has(&msgs, "READY=1"), "{msgs:?}");
    let msgs = notify.until(Duration::from_secs(2), |_| false);
    assert!(
        msgs.iter()
            .filter(|(_, m)| m.trim() == "WATCHDOG=1")
            .count()
            >= 2,
        "{msgs:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let msgs = notify.until(Duration::from_secs(10), |m| has(m, "STOPPING=1"));
    assert!(has(&msgs, "STOPPING=1"), "{msgs:?}");
    assert!(worker.wait().unwrap().success());
}
