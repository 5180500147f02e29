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
        }
    }

    /// The runner that claims its executions: "local" or the queue's name.
    pub fn runner(&self) -> &str {
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
        };
        let json = serde_json::to_string(&spec).unwrap();
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }
}
