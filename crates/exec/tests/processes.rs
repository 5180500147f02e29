//! Real child processes: exits, signals, run timeouts, stop requests, process groups and logs.

use std::time::Duration;

use jobward_exec::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

fn launch(dir: &tempfile::TempDir, command: &str) -> Launch {
    Launch {
        command: command.into(),
        env: vec![("JOBWARD_EXECUTION_ID".into(), "42".into())],
        log_path: dir.path().join("logs/42.log"),
        log_max_bytes: 1 << 20,
        cwd: None,
        echo: false,
    }
}

async fn run(
    l: &Launch,
    terminate_after: Option<Duration>,
    grace: Duration,
) -> (Finished, Identity) {
    let r = spawn(l).unwrap();
    let id = r.identity.clone();
    let (_tx, rx) = mpsc::unbounded_channel();
    let f = r
        .supervise(terminate_after.map(|d| Instant::now() + d), grace, rx)
        .await;
    (f, id)
}

fn alive(pid: i32) -> bool {
    jobward_exec::procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

#[tokio::test]
async fn exit_codes_and_output_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let l = launch(
        &dir,
        "echo out; echo err >&2; echo id=$JOBWARD_EXECUTION_ID; exit 3",
    );
    let (f, id) = run(&l, None, Duration::from_secs(1)).await;
    assert_eq!(f.exit, Exit::Code(3));
    assert_eq!(f.ending, Ending::Exited);
    assert!(id.start_ticks > 0 && id.pgid == id.pid);
    let log = jobward_exec::log::read_tail(&l.log_path, 4096)
        .unwrap()
        .unwrap();
    assert!(
        log.contains("out\n") && log.contains("err\n") && log.contains("id=42\n"),
        "{log}"
    );
}

#[tokio::test]
async fn a_self_inflicted_sigkill_is_a_signal_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (f, _) = run(&launch(&dir, "kill -9 $$"), None, Duration::from_secs(1)).await;
    assert_eq!(f.exit, Exit::Signal(9));
    assert_eq!(signal_name(9), "SIGKILL");
}

#[tokio::test]
async fn a_run_timeout_terminates_the_whole_group_and_escalates_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // The shell ignores SIGTERM; its children are in the same group.
    let l = launch(
        &dir,
        "trap '' TERM; sleep 60 & sleep 60 & echo started; wait",
    );
    let started = Instant::now();
    let (f, id) = run(
        &l,
        Some(Duration::from_millis(300)),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(f.ending, Ending::RunTimeout);
    assert!(f.escalated, "SIGTERM was ignored, so SIGKILL was needed");
    assert_eq!(f.exit, Exit::Signal(9));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        jobward_exec::procfs::group_members(id.pgid).is_empty(),
        "nothing of the group survives"
    );
}

#[tokio::test]
async fn a_graceful_stop_lets_sigterm_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = spawn(&launch(
        &dir,
        "trap 'echo bye; exit 0' TERM; sleep 60 & wait",
    ))
    .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let h = tokio::spawn(r.supervise(None, Duration::from_secs(5), rx));
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Stop::Graceful).unwrap();
    let f = h.await.unwrap();
    assert_eq!(f.ending, Ending::Stopped(Stop::Graceful));
    assert!(!f.escalated);
}

#[tokio::test]
async fn leftovers_of_a_finished_command_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let l = launch(&dir, "sleep 60 & echo $! > bg.pid; exit 0");
    let mut l = l;
    l.cwd = Some(dir.path().to_path_buf());
    let (f, _) = run(&l, None, Duration::from_secs(1)).await;
    assert_eq!(f.exit, Exit::Code(0));
    assert_eq!(f.leftovers_killed, 1);
    let bg: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!alive(bg), "the background sleep outlived its command");
}

#[tokio::test]
async fn a_bad_working_directory_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = launch(&dir, "true");
    l.cwd = Some(dir.path().join("missing"));
    let err = spawn(&l).err().expect("spawn must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn survivors_are_killed_only_when_proven_ours() {
    let dir = tempfile::tempdir().unwrap();
    // A detached group standing for what a dead incarnation left behind.
    let mut ours = std::process::Command::new("/bin/sh");
    ours.args(["-c", "sleep 60 & sleep 60 & wait"])
        .env("JOBWARD_EXECUTION_ID", "7")
        .env("JOBWARD_NODE_ID", "old")
        .current_dir(dir.path());
    std::os::unix::process::CommandExt::process_group(&mut ours, 0);
    let mut ours = ours.spawn().unwrap();
    let mut stranger = std::process::Command::new("/bin/sh");
    stranger.args(["-c", "sleep 60"]);
    std::os::unix::process::CommandExt::process_group(&mut stranger, 0);
    let mut stranger = stranger.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = ours.id() as i32;
    let ticks = jobward_exec::procfs::stat(pid).unwrap().start_ticks;

    // A record whose start time does not match (a reused pid) and a marker that is not
    // present: nothing may be killed.
    let wrong = Recorded {
        pid: stranger.id() as i32,
        pgid: stranger.id() as i32,
        start_ticks: 1,
        boot_id: None,
    };
    let sweep = kill_survivors(Some(&wrong), "8", "old");
    assert!(sweep.killed.is_empty(), "{sweep:?}");
    assert!(sweep.spared.contains(&(stranger.id() as i32)), "{sweep:?}");

    let rec = Recorded {
        pid,
        pgid: pid,
        start_ticks: ticks,
        boot_id: jobward_exec::procfs::boot_id(),
    };
    let sweep = kill_survivors(Some(&rec), "7", "old");
    assert_eq!(sweep.killed.len(), 3, "{sweep:?}");
    let _ = ours.wait();
    assert!(jobward_exec::procfs::group_members(pid).is_empty());
    assert!(
        alive(stranger.id() as i32),
        "an unrelated process is never signalled"
    );
    signal_group(stranger.id() as i32, nix::sys::signal::Signal::SIGKILL);
    let _ = stranger.wait();

    let other_boot = Recorded {
        pid,
        pgid: pid,
        start_ticks: ticks,
        boot_id: Some("another-boot".into()),
    };
    assert!(kill_survivors(Some(&other_boot), "7", "old").other_boot);
}

fn read_pid(path: &std::path::Path) -> i32 {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(p) = s.trim().parse()
        {
            return p;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} was never written", path.display());
}

/// Not a test of its own: the runner process of `a_runner_killed_with_sigkill_takes_...`.
/// Started as a separate process (this test binary, filtered to this test, with
/// `JOBWARD_TEST_RUNNER_DIR` set), it runs one command and waits to be killed.
#[tokio::test]
async fn runner_process_for_the_sigkill_test() {
    let Ok(dir) = std::env::var("JOBWARD_TEST_RUNNER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let l = Launch {
        // A grandchild in the group, and one that left the group with setsid.
        command: "sh -c 'echo $$ > grandchild.pid; exec sleep 600' & \
                  setsid sh -c 'echo $$ > escaped.pid; exec sleep 601' & \
                  echo $$ > command.pid; wait"
            .into(),
        env: vec![],
        log_path: dir.join("runner.log"),
        log_max_bytes: 1 << 20,
        cwd: Some(dir.clone()),
        echo: false,
    };
    let r = spawn(&l).unwrap();
    std::fs::write(dir.join("ready"), r.identity.pid.to_string()).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    r.supervise(None, Duration::from_secs(1), rx).await;
}

#[test]
fn a_runner_killed_with_sigkill_takes_every_process_of_its_command_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "runner_process_for_the_sigkill_test",
            "--nocapture",
        ])
        .env("JOBWARD_TEST_RUNNER_DIR", dir.path())
        .spawn()
        .unwrap();
    read_pid(&dir.path().join("ready"));
    let pids: Vec<i32> = ["command.pid", "grandchild.pid", "escaped.pid"]
        .iter()
        .map(|f| read_pid(&dir.path().join(f)))
        .collect();
    assert!(
        pids.iter().all(|p| alive(*p)),
        "all three run before the kill"
    );
    let killed_at = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = runner.wait();
    while pids.iter().any(|p| alive(*p)) && killed_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed_at.elapsed();
    let alive_now: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        alive_now.is_empty(),
        "processes outlived their runner: {alive_now:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "the command's processes must be gone within 1 s of the runner's death, took {took:?}"
    );
}

#[tokio::test]
async fn a_descendant_that_left_the_group_is_killed_when_the_command_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = launch(
        &dir,
        "setsid sh -c 'echo $$ > escaped.pid; exec sleep 60' & sleep 0.2; exit 0",
    );
    l.cwd = Some(dir.path().to_path_buf());
    let (f, _) = run(&l, None, Duration::from_secs(1)).await;
    assert_eq!(f.exit, Exit::Code(0));
    let escaped = read_pid(&dir.path().join("escaped.pid"));
    assert!(
        !alive(escaped),
        "a process that called setsid outlived its command"
    );
    assert!(f.leftovers_killed >= 1, "{f:?}");
    assert!(!f.supervisor_lost);
}

#[tokio::test]
async fn a_killed_supervisor_still_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = launch(&dir, "sleep 60 & echo $! > bg.pid; wait");
    l.cwd = Some(dir.path().to_path_buf());
    let r = spawn(&l).unwrap();
    let id = r.identity.clone();
    let bg = read_pid(&dir.path().join("bg.pid"));
    // The supervisor is the command's parent.
    let supervisor = std::fs::read_to_string(format!("/proc/{}/stat", id.pid))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            rest.split(' ').nth(1)?.parse::<i32>().ok()
        })
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let f = r.supervise(None, Duration::from_secs(1), rx).await;
    assert!(f.supervisor_lost, "{f:?}");
    assert_eq!(f.exit, Exit::Signal(9));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !alive(id.pid) && !alive(bg),
        "the command's group was killed"
    );
}
