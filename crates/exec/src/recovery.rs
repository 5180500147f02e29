//! Killing what a dead incarnation left running. A process is only killed when it provably
//! belongs to the execution: it is the recorded process (same pid *and* same kernel start
//! time, in the same boot), or its environment carries the execution's `JOBWARD_*` marker.
//! A pid that was reused by an unrelated process is never signalled.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs::{self, Stat};

/// The environment variables that mark every process of an execution.
pub const MARK_EXECUTION: &str = "JOBWARD_EXECUTION_ID";
pub const MARK_NODE: &str = "JOBWARD_NODE_ID";

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

/// One read of every process on the machine: stat fields and the execution marker of its
/// environment. Startup recovery takes one snapshot for all orphans instead of rereading
/// `/proc` for each.
pub struct ProcessTable {
    procs: Vec<(Stat, Option<(String, String)>)>,
    by_group: HashMap<i32, Vec<usize>>,
    by_marker: HashMap<(String, String), Vec<usize>>,
    boot_id: Option<String>,
}

fn marker_of(pid: i32) -> Option<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut exec, mut node) = (None, None);
    for entry in raw.split(|b| *b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(v) = entry
            .strip_prefix(MARK_EXECUTION)
            .and_then(|r| r.strip_prefix('='))
        {
            exec = Some(v.to_string());
        } else if let Some(v) = entry
            .strip_prefix(MARK_NODE)
            .and_then(|r| r.strip_prefix('='))
        {
            node = Some(v.to_string());
        }
    }
    Some((exec?, node?))
}

impl ProcessTable {
    pub fn snapshot() -> ProcessTable {
        let me = std::process::id() as i32;
        let mut t = ProcessTable {
            procs: vec![],
            by_group: HashMap::new(),
            by_marker: HashMap::new(),
            boot_id: procfs::boot_id(),
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return t;
        };
        for pid in dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        {
            if pid == me {
                continue;
            }
            let Some(stat) = procfs::stat(pid) else {
                continue;
            };
            if stat.state == 'Z' {
                continue;
            }
            let marker = marker_of(pid);
            let i = t.procs.len();
            t.by_group.entry(stat.pgrp).or_default().push(i);
            if let Some(m) = &marker {
                t.by_marker.entry(m.clone()).or_default().push(i);
            }
            t.procs.push((stat, marker));
        }
        t
    }

    /// Kills (SIGKILL) the processes of one execution that are provably its own.
    pub fn sweep(&self, recorded: Option<&Recorded>, execution_id: &str, node_id: &str) -> Sweep {
        let mut sweep = Sweep::default();
        if let Some(r) = recorded
            && let (Some(then), Some(now)) = (&r.boot_id, &self.boot_id)
            && then != now
        {
            sweep.other_boot = true;
            return sweep;
        }
        let key = (execution_id.to_string(), node_id.to_string());
        let mut candidates: Vec<usize> = recorded
            .and_then(|r| self.by_group.get(&r.pgid))
            .cloned()
            .unwrap_or_default();
        candidates.extend(self.by_marker.get(&key).into_iter().flatten());
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            let (stat, marker) = &self.procs[i];
            let is_recorded = recorded.is_some_and(|r| {
                r.pid == stat.pid && r.start_ticks == stat.start_ticks && r.start_ticks != 0
            });
            let marked = marker.as_ref() == Some(&key);
            // Re-check the start time right before the signal: the pid must still be that process.
            let unchanged = procfs::stat(stat.pid)
                .is_some_and(|now| now.start_ticks == stat.start_ticks && now.state != 'Z');
            if (is_recorded || marked) && unchanged {
                if kill(Pid::from_raw(stat.pid), Signal::SIGKILL).is_ok() {
                    sweep.killed.push(stat.pid);
                }
            } else if unchanged {
                sweep.spared.push(stat.pid);
            }
        }
        sweep
    }
}

impl ProcessTable {
    /// Kills every process marked as run by `owner` (a node incarnation or a worker id),
    /// whatever its execution: for an owner that just started, they are provably left over
    /// from its previous life.
    pub fn sweep_owner(&self, owner: &str) -> Sweep {
        let mut sweep = Sweep::default();
        for (stat, marker) in &self.procs {
            if marker.as_ref().is_some_and(|(_, node)| node == owner)
                && procfs::stat(stat.pid)
                    .is_some_and(|now| now.start_ticks == stat.start_ticks && now.state != 'Z')
                && kill(Pid::from_raw(stat.pid), Signal::SIGKILL).is_ok()
            {
                sweep.killed.push(stat.pid);
            }
        }
        sweep
    }
}

/// Waits (briefly) until the killed processes are gone: SIGKILL is not instant.
pub fn wait_gone(pids: &[i32], limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until
        && pids
            .iter()
            .any(|p| procfs::stat(*p).is_some_and(|s| s.state != 'Z'))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds and SIGKILLs the surviving processes of one execution (a snapshot and a sweep).
pub fn kill_survivors(recorded: Option<&Recorded>, execution_id: &str, node_id: &str) -> Sweep {
    let sweep = ProcessTable::snapshot().sweep(recorded, execution_id, node_id);
    wait_gone(&sweep.killed, Duration::from_secs(2));
    sweep
}
