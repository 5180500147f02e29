//! Process supervision shared by every jobward runner (a node's local executor and the remote
//! `jobward worker`): spawning `sh -c COMMAND` in its own process group with a parent-death
//! signal, bounded tail-keeping logs, SIGTERM→grace→SIGKILL of the whole group, and proving
//! which surviving processes belong to an execution before killing them.
//!
//! This crate knows nothing of the ledger: it reports what happened to processes and leaves
//! the record to its caller.

pub mod log;
pub mod process;
pub mod procfs;
pub mod recovery;
pub mod service;
mod supervisor;

pub use process::{Ending, Exit, Finished, Identity, Launch, Running, Stop, signal_group, spawn};
pub use recovery::{
    MARK_EXECUTION, MARK_NODE, ProcessTable, Recorded, Sweep, kill_survivors, wait_gone,
};

/// Human name of a signal number: `SIGKILL`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}
