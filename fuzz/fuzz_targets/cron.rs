//! Cron schedules as the configuration accepts them: `schedule = "..."` with an optional
//! `timezone`, validated by `Schedule::cron`, then next fires, counting and fire plans on
//! every schedule it accepts. Nothing may panic or run unbounded.
//!
//! Input: `PATTERN` or `PATTERN 0xFF TIMEZONE` (0xFF never occurs in UTF-8). Without a time
//! zone, the configuration's default (UTC) is used.

#![no_main]

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use jobward_core::schedule::{ScheduleError, first_fire};
use jobward_core::{Misfire, Schedule, plan_fires};
use libfuzzer_sys::fuzz_target;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let (pattern, timezone) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(pattern) = std::str::from_utf8(pattern) else {
        return;
    };
    let timezone = match timezone.map(std::str::from_utf8) {
        None => "UTC",
        Some(Ok(tz)) => tz,
        Some(Err(_)) => return,
    };
    let schedule = match Schedule::cron(pattern, timezone) {
        Ok(s) => s,
        Err(e) => {
            // Refusals are errors of the right kind, never anything else.
            match &e {
                ScheduleError::Cron { .. } | ScheduleError::TimeZone(_) => {}
                ScheduleError::Interval(_) => panic!("a cron pattern refused as an interval: {e}"),
            }
            let _ = e.to_string();
            return;
        }
    };
    let _ = schedule.describe();
    // What is stored with the job reads back as the same schedule.
    let spec = schedule.spec();
    let again = Schedule::from_spec(&spec)
        .unwrap_or_else(|e| panic!("stored spec {spec:?} no longer parses: {e}"));
    assert_eq!(again, schedule);

    // A few fixed instants: the validation probe, around DST changes, a leap day, late dates.
    let instants = [
        at(2000, 1, 1, 0, 0, 0),
        at(2026, 3, 29, 0, 30, 0),
        at(2026, 10, 25, 0, 59, 59),
        at(2028, 2, 29, 23, 59, 59),
        at(2099, 12, 31, 23, 59, 59),
    ];
    for (i, t) in instants.iter().enumerate() {
        let mut cursor = *t;
        for _ in 0..5 {
            match schedule.next_after(cursor) {
                Some(next) => {
                    assert!(next > cursor, "{schedule:?}: {next} is not after {cursor}");
                    cursor = next;
                }
                None => break,
            }
        }
        // The validation probe found an instant, so the first instant after it exists.
        if i == 0 {
            assert!(
                first_fire(&schedule, *t).is_some(),
                "{schedule:?} was accepted but never fires after {t}"
            );
        }
    }

    // Counting and planning over a bounded window (at most MAX_COUNTED_INSTANTS steps).
    let from = at(2026, 1, 1, 0, 0, 0);
    let to = from + chrono::TimeDelta::hours(2);
    let span = schedule.count_between(from, to);
    if let (Some(a), Some(b)) = (span.first, span.last) {
        assert!(from <= a && a <= b && b <= to, "{schedule:?}: {span:?}");
    }
    let _ = span.describe();
    for misfire in [Misfire::RunOnce, Misfire::Skip] {
        let plan = plan_fires(&schedule, from, to, Duration::from_secs(60), misfire);
        assert!(plan.fires.len() <= jobward_core::schedule::MAX_FIRES_PER_TICK);
        for w in plan.fires.windows(2) {
            assert!(w[0].0 < w[1].0, "{schedule:?}: fires out of order {plan:?}");
        }
    }
});
