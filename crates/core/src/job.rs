//! Job definitions: what the operator configured, validated.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deadline::Timeouts;
use crate::duration::serde_ms;
use crate::retry::RetryPolicy;
use crate::schedule::{Misfire, Schedule, ScheduleSpec};

/// What happens when a job fires while an execution of it is still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Record a terminal `skipped` execution naming the one still live.
    #[default]
    Skip,
    /// Queue it; it starts when the live one is over.
    Queue,
    /// Run both.
    Allow,
    /// Cancel the live one (reason `replaced`) and run the new one.
    Replace,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Allow => "allow",
            Overlap::Replace => "replace",
        }
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            "allow" => Ok(Overlap::Allow),
            "replace" => Ok(Overlap::Replace),
            _ => Err(format!(
                "unknown overlap policy '{s}' (expected skip, queue, allow or replace)"
            )),
        }
    }
}

/// How much terminal history of a job to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Keep at most this many terminal executions (newest first).
    pub keep_last: Option<u32>,
    /// Delete terminal executions that finished longer ago than this.
    #[serde(with = "serde_ms::option")]
    pub max_age: Option<Duration>,
}

impl Default for History {
    fn default() -> Self {
        History {
            keep_last: Some(1000),
            max_age: Some(Duration::from_secs(90 * 86_400)),
        }
    }
}

/// How long a run of a job is expected to take (`expected_duration = "2m..30m"`): shorter
/// than `min` is "too short", longer than `max` "overdue". Neither kills a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DurationBounds {
    #[serde(with = "serde_ms::option", default)]
    pub min: Option<Duration>,
    #[serde(with = "serde_ms::option", default)]
    pub max: Option<Duration>,
}

impl DurationBounds {
    /// Reads `MIN..MAX`, `MIN..` or `..MAX` (durations as everywhere: "2m", "1h 30m").
    pub fn parse(s: &str) -> Result<DurationBounds, String> {
        let Some((lo, hi)) = s.split_once("..") else {
            return Err(format!(
                "'{s}' is not a range: write MIN..MAX, MIN.. or ..MAX (e.g. \"2m..30m\")"
            ));
        };
        let side = |v: &str| -> Result<Option<Duration>, String> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            crate::duration::parse_positive_duration(v)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let b = DurationBounds {
            min: side(lo)?,
            max: side(hi)?,
        };
        match (b.min, b.max) {
            (None, None) => Err(format!("'{s}' names neither bound")),
            (Some(a), Some(z)) if a > z => {
                Err(format!("'{s}': the lower bound is above the upper"))
            }
            _ => Ok(b),
        }
    }
}

impl fmt::Display for DurationBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |d: Option<Duration>| d.map(crate::duration::format_exact).unwrap_or_default();
        write!(f, "{}..{}", side(self.min), side(self.max))
    }
}

/// The runner of jobs that run outside jobward (`runner = "external"`): it records their runs
/// (`jobward exec`, pings) and the instants they missed; nobody claims their executions.
pub const EXTERNAL_RUNNER: &str = "external";

/// A validated job definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub command: String,
    #[serde(with = "schedule_serde")]
    pub schedule: Schedule,
    pub timeouts: Timeouts,
    pub overlap: Overlap,
    pub misfire: Misfire,
    /// How late an instant may fire and still count as on time.
    #[serde(with = "serde_ms")]
    pub misfire_grace: Duration,
    pub concurrency_key: Option<String>,
    pub history: History,
    pub retry: RetryPolicy,
    /// `None`: a node runs it (runner "local"). `Some(q)`: remote workers claim it from queue q.
    #[serde(default)]
    pub queue: Option<String>,
    /// Claims take higher priorities first within a queue (ties by age). A trigger may set
    /// its own.
    #[serde(default)]
    pub priority: i32,
    /// It runs outside jobward (cron, a CronJob, CI): jobward records its runs and, with a
    /// schedule, the instants that saw no start within their grace (the queue timeout).
    #[serde(default)]
    pub external: bool,
    /// How long a run is expected to take.
    #[serde(default)]
    pub expected_duration: Option<DurationBounds>,
    /// SHA-256 (hex) of the token that may send this job's pings; the secret is not kept.
    #[serde(default)]
    pub ping_token_sha256: Option<String>,
}

mod schedule_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Schedule, ser: S) -> Result<S::Ok, S::Error> {
        s.spec().serialize(ser)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let spec = ScheduleSpec::deserialize(d)?;
        Schedule::from_spec(&spec).map_err(serde::de::Error::custom)
    }
}

impl JobSpec {
    /// A manual-only job with every other setting at its default.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> JobSpec {
        JobSpec {
            name: name.into(),
            command: command.into(),
            schedule: Schedule::Manual,
            timeouts: Timeouts::default(),
            overlap: Overlap::default(),
            misfire: Misfire::default(),
            misfire_grace: Duration::from_secs(60),
            concurrency_key: None,
            history: History::default(),
            retry: RetryPolicy::default(),
            queue: None,
            priority: 0,
            external: false,
            expected_duration: None,
            ping_token_sha256: None,
        }
    }

    /// The runner that claims its executions: "local", the queue's name, or "external"
    /// (nobody: it runs outside jobward).
    pub fn runner(&self) -> &str {
        if self.external {
            return EXTERNAL_RUNNER;
        }
        self.queue.as_deref().unwrap_or(LOCAL_RUNNER)
    }
}

/// The runner name of executions that a node's own executor runs.
pub const LOCAL_RUNNER: &str = "local";

/// A name that cannot be used for a job or concurrency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{name}': {problem}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub problem: &'static str,
}

/// Job names appear in file paths, URLs and shell variables, so they are plain:
/// 1 to 100 characters of letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let err = |problem| {
        Err(NameError {
            what,
            name: name.to_string(),
            problem,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > 100 {
        return err("it is longer than 100 characters");
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return err("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("job name", "nightly-report.v2_a").is_ok());
        for bad in ["", "-x", ".hidden", "a/b", "a b", "ü", &"x".repeat(101)] {
            assert!(validate_name("job name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = JobSpec {
            name: "n".into(),
            command: "true".into(),
            schedule: Schedule::cron("0 0 2 * * *", "Europe/Berlin").unwrap(),
            timeouts: Timeouts::default(),
            overlap: Overlap::Replace,
            misfire: Misfire::Skip,
            misfire_grace: Duration::from_secs(60),
            concurrency_key: Some("reports".into()),
            history: History::default(),
            retry: RetryPolicy::default(),
            queue: Some("gpu".into()),
            priority: 3,
            external: false,
            expected_duration: Some(DurationBounds::parse("2m..30m").unwrap()),
            ping_token_sha256: Some("ab".repeat(32)),
        };
        let json = serde_json::to_string(&spec).unwrap();
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn duration_bounds_read_and_print() {
        let b = DurationBounds::parse("2m..30m").unwrap();
        assert_eq!(
            (b.min, b.max),
            (
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(1800))
            )
        );
        assert_eq!(b.to_string(), "2m..30m");
        assert_eq!(DurationBounds::parse("..1h").unwrap().to_string(), "..1h");
        assert_eq!(DurationBounds::parse("5s..").unwrap().max, None);
        for bad in ["", "..", "5m", "30m..2m", "x..1m", "1m..-1s"] {
            assert!(DurationBounds::parse(bad).is_err(), "{bad}");
        }
    }
}
