//! Running one command: `sh -c COMMAND` in its own process group, output to a bounded log,
//! SIGTERM then SIGKILL to the whole group on a timeout or a stop request, and nothing of the
//! group left behind once the command has exited.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::log::LogSink;
use crate::{procfs, supervisor};

/// What to run and where its output goes.
#[derive(Debug, Clone)]
pub struct Launch {
    pub command: String,
    /// Added to the inherited environment (the `JOBWARD_*` variables).
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub cwd: Option<PathBuf>,
    /// Also copy its output to this process's stdout and stderr, as it comes (`jobward exec`,
    /// where the command's caller reads it).
    pub echo: bool,
}

/// The process as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub pgid: i32,
    pub start_ticks: u64,
    pub boot_id: Option<String>,
}

/// How the command's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(s: ExitStatus) -> Exit {
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

/// A request to stop a running command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM to the group, SIGKILL after the kill grace (cancel, shutdown).
    Graceful,
    /// SIGKILL to the group at once: the lease is lost and the ledger already says it is over.
    Immediate,
}

/// Why supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The command ended by itself.
    Exited,
    /// Its run timeout passed and it was terminated.
    RunTimeout,
    /// It was stopped on request.
    Stopped(Stop),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub exit: Exit,
    pub ending: Ending,
    /// SIGKILL was needed because SIGTERM was not honoured within the grace.
    pub escalated: bool,
    /// Processes still alive after the main process ended (in its group, or descendants
    /// that left it), then killed.
    pub leftovers_killed: usize,
    /// The supervisor was killed from outside before it could report: the exit is the
    /// supervisor's, and the command's group was killed by the runner.
    pub supervisor_lost: bool,
}

/// A started command.
pub struct Running {
    /// The supervisor; it exits once the command and everything it left are gone.
    child: Child,
    status: supervisor::StatusPipe,
    pub identity: Identity,
    pump: JoinHandle<io::Result<()>>,
}

/// Starts the command under its supervisor (see `supervisor`). An error here is a spawn
/// error (the OS error says why).
pub fn spawn(launch: &Launch) -> io::Result<Running> {
    let mut sink = LogSink::create(&launch.log_path, launch.log_max_bytes)?;
    let plan = supervisor::Plan::new()?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&launch.command)
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The supervisor's own group; the command gets another one of its own.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &launch.cwd {
        cmd.current_dir(dir);
    }
    // The runner's service manager speaks to the runner only (see `service`).
    for var in crate::service::SERVICE_MANAGER_VARS {
        cmd.env_remove(var);
    }
    // SAFETY: the hook runs only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(plan.hook());
    }
    let mut child = cmd.spawn()?;
    let status = match plan.spawned() {
        Ok(s) => s,
        Err(e) => {
            let _ = child.start_kill();
            return Err(e);
        }
    };
    let pid = status.pid;
    let start_ticks = status.start_ticks;
    let identity = Identity {
        pid,
        pgid: pid,
        start_ticks,
        boot_id: procfs::boot_id(),
    };
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let echo = launch.echo;
    let show = move |to_err: bool, bytes: &[u8]| {
        use std::io::Write;
        if !echo {
            return;
        }
        // A closed terminal must not stop the command or its record.
        let _ = if to_err {
            std::io::stderr().lock().write_all(bytes)
        } else {
            std::io::stdout().lock().write_all(bytes)
        };
    };
    let pump = tokio::spawn(async move {
        let (mut ob, mut eb) = (vec![0u8; 8192], vec![0u8; 8192]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = out.read(&mut ob), if out_open => match n? {
                    0 => out_open = false,
                    n => {
                        show(false, &ob[..n]);
                        sink.write(&ob[..n])?
                    }
                },
                n = err.read(&mut eb), if err_open => match n? {
                    0 => err_open = false,
                    n => {
                        show(true, &eb[..n]);
                        sink.write(&eb[..n])?
                    }
                },
            }
        }
        Ok(())
    });
    Ok(Running {
        child,
        status,
        identity,
        pump,
    })
}

/// Sends `sig` to the whole group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    killpg(Pid::from_raw(pgid), sig).is_ok()
}

impl Running {
    /// Waits for the command to end, terminating it at `terminate_at` (its run timeout) or
    /// when a stop request arrives; then kills whatever it left in its group.
    pub async fn supervise(
        mut self,
        terminate_at: Option<Instant>,
        grace: Duration,
        mut stop: mpsc::UnboundedReceiver<Stop>,
    ) -> Finished {
        let pgid = self.identity.pgid;
        let deadline = terminate_at
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let (status, ending, escalated) = tokio::select! {
            s = self.child.wait() => (s, Ending::Exited, false),
            _ = tokio::time::sleep_until(deadline) => {
                let (s, esc) = terminate(&mut self.child, pgid, grace, &mut stop).await;
                (s, Ending::RunTimeout, esc)
            }
            Some(req) = stop.recv() => {
                let (s, esc) = match req {
                    Stop::Immediate => {
                        signal_group(pgid, Signal::SIGKILL);
                        (self.child.wait().await, true)
                    }
                    Stop::Graceful => terminate(&mut self.child, pgid, grace, &mut stop).await,
                };
                (s, Ending::Stopped(req), esc)
            }
        };
        // The supervisor has exited: the command and everything it left are gone, and its
        // report says how the command ended. Without a report the supervisor itself was
        // killed: its command's group is killed here instead.
        let (exit, leftovers, supervisor_lost) = match self.status.report() {
            Some(r) => {
                let exit = match r.exit {
                    supervisor::Reported::Code(c) => Exit::Code(c),
                    supervisor::Reported::Signal(s) => Exit::Signal(s),
                };
                (exit, r.leftovers as usize, false)
            }
            None => {
                signal_group(pgid, Signal::SIGKILL);
                let exit = status.map(Exit::from_status).unwrap_or(Exit::Code(-1));
                (exit, 0, true)
            }
        };
        // Output still buffered in the pipes is written; a process that escaped the group may
        // hold a pipe open forever, so the wait is bounded.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.pump)
            .await
            .is_err()
        {
            self.pump.abort();
        }
        Finished {
            exit,
            ending,
            escalated,
            leftovers_killed: leftovers,
            supervisor_lost,
        }
    }
}

async fn terminate(
    child: &mut Child,
    pgid: i32,
    grace: Duration,
    stop: &mut mpsc::UnboundedReceiver<Stop>,
) -> (io::Result<ExitStatus>, bool) {
    signal_group(pgid, Signal::SIGTERM);
    let graceful = tokio::select! {
        s = child.wait() => Some(s),
        _ = tokio::time::sleep(grace) => None,
        Some(Stop::Immediate) = stop.recv() => None,
    };
    match graceful {
        Some(s) => (s, false),
        None => {
            signal_group(pgid, Signal::SIGKILL);
            (child.wait().await, true)
        }
    }
}
