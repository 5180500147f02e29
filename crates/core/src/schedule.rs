//! Schedules (cron with seconds and a time zone, fixed interval, or manual only), their next
//! instants, and the misfire plan after downtime.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::deadline::{add, sub};
use crate::duration::format_duration;

/// When a job fires on its own.
#[derive(Clone)]
pub enum Schedule {
    /// A cron pattern with optional seconds (6 fields; 5 fields mean second 0), evaluated in
    /// a time zone with its daylight-saving rules.
    Cron {
        pattern: String,
        cron: Box<Cron>,
        tz: Tz,
    },
    /// Every fixed interval, at multiples of the interval since the Unix epoch, so that every
    /// node computes the same instants.
    Every(Duration),
    /// Only when triggered.
    Manual,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { pattern, tz, .. } => write!(f, "Cron({pattern:?}, {tz})"),
            Schedule::Every(d) => write!(f, "Every({d:?})"),
            Schedule::Manual => f.write_str("Manual"),
        }
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.spec() == other.spec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron pattern '{pattern}': {problem}")]
    Cron { pattern: String, problem: String },
    #[error("unknown time zone '{0}' (use an IANA name such as Europe/Berlin or UTC)")]
    TimeZone(String),
    #[error("interval must be at least 1s, got {0}")]
    Interval(String),
}

/// Instants fire at whole milliseconds; a shorter interval would be a typo.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Instants counted one by one before a downtime summary says "at least".
pub const MAX_COUNTED_INSTANTS: u64 = 10_000;

/// The serialisable description of a schedule, as stored with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleSpec {
    Cron { pattern: String, timezone: String },
    Every { every_ms: u64 },
    Manual,
}

impl Schedule {
    pub fn cron(pattern: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let tz = Tz::from_str(timezone).map_err(|_| ScheduleError::TimeZone(timezone.into()))?;
        let cron_err = |problem: String| ScheduleError::Cron {
            pattern: pattern.into(),
            problem,
        };
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = parser
            .parse(pattern)
            .map_err(|e| cron_err(explain_cron_error(&parser, pattern, &e.to_string())))?;
        // A field such as "," parses as selecting nothing; searching for its next instant
        // then walks a year of seconds (tens of seconds of CPU) before giving up.
        let p = &cron.pattern;
        for (field, c) in [
            ("second", &p.seconds),
            ("minute", &p.minutes),
            ("hour", &p.hours),
            ("month", &p.months),
        ] {
            if c.values().is_empty() && !c.has_modifiers() {
                return Err(cron_err(format!("its {field} field selects no value")));
            }
        }
        let s = Schedule::Cron {
            pattern: pattern.trim().to_string(),
            cron: Box::new(cron),
            tz,
        };
        // A pattern such as "0 0 0 30 2 *" parses but never fires: refuse it now.
        let probe = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date");
        if s.next_after(probe).is_none() {
            return Err(cron_err("it never fires".into()));
        }
        Ok(s)
    }

    pub fn every(d: Duration) -> Result<Schedule, ScheduleError> {
        if d < MIN_INTERVAL {
            return Err(ScheduleError::Interval(format_duration(d)));
        }
        Ok(Schedule::Every(d))
    }

    pub fn from_spec(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        match spec {
            ScheduleSpec::Cron { pattern, timezone } => Schedule::cron(pattern, timezone),
            ScheduleSpec::Every { every_ms } => Schedule::every(Duration::from_millis(*every_ms)),
            ScheduleSpec::Manual => Ok(Schedule::Manual),
        }
    }

    pub fn spec(&self) -> ScheduleSpec {
        match self {
            Schedule::Cron { pattern, tz, .. } => ScheduleSpec::Cron {
                pattern: pattern.clone(),
                timezone: tz.name().to_string(),
            },
            Schedule::Every(d) => ScheduleSpec::Every {
                every_ms: d.as_millis() as u64,
            },
            Schedule::Manual => ScheduleSpec::Manual,
        }
    }

    /// The first instant strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron { cron, tz, .. } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|dt| dt.with_timezone(&Utc)),
            Schedule::Every(d) => {
                let iv = d.as_millis() as i64;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(iv) + 1).checked_mul(iv)?;
                DateTime::from_timestamp_millis(next)
            }
            Schedule::Manual => None,
        }
    }

    /// Instants in `[from, to]`, counted up to a cap.
    pub fn count_between(&self, from: Timestamp, to: Timestamp) -> Span {
        let mut span = Span::default();
        if to < from {
            return span;
        }
        if let Schedule::Every(d) = self {
            let iv = d.as_millis() as i64;
            let first = from.timestamp_millis().div_euclid(iv) * iv;
            let first = if first < from.timestamp_millis() {
                first + iv
            } else {
                first
            };
            let last = to.timestamp_millis().div_euclid(iv) * iv;
            if last >= first {
                span.count = ((last - first) / iv + 1) as u64;
                span.first = DateTime::from_timestamp_millis(first);
                span.last = DateTime::from_timestamp_millis(last);
            }
            return span;
        }
        // `from` itself counts when it is an instant; so start just before it.
        let mut cursor = sub(from, Duration::from_millis(1));
        while let Some(next) = self.next_after(cursor) {
            if next > to {
                break;
            }
            if span.count >= MAX_COUNTED_INSTANTS {
                span.capped = true;
                // Jump to the last instant at or before `to` so the range stays true.
                if let Some(prev) = self.last_at_or_before(to) {
                    span.last = Some(prev);
                }
                break;
            }
            span.count += 1;
            span.first.get_or_insert(next);
            span.last = Some(next);
            cursor = next;
        }
        span
    }

    fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Cron { cron, tz, .. } => cron
                .find_previous_occurrence(&t.with_timezone(tz), true)
                .ok()
                .map(|dt| dt.with_timezone(&Utc)),
            Schedule::Every(d) => {
                let iv = d.as_millis() as i64;
                DateTime::from_timestamp_millis(t.timestamp_millis().div_euclid(iv) * iv)
            }
            Schedule::Manual => None,
        }
    }

    /// A short description for tables: `cron 0 0 2 * * * (Europe/Berlin)`, `every 30s`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron { pattern, tz, .. } => format!("cron {pattern} ({tz})"),
            Schedule::Every(d) => format!("every {}", format_duration(*d)),
            Schedule::Manual => "manual".into(),
        }
    }
}

/// Names the field of a cron pattern that does not parse, and says why without the parser's
/// jargon: `second field '61': ...`.
fn explain_cron_error(parser: &CronParser, pattern: &str, problem: &str) -> String {
    let problem = problem
        .trim_start_matches("Component error: ")
        .trim_start_matches("Invalid pattern: ")
        .trim_end_matches('.');
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
        6 => &[
            "second",
            "minute",
            "hour",
            "day-of-month",
            "month",
            "day-of-week",
        ],
        n => {
            return format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), got {n}"
            );
        }
    };
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if parser.parse(&probe.join(" ")).is_err() {
            return format!("{} field '{field}': {problem}", names[i]);
        }
    }
    problem.to_string()
}

/// A run of instants: how many, the first and the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    /// True when counting stopped at `MAX_COUNTED_INSTANTS`.
    pub capped: bool,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

impl Span {
    /// "3 instants between 02:00:00Z and 04:00:00Z".
    pub fn describe(&self) -> String {
        let count = if self.capped {
            format!("at least {}", self.count)
        } else {
            self.count.to_string()
        };
        let noun = if self.count == 1 {
            "instant"
        } else {
            "instants"
        };
        match (self.first, self.last) {
            (Some(a), Some(b)) if a != b => format!(
                "{count} {noun} between {} and {}",
                a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                b.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            (Some(a), _) => format!(
                "{count} {noun} at {}",
                a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            _ => format!("{count} {noun}"),
        }
    }
}

/// What to do about instants that passed while no node was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// One catch-up run for all the missed instants.
    #[default]
    RunOnce,
    /// One skipped record that says how many instants were missed, between which times.
    Skip,
}

/// The scheduler's decision for one job at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// Executions to create, oldest first: one per on-time instant. A `Some(span)` marks a
    /// catch-up run that also stands for instants missed during downtime (misfire = run_once).
    pub fires: Vec<(Timestamp, Option<Span>)>,
    /// One skipped record for the missed instants (misfire = skip).
    pub skip: Option<Span>,
    /// The scheduler cursor afterwards: the first instant after `now`.
    pub next_fire_at: Option<Timestamp>,
}

/// Most on-time instants one job fires in one tick; older ones count as missed.
pub const MAX_FIRES_PER_TICK: usize = 100;

/// Plans the fires of a job whose cursor says `next_fire_at` is the earliest instant not yet
/// handled. An instant at most `grace` old is on time and fires as itself, however many there
/// are (a scheduler that fell a few seconds behind loses nothing). Older instants were missed
/// while nothing ran: the misfire policy turns all of them into one catch-up run or one
/// skipped record — never a storm.
pub fn plan_fires(
    schedule: &Schedule,
    next_fire_at: Timestamp,
    now: Timestamp,
    grace: Duration,
    misfire: Misfire,
) -> FirePlan {
    let next = schedule.next_after(now);
    let horizon = sub(now, grace);
    // Missed: [cursor, horizon). On time: [max(cursor, horizon), now].
    let mut missed = if next_fire_at < horizon {
        schedule.count_between(next_fire_at, sub(horizon, Duration::from_millis(1)))
    } else {
        Span::default()
    };
    let mut on_time = Vec::new();
    let mut cursor = sub(next_fire_at.max(horizon), Duration::from_millis(1));
    while let Some(t) = schedule.next_after(cursor) {
        if t > now || on_time.len() as u64 >= MAX_COUNTED_INSTANTS {
            break;
        }
        on_time.push(t);
        cursor = t;
    }
    if on_time.len() > MAX_FIRES_PER_TICK {
        let older: Vec<Timestamp> = on_time
            .drain(..on_time.len() - MAX_FIRES_PER_TICK)
            .collect();
        missed.count += older.len() as u64;
        missed.first = missed.first.or(older.first().copied());
        missed.last = older.last().copied();
    }
    if on_time.is_empty() && missed.count == 0 {
        return FirePlan {
            fires: vec![],
            skip: None,
            next_fire_at: next.filter(|n| *n > next_fire_at).or(Some(next_fire_at)),
        };
    }
    let mut fires: Vec<(Timestamp, Option<Span>)> =
        on_time.into_iter().map(|t| (t, None)).collect();
    let mut skip = None;
    if missed.count > 0 {
        match misfire {
            Misfire::RunOnce => match fires.first_mut() {
                // The first on-time run also stands for what was missed.
                Some(first) => first.1 = Some(missed),
                None => fires.push((
                    missed.last.expect("a missed span has a last instant"),
                    Some(missed),
                )),
            },
            Misfire::Skip => skip = Some(missed),
        }
    }
    FirePlan {
        fires,
        skip,
        next_fire_at: next,
    }
}

/// The cursor for a job that was just defined (or whose schedule changed): its first instant
/// after `now`. Past instants of a new schedule are never fired.
pub fn first_fire(schedule: &Schedule, now: Timestamp) -> Option<Timestamp> {
    schedule.next_after(now)
}

/// `t + d` for callers that only have the core crate.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    add(t, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cron_error_names_the_field() {
        let e = Schedule::cron("61 * * * * *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(e.contains("second field '61'"), "{e}");
        let e = Schedule::cron("0 25 * * *", "UTC").unwrap_err().to_string();
        assert!(e.contains("hour field '25'"), "{e}");
        let e = Schedule::cron("* * *", "UTC").unwrap_err().to_string();
        assert!(e.contains("expected 5 fields"), "{e}");
        assert!(!e.contains("Component error"), "{e}");
    }

    fn utc(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_with_seconds_and_time_zone() {
        let s = Schedule::cron("0 0 2 * * *", "Europe/Berlin").unwrap();
        // 02:00 Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z")),
            Some(utc("2026-01-11T01:00:00Z"))
        );
        // ... and 00:00 UTC in summer.
        assert_eq!(
            s.next_after(utc("2026-07-10T12:00:00Z")),
            Some(utc("2026-07-11T00:00:00Z"))
        );
        let five = Schedule::cron("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            five.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:15:00Z"))
        );
    }

    #[test]
    fn dst_gap_and_overlap_fire_once() {
        // Berlin springs forward on 2026-03-29 at 02:00 → 03:00: 02:30 does not exist.
        let s = Schedule::cron("0 30 2 * * *", "Europe/Berlin").unwrap();
        let after_gap = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            after_gap,
            utc("2026-03-29T01:00:00Z"),
            "runs at the first instant after the gap"
        );
        // Berlin falls back on 2026-10-25 at 03:00 → 02:00: 02:30 happens twice; fire once.
        let span = s.count_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
        assert_eq!(span.count, 1);
    }

    #[test]
    fn bad_patterns_and_zones_are_refused() {
        assert!(matches!(
            Schedule::cron("61 * * * * *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::cron("not cron", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::cron("0 0 0 30 2 *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::cron("* * * * *", "Mars/Olympus"),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(Schedule::every(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn a_field_that_selects_nothing_is_refused_at_once() {
        // Found by fuzzing (fuzz/regressions/cron): "," parsed as an empty second field, and
        // the never-fires probe spun for tens of seconds.
        for pattern in [", */6 * * * *", "0 , * * * *", "0 0 , * * *", "0 0 0 1 , *"] {
            let started = std::time::Instant::now();
            let e = Schedule::cron(pattern, "UTC").unwrap_err();
            assert!(
                matches!(&e, ScheduleError::Cron { problem, .. } if problem.contains("selects no value")),
                "{pattern}: {e}"
            );
            assert!(started.elapsed() < Duration::from_secs(1), "{pattern}");
        }
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let s = Schedule::every(Duration::from_secs(30)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:30Z")),
            Some(utc("2026-01-01T00:01:00Z"))
        );
        let span = s.count_between(utc("2026-01-01T00:00:30Z"), utc("2026-01-01T00:02:00Z"));
        assert_eq!(span.count, 4);
        assert_eq!(span.first, Some(utc("2026-01-01T00:00:30Z")));
        assert_eq!(span.last, Some(utc("2026-01-01T00:02:00Z")));
    }

    #[test]
    fn on_time_instant_fires_normally() {
        let s = Schedule::every(Duration::from_secs(60)).unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:01:00Z"),
            utc("2026-01-01T00:01:00.300Z"),
            Duration::from_secs(60),
            Misfire::Skip,
        );
        assert_eq!(p.fires, vec![(utc("2026-01-01T00:01:00Z"), None)]);
        assert_eq!(p.skip, None);
        assert_eq!(p.next_fire_at, Some(utc("2026-01-01T00:02:00Z")));
    }

    #[test]
    fn nothing_due_keeps_the_cursor() {
        let s = Schedule::every(Duration::from_secs(60)).unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:02:00Z"),
            utc("2026-01-01T00:01:30Z"),
            Duration::from_secs(60),
            Misfire::Skip,
        );
        assert_eq!(
            p,
            FirePlan {
                fires: vec![],
                skip: None,
                next_fire_at: Some(utc("2026-01-01T00:02:00Z"))
            }
        );
    }

    #[test]
    fn downtime_yields_one_catch_up_run() {
        let s = Schedule::cron("0 0 * * * *", "UTC").unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T01:00:00Z"),
            utc("2026-01-01T06:30:00Z"),
            Duration::from_secs(60),
            Misfire::RunOnce,
        );
        let (at, catch_up) = p.fires[0];
        assert_eq!(p.fires.len(), 1);
        assert_eq!(at, utc("2026-01-01T06:00:00Z"));
        let span = catch_up.unwrap();
        assert_eq!(span.count, 6);
        assert_eq!(
            span.describe(),
            "6 instants between 2026-01-01T01:00:00Z and 2026-01-01T06:00:00Z"
        );
        assert_eq!(p.skip, None);
        assert_eq!(p.next_fire_at, Some(utc("2026-01-01T07:00:00Z")));
    }

    #[test]
    fn downtime_yields_one_skip_record_and_the_on_time_instant_still_fires() {
        let s = Schedule::every(Duration::from_secs(10)).unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:00:10Z"),
            utc("2026-01-01T00:05:00.5Z"),
            Duration::from_secs(5),
            Misfire::Skip,
        );
        assert_eq!(p.fires, vec![(utc("2026-01-01T00:05:00Z"), None)]);
        let missed = p.skip.unwrap();
        assert_eq!(missed.count, 29);
        assert_eq!(missed.first, Some(utc("2026-01-01T00:00:10Z")));
        assert_eq!(missed.last, Some(utc("2026-01-01T00:04:50Z")));
        // Entirely late: everything is missed and nothing fires.
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:00:10Z"),
            utc("2026-01-01T00:05:07Z"),
            Duration::from_secs(5),
            Misfire::Skip,
        );
        assert_eq!(p.fires, vec![]);
        assert_eq!(p.skip.unwrap().count, 30);
    }

    #[test]
    fn a_scheduler_that_fell_behind_fires_every_on_time_instant() {
        let s = Schedule::every(Duration::from_secs(1)).unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:00:10Z"),
            utc("2026-01-01T00:00:13.2Z"),
            Duration::from_secs(60),
            Misfire::RunOnce,
        );
        let at: Vec<Timestamp> = p.fires.iter().map(|f| f.0).collect();
        assert_eq!(
            at,
            vec![
                utc("2026-01-01T00:00:10Z"),
                utc("2026-01-01T00:00:11Z"),
                utc("2026-01-01T00:00:12Z"),
                utc("2026-01-01T00:00:13Z")
            ]
        );
        assert!(
            p.fires.iter().all(|f| f.1.is_none()),
            "on-time instants are not catch-ups"
        );
        assert_eq!(p.next_fire_at, Some(utc("2026-01-01T00:00:14Z")));
    }

    #[test]
    fn missed_instants_ride_on_the_first_on_time_run() {
        let s = Schedule::every(Duration::from_secs(10)).unwrap();
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:01:00.5Z"),
            Duration::from_secs(15),
            Misfire::RunOnce,
        );
        // 00:00 .. 00:40 are missed (5), 00:50 and 01:00 are on time.
        assert_eq!(p.fires.len(), 2);
        assert_eq!(p.fires[0].0, utc("2026-01-01T00:00:50Z"));
        assert_eq!(p.fires[0].1.unwrap().count, 5);
        assert_eq!(p.fires[1], (utc("2026-01-01T00:01:00Z"), None));
        // A storm is impossible: at most MAX_FIRES_PER_TICK fire, the rest count as missed.
        let p = plan_fires(
            &s,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-02T00:00:00Z"),
            Duration::from_secs(86_400),
            Misfire::Skip,
        );
        assert_eq!(p.fires.len(), MAX_FIRES_PER_TICK);
        assert_eq!(p.skip.unwrap().count, 8_641 - MAX_FIRES_PER_TICK as u64);
    }

    #[test]
    fn a_long_downtime_is_counted_with_a_cap() {
        let s = Schedule::cron("* * * * * *", "UTC").unwrap();
        let span = s.count_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00Z"));
        assert!(span.capped);
        assert_eq!(span.count, MAX_COUNTED_INSTANTS);
        assert_eq!(span.last, Some(utc("2026-01-02T00:00:00Z")));
        assert!(span.describe().starts_with("at least 10000 instants"));
    }
}
