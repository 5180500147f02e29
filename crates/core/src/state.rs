//! Execution states and the reason kinds that explain every terminal state but `completed`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of one execution (invariant 1). `queued` and `running` are live; the rest are
/// terminal and never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    Skipped,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Queued,
        State::Running,
        State::Completed,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
        State::Skipped,
    ];
    pub const LIVE: [State; 2] = [State::Queued, State::Running];
    pub const TERMINAL: [State; 5] = [
        State::Completed,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
        State::Skipped,
    ];

    pub fn is_terminal(self) -> bool {
        !self.is_live()
    }

    pub fn is_live(self) -> bool {
        matches!(self, State::Queued | State::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
            State::Skipped => "skipped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that jobward does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state '{0}' (expected one of: queued, running, completed, failed, timed_out, cancelled, skipped)"
)]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Why an execution reached a terminal state other than `completed`. Every reason belongs to
/// exactly one terminal state, so a reason alone says which state it explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // failed
    /// The command exited with a non-zero code.
    ExitCode,
    /// The command was killed by a signal it did not ask for (not a jobward kill).
    Signal,
    /// The command could not be started (the OS error is in the message).
    SpawnError,
    /// A remote worker reported a failure.
    WorkerError,
    /// The node that ran it restarted; found by that node's startup recovery.
    NodeRestarted,
    /// The node that ran it stopped heartbeating; settled by another node.
    NodeLost,
    // timed_out
    /// Its lease expired: the owner stopped heartbeating (heartbeat timeout).
    HeartbeatTimeout,
    /// It ran longer than its run timeout (start-to-close).
    RunTimeout,
    /// It waited in `queued` longer than its queue timeout (schedule-to-start).
    QueueTimeout,
    /// An operator settled it with `jobward cleanup --apply`.
    ManualCleanup,
    // cancelled
    /// Someone asked to cancel it.
    CancelRequested,
    /// A newer execution of the same job replaced it (overlap = "replace").
    Replaced,
    /// The node shut down gracefully and it did not finish within the grace period.
    Shutdown,
    /// A remote worker shutting down stopped it and handed it back; it was queued again at
    /// once as a new attempt that does not count against the retry policy.
    HandedBack,
    // skipped
    /// The job was still running when this instant fired (overlap = "skip").
    Overlap,
    /// Instants missed while no node was running (misfire = "skip").
    MissedSchedule,
    /// The job was paused when this instant fired.
    Paused,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::ExitCode,
        Reason::Signal,
        Reason::SpawnError,
        Reason::WorkerError,
        Reason::NodeRestarted,
        Reason::NodeLost,
        Reason::HeartbeatTimeout,
        Reason::RunTimeout,
        Reason::QueueTimeout,
        Reason::ManualCleanup,
        Reason::CancelRequested,
        Reason::Replaced,
        Reason::Shutdown,
        Reason::HandedBack,
        Reason::Overlap,
        Reason::MissedSchedule,
        Reason::Paused,
    ];

    /// The terminal state this reason explains.
    pub fn state(self) -> State {
        use Reason::*;
        match self {
            ExitCode | Signal | SpawnError | WorkerError | NodeRestarted | NodeLost => {
                State::Failed
            }
            HeartbeatTimeout | RunTimeout | QueueTimeout | ManualCleanup => State::TimedOut,
            CancelRequested | Replaced | Shutdown | HandedBack => State::Cancelled,
            Overlap | MissedSchedule | Paused => State::Skipped,
        }
    }

    /// Whether an attempt that ended for this reason is retried under the job's retry policy.
    /// An execution that never started (queue timeout), was stopped on purpose (cancel) or
    /// never existed as a run (skip) is not retried.
    pub fn is_retryable(self) -> bool {
        matches!(self.state(), State::Failed | State::TimedOut) && self != Reason::QueueTimeout
    }

    pub fn as_str(self) -> &'static str {
        use Reason::*;
        match self {
            ExitCode => "exit_code",
            Signal => "signal",
            SpawnError => "spawn_error",
            WorkerError => "worker_error",
            NodeRestarted => "node_restarted",
            NodeLost => "node_lost",
            HeartbeatTimeout => "heartbeat_timeout",
            RunTimeout => "run_timeout",
            QueueTimeout => "queue_timeout",
            ManualCleanup => "manual_cleanup",
            CancelRequested => "cancel_requested",
            Replaced => "replaced",
            Shutdown => "shutdown",
            HandedBack => "handed_back",
            Overlap => "overlap",
            MissedSchedule => "missed_schedule",
            Paused => "paused",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason kind '{0}'")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), r);
            assert!(r.state().is_terminal());
            assert_ne!(r.state(), State::Completed);
        }
        assert!("bogus".parse::<State>().is_err());
    }

    #[test]
    fn every_non_completed_terminal_state_has_a_reason() {
        for s in State::TERMINAL {
            if s != State::Completed {
                assert!(
                    Reason::ALL.iter().any(|r| r.state() == s),
                    "{s} has no reason"
                );
            }
        }
    }
}
