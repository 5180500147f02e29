//! The state machine: one function, `transition`, decides every state change of every
//! execution. Stores apply its answer with a compare-and-set; they never invent states.

use std::fmt;

use crate::state::{Reason, State};

/// A deadline that can pass while an execution is live (invariant 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// `queued` for longer than the queue timeout.
    Queue,
    /// `running` without a heartbeat for longer than the heartbeat timeout.
    Lease,
    /// `running` for longer than the run timeout (plus the kill grace).
    Run,
    /// A requested cancel that the owner did not confirm in time.
    Cancel,
}

impl Deadline {
    pub const ALL: [Deadline; 4] = [
        Deadline::Queue,
        Deadline::Lease,
        Deadline::Run,
        Deadline::Cancel,
    ];
}

/// Something that happens to an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// An owner takes the lease: `queued` → `running`.
    Claim,
    /// The owner renews its lease.
    Heartbeat,
    /// The owner reports success.
    Complete,
    /// The owner (or whoever settles a lost owner) reports a terminal outcome other than
    /// success: a failure, its own run-timeout kill, or the confirmation of a cancel.
    Finish(Reason),
    /// A deadline passed.
    Expire(Deadline),
    /// Someone asks for a cancel. A queued execution is cancelled at once; a running one
    /// keeps running until its owner confirms or the cancel deadline passes.
    Cancel(Reason),
    /// An operator settles a running execution as stale (`jobward cleanup --apply`).
    Cleanup,
}

impl Event {
    /// Every event, with every reason where an event takes one; used by exhaustive tests.
    pub fn all() -> Vec<Event> {
        let mut v = vec![
            Event::Claim,
            Event::Heartbeat,
            Event::Complete,
            Event::Cleanup,
        ];
        v.extend(Deadline::ALL.into_iter().map(Event::Expire));
        for r in Reason::ALL {
            v.push(Event::Finish(r));
            v.push(Event::Cancel(r));
        }
        v
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Claim => f.write_str("claim"),
            Event::Heartbeat => f.write_str("heartbeat"),
            Event::Complete => f.write_str("complete"),
            Event::Finish(r) => write!(f, "finish({r})"),
            Event::Expire(d) => write!(f, "expire({d:?})"),
            Event::Cancel(r) => write!(f, "cancel({r})"),
            Event::Cleanup => f.write_str("cleanup"),
        }
    }
}

/// The answer of `transition`: the state after the event, the reason if that state is
/// terminal and not `completed`, and the cancel still pending afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub to: State,
    pub reason: Option<Reason>,
    pub pending_cancel: Option<Reason>,
}

impl Step {
    fn live(to: State, pending_cancel: Option<Reason>) -> Step {
        Step {
            to,
            reason: None,
            pending_cancel,
        }
    }
    fn ended(reason: Reason) -> Step {
        Step {
            to: reason.state(),
            reason: Some(reason),
            pending_cancel: None,
        }
    }
    fn completed() -> Step {
        Step {
            to: State::Completed,
            reason: None,
            pending_cancel: None,
        }
    }
}

/// Why an event was refused. A refusal changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the execution is already {0}; a terminal execution never changes")]
    Terminal(State),
    #[error("'{event}' does not apply to a {state} execution")]
    NotApplicable { state: State, event: Event },
    #[error("'{reason}' is not a valid reason for '{event}'")]
    InvalidReason { event: Event, reason: Reason },
}

/// Reasons an owner may report when it finishes a running execution.
fn finish_reason_allowed(r: Reason) -> bool {
    use Reason::*;
    matches!(
        r,
        ExitCode
            | Signal
            | SpawnError
            | WorkerError
            | NodeRestarted
            | NodeLost
            | RunTimeout
            | CancelRequested
            | Replaced
            | Shutdown
            | HandedBack
    )
}

/// The whole state machine. `pending_cancel` is the cancel requested for a running execution,
/// if any.
pub fn transition(
    state: State,
    pending_cancel: Option<Reason>,
    event: Event,
) -> Result<Step, Refusal> {
    use Event::*;
    use State::*;
    if state.is_terminal() {
        return Err(Refusal::Terminal(state));
    }
    let not_applicable = Err(Refusal::NotApplicable { state, event });
    match (state, event) {
        (Queued, Claim) => Ok(Step::live(Running, None)),
        (Queued, Expire(Deadline::Queue)) => Ok(Step::ended(Reason::QueueTimeout)),
        (Queued | Running, Cancel(r)) if r.state() != Cancelled => {
            Err(Refusal::InvalidReason { event, reason: r })
        }
        (Queued, Cancel(r)) => Ok(Step::ended(r)),
        (Running, Cancel(r)) => Ok(Step::live(Running, Some(pending_cancel.unwrap_or(r)))),
        (Running, Heartbeat) => Ok(Step::live(Running, pending_cancel)),
        (Running, Complete) => Ok(Step::completed()),
        (Running, Finish(r)) if finish_reason_allowed(r) => Ok(Step::ended(r)),
        (Running, Finish(r)) => Err(Refusal::InvalidReason { event, reason: r }),
        (Running, Expire(Deadline::Lease)) => Ok(Step::ended(Reason::HeartbeatTimeout)),
        (Running, Expire(Deadline::Run)) => Ok(Step::ended(Reason::RunTimeout)),
        (Running, Expire(Deadline::Cancel)) => match pending_cancel {
            Some(r) => Ok(Step::ended(r)),
            None => not_applicable,
        },
        (Running, Cleanup) => Ok(Step::ended(Reason::ManualCleanup)),
        (Queued, Heartbeat | Complete | Finish(_) | Cleanup)
        | (Queued, Expire(Deadline::Lease | Deadline::Run | Deadline::Cancel))
        | (Running, Claim | Expire(Deadline::Queue)) => not_applicable,
        (Completed | Failed | TimedOut | Cancelled | Skipped, _) => {
            unreachable!("terminal states are refused above")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected answer for every (state, event) pair, written out independently of
    /// `transition` so that a change to either shows up here.
    fn expected(
        state: State,
        pending: Option<Reason>,
        event: Event,
    ) -> Option<(State, Option<Reason>)> {
        use Event::*;
        use State::*;
        if state.is_terminal() {
            return None;
        }
        match event {
            Claim => (state == Queued).then_some((Running, None)),
            Heartbeat => (state == Running).then_some((Running, None)),
            Complete => (state == Running).then_some((Completed, None)),
            Finish(r) => {
                let ok = state == Running
                    && !matches!(
                        r,
                        Reason::HeartbeatTimeout
                            | Reason::QueueTimeout
                            | Reason::ManualCleanup
                            | Reason::Overlap
                            | Reason::MissedSchedule
                            | Reason::Paused
                    );
                ok.then_some((r.state(), Some(r)))
            }
            Expire(Deadline::Queue) => {
                (state == Queued).then_some((TimedOut, Some(Reason::QueueTimeout)))
            }
            Expire(Deadline::Lease) => {
                (state == Running).then_some((TimedOut, Some(Reason::HeartbeatTimeout)))
            }
            Expire(Deadline::Run) => {
                (state == Running).then_some((TimedOut, Some(Reason::RunTimeout)))
            }
            Expire(Deadline::Cancel) => match (state, pending) {
                (Running, Some(r)) => Some((Cancelled, Some(r))),
                _ => None,
            },
            Cancel(r) if r.state() != Cancelled => None,
            Cancel(r) => match state {
                Queued => Some((Cancelled, Some(r))),
                _ => Some((Running, None)),
            },
            Cleanup => (state == Running).then_some((TimedOut, Some(Reason::ManualCleanup))),
        }
    }

    #[test]
    fn table_of_every_state_and_event() {
        let mut checked = 0;
        for state in State::ALL {
            let pendings: Vec<Option<Reason>> = if state == State::Running {
                vec![None, Some(Reason::CancelRequested), Some(Reason::Shutdown)]
            } else {
                vec![None]
            };
            for pending in pendings {
                for event in Event::all() {
                    let got = transition(state, pending, event);
                    match (expected(state, pending, event), got) {
                        (Some((to, reason)), Ok(step)) => {
                            assert_eq!((step.to, step.reason), (to, reason), "{state} + {event}");
                            if to.is_terminal() {
                                assert_eq!(step.pending_cancel, None);
                            }
                            if to == State::Completed {
                                assert_eq!(step.reason, None);
                            } else if to.is_terminal() {
                                assert!(step.reason.is_some(), "{state} + {event} lost its reason");
                            }
                        }
                        (None, Err(refusal)) => {
                            if state.is_terminal() {
                                assert_eq!(refusal, Refusal::Terminal(state));
                            }
                        }
                        (want, got) => panic!(
                            "{state} (pending {pending:?}) + {event}: expected {want:?}, got {got:?}"
                        ),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, (State::ALL.len() + 2) * Event::all().len());
    }

    #[test]
    fn a_pending_cancel_keeps_its_first_reason_and_survives_heartbeats() {
        let s = transition(State::Running, None, Event::Cancel(Reason::Replaced)).unwrap();
        assert_eq!(s.pending_cancel, Some(Reason::Replaced));
        let s = transition(
            State::Running,
            s.pending_cancel,
            Event::Cancel(Reason::Shutdown),
        )
        .unwrap();
        assert_eq!(s.pending_cancel, Some(Reason::Replaced));
        let s = transition(State::Running, s.pending_cancel, Event::Heartbeat).unwrap();
        assert_eq!(s.pending_cancel, Some(Reason::Replaced));
        let s = transition(
            State::Running,
            s.pending_cancel,
            Event::Expire(Deadline::Cancel),
        )
        .unwrap();
        assert_eq!((s.to, s.reason), (State::Cancelled, Some(Reason::Replaced)));
    }
}
