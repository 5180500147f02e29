//! Killing what a dead incarnation left running. A process is only killed when it provably
//! belongs to the execution: it is the recorded process (same pid *and* same kernel start
//! time, in the same boot), or its environment carries the execution's `JOBWARD_*` marker.
//! A pid that was reused by an unrelated process is never signalled.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs;

/// What the ledger recorded about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub pid: i32,
    pub pgid: i32,
    pub start_ticks: u64,
    pub boot_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Processes proven to be the execution's and killed.
    pub killed: Vec<i32>,
    /// Processes in the recorded group that could not be proven to be the execution's.
    pub spared: Vec<i32>,
    /// The recorded process was started under another boot: nothing of it can be alive.
    pub other_boot: bool,
}

impl Sweep {
    pub fn describe(&self) -> String {
        if self.other_boot {
            return "the machine rebooted since it started; no process of it survived".into();
        }
        let mut s = match self.killed.len() {
            0 => "no surviving process was found".to_string(),
            n => format!(
                "killed {n} surviving process(es) of its group ({})",
                join(&self.killed)
            ),
        };
        if !self.spared.is_empty() {
            s.push_str(&format!(
                "; spared {} process(es) that could not be proven to be its own ({})",
                self.spared.len(),
                join(&self.spared)
            ));
        }
        s
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds and SIGKILLs the surviving processes of an execution. `marker` are the environment
/// pairs every process of the execution inherited (execution id and node incarnation).
pub fn kill_survivors(recorded: Option<&Recorded>, marker: &[(&str, &str)]) -> Sweep {
    let mut sweep = Sweep::default();
    if let Some(r) = recorded
        && let (Some(then), Some(now)) = (&r.boot_id, procfs::boot_id())
        && *then != now
    {
        sweep.other_boot = true;
        return sweep;
    }
    let mut candidates: BTreeSet<i32> = BTreeSet::new();
    if let Some(r) = recorded {
        candidates.extend(procfs::group_members(r.pgid).iter().map(|s| s.pid));
    }
    // Processes that left the group (setsid, setpgid) still carry the marker.
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        {
            if pid != std::process::id() as i32 && procfs::environ_has(pid, marker) {
                candidates.insert(pid);
            }
        }
    }
    for pid in candidates {
        let Some(stat) = procfs::stat(pid) else {
            continue;
        };
        if stat.state == 'Z' {
            continue;
        }
        let is_recorded = recorded.is_some_and(|r| {
            r.pid == pid && r.start_ticks == stat.start_ticks && r.start_ticks != 0
        });
        if is_recorded || procfs::environ_has(pid, marker) {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                sweep.killed.push(pid);
            }
        } else {
            sweep.spared.push(pid);
        }
    }
    // SIGKILL is not instant: wait (briefly) until the killed are gone.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until
        && sweep
            .killed
            .iter()
            .any(|p| procfs::stat(*p).is_some_and(|s| s.state != 'Z'))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    sweep
}
