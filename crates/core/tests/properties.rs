//! Random event sequences never leave a terminal state, never yield a terminal execution
//! without `finished_at` (or without a reason when it is not `completed`), and never leave a
//! live execution without a deadline.

use std::time::Duration;

use chrono::TimeZone;
use jobward_core::{Deadline, Event, Execution, Reason, Reporter, State, Timeouts, Timestamp};
use proptest::prelude::*;

fn event() -> impl Strategy<Value = Event> {
    let reason = proptest::sample::select(Reason::ALL.to_vec());
    let deadline = proptest::sample::select(Deadline::ALL.to_vec());
    prop_oneof![
        Just(Event::Claim),
        Just(Event::Heartbeat),
        Just(Event::Complete),
        Just(Event::Cleanup),
        reason.clone().prop_map(Event::Finish),
        reason.prop_map(Event::Cancel),
        deadline.prop_map(Event::Expire),
    ]
}

/// One step of a run: an event, how much time passed before it, and whether the reporter
/// holds the current lease.
fn step() -> impl Strategy<Value = (Event, u32, bool)> {
    (event(), 0u32..120, any::<bool>())
}

fn t(s: i64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn terminal_is_forever_and_always_complete(steps in proptest::collection::vec(step(), 0..40)) {
        let timeouts = Timeouts {
            heartbeat: Duration::from_secs(30),
            run: Duration::from_secs(300),
            queue: Duration::from_secs(60),
            kill_grace: Duration::from_secs(5),
        };
        let mut e = Execution::queued(1, t(0), t(0), timeouts);
        let mut now = 0i64;
        let mut claims = 0;
        let mut terminal: Option<Execution> = None;
        for (event, dt, current_token) in steps {
            now += i64::from(dt);
            let token = format!("tok-{claims}");
            let stale = "tok-stale".to_string();
            let reporter = if current_token { Reporter::Owner(&token) } else { Reporter::Owner(&stale) };
            let next_token = format!("tok-{}", claims + 1);
            let before = e.clone();
            let result = e.apply(event, t(now), reporter, Some(("owner", &next_token)), "because");
            match &result {
                Ok(_) if event == Event::Claim => claims += 1,
                Ok(_) => {}
                Err(_) => prop_assert_eq!(&e, &before, "a refused event changed the execution"),
            }
            if let Some(frozen) = &terminal {
                prop_assert!(result.is_err(), "terminal execution accepted {}", event);
                prop_assert_eq!(&e, frozen);
            }
            if e.state.is_terminal() {
                prop_assert!(e.finished_at.is_some(), "{} without finished_at", e.state);
                prop_assert_eq!(e.pending_cancel, None);
                if e.state == State::Completed {
                    prop_assert_eq!(e.reason, None);
                } else {
                    let reason = e.reason.expect("non-completed terminal state without a reason");
                    prop_assert_eq!(reason.state(), e.state);
                    prop_assert!(e.message.as_deref().is_some_and(|m| !m.is_empty()));
                }
                terminal.get_or_insert_with(|| e.clone());
            } else {
                prop_assert!(e.finished_at.is_none());
                prop_assert!(e.next_deadline().is_some(), "live {} without a deadline", e.state);
                if e.state == State::Running {
                    prop_assert!(e.lease_expires_at.is_some() && e.run_deadline.is_some());
                    prop_assert!(e.lease_token.is_some());
                } else {
                    prop_assert!(e.start_deadline.is_some());
                }
            }
        }
    }

    /// The reaper's rule: applying the due deadline always ends a live execution.
    #[test]
    fn a_passed_deadline_always_ends_a_live_execution(claim in any::<bool>(), cancel in any::<bool>(), at in 0i64..1000) {
        let mut e = Execution::queued(1, t(0), t(0), Timeouts::default());
        if claim {
            e.apply(Event::Claim, t(1), Reporter::Ledger, Some(("o", "k")), "").unwrap();
            if cancel {
                e.apply(Event::Cancel(Reason::CancelRequested), t(2), Reporter::Ledger, None, "").unwrap();
            }
        }
        let now = t(at * 100);
        if let Some(d) = e.due(now) {
            e.apply(Event::Expire(d), now, Reporter::Ledger, None, "deadline passed").unwrap();
            prop_assert!(e.state.is_terminal());
        } else {
            prop_assert!(e.next_deadline().unwrap() > now);
        }
    }
}
