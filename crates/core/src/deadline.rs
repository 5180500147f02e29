//! Deadline maths (invariant 2): every live state has a deadline, computed here from the
//! timeouts and the store's `now`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::duration::serde_ms;

/// The timeouts of one execution, fixed when it is created (named after Temporal's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Lease length: an owner that does not heartbeat within it loses the execution.
    #[serde(with = "serde_ms")]
    pub heartbeat: Duration,
    /// Start-to-close: the longest one attempt may run.
    #[serde(with = "serde_ms")]
    pub run: Duration,
    /// Schedule-to-start: the longest an execution may wait in `queued`.
    #[serde(with = "serde_ms")]
    pub queue: Duration,
    /// Time between SIGTERM and SIGKILL when jobward stops a process.
    #[serde(with = "serde_ms")]
    pub kill_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            // Short on purpose: a dead owner is found within this plus one reaper tick. Owners
            // renew three times per timeout, one batched statement for all their leases.
            heartbeat: Duration::from_secs(3),
            run: Duration::from_secs(24 * 3600),
            queue: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(10),
        }
    }
}

/// Time an owner has, after killing a process on time, to record the end before the ledger's
/// deadline passes.
pub const OWNER_MARGIN: Duration = Duration::from_secs(2);

/// `t + d`, saturating at the far future instead of overflowing.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// `t - d`, saturating at the far past.
pub fn sub(t: Timestamp, d: Duration) -> Timestamp {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// The non-negative time from `a` to `b` (zero if `b` is before `a`).
pub fn between(a: Timestamp, b: Timestamp) -> Duration {
    (b - a).to_std().unwrap_or(Duration::ZERO)
}

impl Timeouts {
    /// Deadline of a queued execution that may start at `run_after`.
    pub fn start_deadline(&self, run_after: Timestamp) -> Timestamp {
        add(run_after, self.queue)
    }

    /// Lease expiry after a claim or heartbeat at `now`.
    pub fn lease_expiry(&self, now: Timestamp) -> Timestamp {
        add(now, self.heartbeat)
    }

    /// The run deadline stored in the ledger: run timeout, then kill grace, then a margin.
    /// The owner sends SIGTERM at `terminate_at` and SIGKILL a kill grace later, so an owner
    /// that is alive records the end itself before the reaper would have to.
    pub fn run_deadline(&self, started_at: Timestamp) -> Timestamp {
        add(
            add(add(started_at, self.run), self.kill_grace),
            OWNER_MARGIN,
        )
    }

    /// When the owner sends SIGTERM because the run timeout passed.
    pub fn terminate_at(&self, started_at: Timestamp) -> Timestamp {
        add(started_at, self.run)
    }

    /// Deadline for the owner to confirm a cancel requested at `now`: it learns of the
    /// request within one heartbeat timeout and then has the kill grace to stop the process.
    pub fn cancel_deadline(&self, now: Timestamp) -> Timestamp {
        add(add(add(now, self.heartbeat), self.kill_grace), OWNER_MARGIN)
    }
}
