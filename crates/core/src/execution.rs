//! One execution as a value: the reference model of what a store must do when it applies an
//! event. Stores keep the same fields in a row and apply the same `transition`.

use crate::Timestamp;
use crate::deadline::Timeouts;
use crate::machine::{Deadline, Event, Refusal, Step, transition};
use crate::state::{Reason, State};

/// An execution's ledger fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub attempt: u32,
    pub state: State,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub timeouts: Timeouts,
    pub queued_at: Timestamp,
    pub run_after: Timestamp,
    pub start_deadline: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub lease_owner: Option<String>,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub run_deadline: Option<Timestamp>,
    pub pending_cancel: Option<Reason>,
    pub cancel_deadline: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// Who reports an event, for the fencing check: the owner's lease token, or nobody in
/// particular (the reaper, an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter<'a> {
    Owner(&'a str),
    Ledger,
}

/// Why `apply` changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The reporter's lease token is not the current one: its lease was reclaimed.
    #[error("lease lost: the report's lease token is not the execution's current one")]
    LeaseLost,
    #[error("a claim needs the new owner and lease token")]
    ClaimWithoutLease,
}

/// Events that only the lease holder may report.
pub fn needs_lease(event: Event) -> bool {
    matches!(event, Event::Heartbeat | Event::Complete | Event::Finish(_))
}

impl Execution {
    /// A new queued execution.
    pub fn queued(attempt: u32, now: Timestamp, run_after: Timestamp, timeouts: Timeouts) -> Self {
        Execution {
            attempt,
            state: State::Queued,
            reason: None,
            message: None,
            timeouts,
            queued_at: now,
            run_after,
            start_deadline: Some(timeouts.start_deadline(run_after)),
            started_at: None,
            heartbeat_at: None,
            lease_owner: None,
            lease_token: None,
            lease_expires_at: None,
            run_deadline: None,
            pending_cancel: None,
            cancel_deadline: None,
            finished_at: None,
        }
    }

    /// A record that is terminal from birth: a skipped fire.
    pub fn skipped(now: Timestamp, reason: Reason, message: String, timeouts: Timeouts) -> Self {
        debug_assert_eq!(reason.state(), State::Skipped);
        let mut e = Execution::queued(1, now, now, timeouts);
        e.state = State::Skipped;
        e.reason = Some(reason);
        e.message = Some(message);
        e.start_deadline = None;
        e.finished_at = Some(now);
        e
    }

    /// The deadline that passed first, if any passed by `now`.
    pub fn due(&self, now: Timestamp) -> Option<Deadline> {
        let candidates = match self.state {
            State::Queued => vec![(self.start_deadline, Deadline::Queue)],
            State::Running => vec![
                (self.cancel_deadline, Deadline::Cancel),
                (self.run_deadline, Deadline::Run),
                (self.lease_expires_at, Deadline::Lease),
            ],
            _ => vec![],
        };
        candidates
            .into_iter()
            .filter_map(|(at, d)| at.filter(|at| *at <= now).map(|at| (at, d)))
            .min_by_key(|(at, _)| *at)
            .map(|(_, d)| d)
    }

    /// The earliest deadline of a live execution.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        [
            self.start_deadline,
            self.lease_expires_at,
            self.run_deadline,
            self.cancel_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies `event` at `now`. On a claim, `claim` names the new owner and lease token.
    /// Nothing changes on an error.
    pub fn apply(
        &mut self,
        event: Event,
        now: Timestamp,
        reporter: Reporter<'_>,
        claim: Option<(&str, &str)>,
        message: &str,
    ) -> Result<Step, ApplyError> {
        if needs_lease(event) && self.state == State::Running {
            match reporter {
                Reporter::Owner(token) if self.lease_token.as_deref() == Some(token) => {}
                _ => return Err(ApplyError::LeaseLost),
            }
        }
        let step = transition(self.state, self.pending_cancel, event)?;
        if event == Event::Claim && claim.is_none() {
            return Err(ApplyError::ClaimWithoutLease);
        }
        match event {
            Event::Claim => {
                let (owner, token) = claim.expect("checked above");
                self.started_at = Some(now);
                self.heartbeat_at = Some(now);
                self.lease_owner = Some(owner.to_string());
                self.lease_token = Some(token.to_string());
                self.lease_expires_at = Some(self.timeouts.lease_expiry(now));
                self.run_deadline = Some(self.timeouts.run_deadline(now));
                self.start_deadline = None;
            }
            Event::Heartbeat => {
                self.heartbeat_at = Some(now);
                self.lease_expires_at = Some(self.timeouts.lease_expiry(now));
            }
            Event::Cancel(_) if step.to == State::Running && self.pending_cancel.is_none() => {
                self.cancel_deadline = Some(self.timeouts.cancel_deadline(now));
            }
            _ => {}
        }
        self.state = step.to;
        self.pending_cancel = step.pending_cancel;
        if step.to.is_terminal() {
            self.reason = step.reason;
            self.message = step.reason.map(|_| message.to_string());
            self.finished_at = Some(now);
            self.start_deadline = None;
            self.cancel_deadline = None;
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn t(s: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            heartbeat: Duration::from_secs(30),
            run: Duration::from_secs(100),
            queue: Duration::from_secs(60),
            kill_grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_late_report_from_a_reclaimed_lease_is_refused_and_changes_nothing() {
        let mut e = Execution::queued(1, t(0), t(0), timeouts());
        e.apply(
            Event::Claim,
            t(1),
            Reporter::Ledger,
            Some(("node-a", "tok-1")),
            "",
        )
        .unwrap();
        e.apply(
            Event::Expire(Deadline::Lease),
            t(40),
            Reporter::Ledger,
            None,
            "lease expired",
        )
        .unwrap();
        let before = e.clone();
        assert_eq!(
            e.apply(Event::Complete, t(41), Reporter::Owner("tok-1"), None, ""),
            Err(ApplyError::Refused(Refusal::Terminal(State::TimedOut)))
        );
        assert_eq!(e, before);
    }

    #[test]
    fn a_heartbeat_with_someone_elses_token_is_refused() {
        let mut e = Execution::queued(1, t(0), t(0), timeouts());
        e.apply(
            Event::Claim,
            t(1),
            Reporter::Ledger,
            Some(("node-a", "tok-1")),
            "",
        )
        .unwrap();
        let before = e.clone();
        assert_eq!(
            e.apply(Event::Heartbeat, t(2), Reporter::Owner("tok-2"), None, ""),
            Err(ApplyError::LeaseLost)
        );
        assert_eq!(e, before);
    }

    #[test]
    fn the_earliest_passed_deadline_decides() {
        let mut e = Execution::queued(1, t(0), t(0), timeouts());
        assert_eq!(e.due(t(59)), None);
        assert_eq!(e.due(t(60)), Some(Deadline::Queue));
        e.apply(Event::Claim, t(10), Reporter::Ledger, Some(("n", "k")), "")
            .unwrap();
        assert_eq!(e.due(t(39)), None);
        assert_eq!(e.due(t(40)), Some(Deadline::Lease));
        e.apply(Event::Heartbeat, t(39), Reporter::Owner("k"), None, "")
            .unwrap();
        assert_eq!(e.due(t(68)), None);
        // run deadline = 10 + 100 + 5 + 2; the lease (renewed to 69) passes first
        assert_eq!(e.due(t(200)), Some(Deadline::Lease));
        e.apply(
            Event::Cancel(Reason::CancelRequested),
            t(50),
            Reporter::Ledger,
            None,
            "",
        )
        .unwrap();
        assert_eq!(e.cancel_deadline, Some(t(87)));
        e.apply(Event::Heartbeat, t(60), Reporter::Owner("k"), None, "")
            .unwrap();
        assert_eq!(e.due(t(88)), Some(Deadline::Cancel));
    }
}
