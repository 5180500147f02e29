//! Retry policy and backoff maths.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::serde_ms;
use crate::state::Reason;

/// How often, and how long apart, a failed attempt is tried again. A retry is a new
/// execution row with the same number, the next attempt, and a link to the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles for every further attempt.
    #[serde(with = "serde_ms")]
    pub backoff: Duration,
    /// Upper bound of the delay.
    #[serde(with = "serde_ms")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    }
}

/// The retry that follows a terminal attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempt: u32,
    pub delay: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `failed_attempt + 1`: `backoff * 2^(failed_attempt - 1)`, capped.
    pub fn delay_after(&self, failed_attempt: u32) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exp;
        let ms = (self.backoff.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max_backoff.max(self.backoff))
    }

    /// The retry owed after attempt `attempt` ended for `reason`, if any.
    pub fn next(&self, attempt: u32, reason: Reason) -> Option<Retry> {
        if !reason.is_retryable() || attempt >= self.max_attempts {
            return None;
        }
        Some(Retry {
            attempt: attempt + 1,
            delay: self.delay_after(attempt),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy(10);
        let delays: Vec<u64> = (1..=6).map(|a| p.delay_after(a).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 60, 60, 60]);
        assert_eq!(p.delay_after(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn retries_stop_at_max_attempts_and_skip_non_retryable_reasons() {
        let p = policy(3);
        assert_eq!(p.next(1, Reason::ExitCode).unwrap().attempt, 2);
        assert_eq!(p.next(2, Reason::HeartbeatTimeout).unwrap().attempt, 3);
        assert_eq!(p.next(3, Reason::ExitCode), None);
        for r in [
            Reason::QueueTimeout,
            Reason::CancelRequested,
            Reason::Shutdown,
            Reason::Overlap,
        ] {
            assert_eq!(p.next(1, r), None, "{r} must not be retried");
        }
        assert!(p.next(1, Reason::NodeRestarted).is_some());
        assert!(p.next(1, Reason::ManualCleanup).is_some());
    }
}
