//! A job definition (the fields of a `[[job]]`, from the configuration file or from the API)
//! made into a validated `JobSpec`, and back. Both surfaces validate here, so they accept the
//! same fields, in the same forms, with the same one-line errors.

use std::time::Duration;

use jobward_core::duration::{format_exact, parse_duration, parse_positive_duration};
use jobward_core::{
    DurationBounds, EXTERNAL_RUNNER, History, JobSpec, LOCAL_RUNNER, Misfire, Overlap, RetryPolicy,
    Schedule, ScheduleSpec, Timeouts, validate_name,
};
use jobward_protocol::{HistoryDefinition, JobDefinition, RetryDefinition};

/// A problem with one field of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field '{}': {}", self.field, self.problem)
    }
}

pub type Result<T> = std::result::Result<T, FieldError>;

fn err(field: &str, problem: impl std::fmt::Display) -> FieldError {
    FieldError {
        field: field.to_string(),
        problem: problem.to_string(),
    }
}

/// What a job does not say for itself: the configuration's `[defaults]`, flags and the
/// project's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefaults {
    pub timeouts: Timeouts,
    pub overlap: Overlap,
    pub misfire: Misfire,
    pub misfire_grace: Duration,
    pub history: History,
    pub retry: RetryPolicy,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            timeouts: Timeouts::default(),
            overlap: Overlap::Skip,
            misfire: Misfire::RunOnce,
            misfire_grace: Duration::from_secs(60),
            history: History::default(),
            retry: RetryPolicy::default(),
        }
    }
}

pub fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    v.as_deref()
        .map(|s| parse_duration(s).map_err(|e| err(field, e)))
        .transpose()
        .map(|d| d.unwrap_or(default))
}

pub fn positive(field: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    v.as_deref()
        .map(|s| parse_positive_duration(s).map_err(|e| err(field, e)))
        .transpose()
        .map(|d| d.unwrap_or(default))
}

pub fn heartbeat(field: &str, d: Duration) -> Result<Duration> {
    if d < Duration::from_secs(1) {
        return Err(err(
            field,
            "must be at least 1s (leases are renewed three times per heartbeat timeout)",
        ));
    }
    Ok(d)
}

pub fn overlap(field: &str, v: &Option<String>, default: Overlap) -> Result<Overlap> {
    v.as_deref()
        .map(|s| s.parse::<Overlap>().map_err(|e| err(field, e)))
        .transpose()
        .map(|o| o.unwrap_or(default))
}

pub fn misfire(field: &str, v: &Option<String>, default: Misfire) -> Result<Misfire> {
    match v.as_deref() {
        None => Ok(default),
        Some("run_once") => Ok(Misfire::RunOnce),
        Some("skip") => Ok(Misfire::Skip),
        Some(other) => Err(err(
            field,
            format!("unknown misfire policy '{other}' (expected run_once or skip)"),
        )),
    }
}

pub fn history(field: &str, h: Option<&HistoryDefinition>, default: History) -> Result<History> {
    let Some(h) = h else { return Ok(default) };
    let keep_last = match h.keep_last {
        None => default.keep_last,
        Some(n) if n < 1 => {
            return Err(err(
                &format!("{field}.keep_last"),
                format!("must be at least 1, got {n}"),
            ));
        }
        Some(n) => Some(n.min(u32::MAX as i64) as u32),
    };
    let max_age = match &h.max_age {
        None => default.max_age,
        Some(s) => {
            Some(parse_positive_duration(s).map_err(|e| err(&format!("{field}.max_age"), e))?)
        }
    };
    Ok(History { keep_last, max_age })
}

pub fn retry(
    field: &str,
    r: Option<&RetryDefinition>,
    default: RetryPolicy,
) -> Result<RetryPolicy> {
    let Some(r) = r else { return Ok(default) };
    let max_attempts = match r.max_attempts {
        None => default.max_attempts,
        Some(n) if !(1..=1000).contains(&n) => {
            return Err(err(
                &format!("{field}.max_attempts"),
                format!("must be between 1 and 1000, got {n}"),
            ));
        }
        Some(n) => n as u32,
    };
    let backoff = duration(&format!("{field}.backoff"), &r.backoff, default.backoff)?;
    let max_backoff = duration(
        &format!("{field}.max_backoff"),
        &r.max_backoff,
        default.max_backoff.max(backoff),
    )?;
    if max_backoff < backoff {
        return Err(err(
            &format!("{field}.max_backoff"),
            "must not be shorter than backoff",
        ));
    }
    Ok(RetryPolicy {
        max_attempts,
        backoff,
        max_backoff,
    })
}

/// A job's `schedule` (cron, with `timezone`), `every`, or neither (manual only).
fn schedule(j: &JobDefinition) -> Result<Schedule> {
    match (&j.schedule, &j.every) {
        (Some(_), Some(_)) => Err(err(
            "every",
            "a job has either 'schedule' (cron) or 'every', not both",
        )),
        (Some(cron), None) => {
            Schedule::cron(cron, j.timezone.as_deref().unwrap_or("UTC")).map_err(|e| match e {
                jobward_core::schedule::ScheduleError::TimeZone(_) => err("timezone", e),
                _ => err("schedule", e),
            })
        }
        (None, Some(every)) => {
            if j.timezone.is_some() {
                return Err(err("timezone", "only applies to a cron 'schedule'"));
            }
            let d = parse_positive_duration(every).map_err(|e| err("every", e))?;
            Schedule::every(d).map_err(|e| err("every", e))
        }
        (None, None) => {
            if j.timezone.is_some() {
                return Err(err("timezone", "only applies to a cron 'schedule'"));
            }
            Ok(Schedule::Manual)
        }
    }
}

/// Makes a definition a job. `has_limit` says whether a concurrency key has a limit.
/// `name` is the job's name (already checked by the caller: it says where the name came from).
pub fn job_spec(
    name: String,
    j: &JobDefinition,
    d: &JobDefaults,
    has_limit: &dyn Fn(&str) -> bool,
) -> Result<JobSpec> {
    let external = match j.runner.as_deref() {
        None | Some(LOCAL_RUNNER) => false,
        Some(EXTERNAL_RUNNER) => true,
        Some(other) => {
            return Err(err(
                "runner",
                format!(
                    "unknown runner '{other}' (expected local or external; for remote workers set 'queue')"
                ),
            ));
        }
    };
    if external && j.queue.is_some() {
        return Err(err(
            "queue",
            "an external job runs outside jobward: nobody claims it from a queue",
        ));
    }
    if j.grace.is_some() && !external {
        return Err(err(
            "grace",
            "only applies to a job with runner = \"external\" (for other jobs: queue_timeout)",
        ));
    }
    if external && j.queue_timeout.is_some() {
        return Err(err(
            "queue_timeout",
            "an external job has a 'grace' instead (how late its start may come)",
        ));
    }
    if external && j.retry.as_ref().and_then(|r| r.max_attempts).unwrap_or(1) > 1 {
        return Err(err(
            "retry.max_attempts",
            "jobward cannot retry a job it does not run (runner = \"external\")",
        ));
    }
    if j.ping_token_env.is_some() {
        return Err(err(
            "ping_token_env",
            "is read from the configuration file only; send ping_token",
        ));
    }
    let ping_token_sha256 = match &j.ping_token {
        None => None,
        Some(t) if t.trim().len() < 16 => {
            return Err(err("ping_token", "must be at least 16 characters"));
        }
        Some(t) => Some(sha256_hex(t.trim())),
    };
    let expected_duration = j
        .expected_duration
        .as_deref()
        .map(|s| DurationBounds::parse(s).map_err(|e| err("expected_duration", e)))
        .transpose()?;
    // A job with a queue and no command is a handler job: a worker that registered a handler
    // for its name runs it. Without a queue a node must run it, so it needs a command (an
    // external job's command is only for the record).
    let remote = j.queue.as_deref().is_some_and(|q| q != LOCAL_RUNNER);
    let command = match j.command.as_deref().map(str::trim) {
        None if remote || external => String::new(),
        None => {
            return Err(err(
                "command",
                "is missing (a job without a command needs a queue: a worker's handler for its name runs it)",
            ));
        }
        Some("") => return Err(err("command", "is empty")),
        Some(_) => j.command.clone().unwrap_or_default(),
    };
    let schedule = schedule(j)?;
    if let Some(k) = &j.concurrency_key {
        validate_name("concurrency key", k).map_err(|e| err("concurrency_key", e))?;
        if !has_limit(k) {
            return Err(err(
                "concurrency_key",
                format!("'{k}' has no limit in [concurrency] (add: {k} = 1)"),
            ));
        }
    }
    let timeouts = Timeouts {
        heartbeat: heartbeat(
            "heartbeat_timeout",
            positive(
                "heartbeat_timeout",
                &j.heartbeat_timeout,
                d.timeouts.heartbeat,
            )?,
        )?,
        run: positive("run_timeout", &j.run_timeout, d.timeouts.run)?,
        queue: if external {
            positive("grace", &j.grace, DEFAULT_GRACE)?
        } else {
            positive("queue_timeout", &j.queue_timeout, d.timeouts.queue)?
        },
        kill_grace: duration("kill_grace", &j.kill_grace, d.timeouts.kill_grace)?,
    };
    Ok(JobSpec {
        name,
        command,
        schedule,
        timeouts,
        overlap: overlap("overlap", &j.overlap, d.overlap)?,
        misfire: misfire("misfire", &j.misfire, d.misfire)?,
        misfire_grace: duration("misfire_grace", &j.misfire_grace, d.misfire_grace)?,
        concurrency_key: j.concurrency_key.clone(),
        history: history("history", j.history.as_ref(), d.history)?,
        retry: if external {
            RetryPolicy {
                max_attempts: 1,
                ..d.retry
            }
        } else {
            retry("retry", j.retry.as_ref(), d.retry)?
        },
        queue: match &j.queue {
            None => None,
            Some(q) if q == LOCAL_RUNNER => None,
            Some(q) if q == EXTERNAL_RUNNER => {
                return Err(err(
                    "queue",
                    "'external' is not a queue: for a job that runs outside jobward set runner = \"external\"",
                ));
            }
            Some(q) => {
                validate_name("queue name", q).map_err(|e| err("queue", e))?;
                Some(q.clone())
            }
        },
        priority: match j.priority {
            None => 0,
            Some(p) if (-1000..=1000).contains(&p) => p as i32,
            Some(p) => {
                return Err(err(
                    "priority",
                    format!("must be between -1000 and 1000, got {p}"),
                ));
            }
        },
        external,
        expected_duration,
        ping_token_sha256,
    })
}

/// How late an external job's start may come by default before its instant is missed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// Lowercase hex SHA-256: how ping tokens are kept.
pub fn sha256_hex(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A job's whole definition, every field explicit; `job_spec` of it gives the same job back.
pub fn definition(spec: &JobSpec) -> JobDefinition {
    let (schedule, every, timezone) = match spec.schedule.spec() {
        ScheduleSpec::Cron { pattern, timezone } => (Some(pattern), None, Some(timezone)),
        ScheduleSpec::Every { every_ms } => (
            None,
            Some(format_exact(Duration::from_millis(every_ms))),
            None,
        ),
        ScheduleSpec::Manual => (None, None, None),
    };
    JobDefinition {
        name: Some(spec.name.clone()),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        schedule,
        every,
        timezone,
        heartbeat_timeout: Some(format_exact(spec.timeouts.heartbeat)),
        run_timeout: Some(format_exact(spec.timeouts.run)),
        queue_timeout: (!spec.external).then(|| format_exact(spec.timeouts.queue)),
        kill_grace: Some(format_exact(spec.timeouts.kill_grace)),
        overlap: Some(spec.overlap.to_string()),
        misfire: Some(
            match spec.misfire {
                Misfire::RunOnce => "run_once",
                Misfire::Skip => "skip",
            }
            .to_string(),
        ),
        misfire_grace: Some(format_exact(spec.misfire_grace)),
        concurrency_key: spec.concurrency_key.clone(),
        history: Some(HistoryDefinition {
            keep_last: spec.history.keep_last.map(i64::from),
            max_age: spec.history.max_age.map(format_exact),
        }),
        retry: (!spec.external).then(|| RetryDefinition {
            max_attempts: Some(i64::from(spec.retry.max_attempts)),
            backoff: Some(format_exact(spec.retry.backoff)),
            max_backoff: Some(format_exact(spec.retry.max_backoff)),
        }),
        queue: spec.queue.clone(),
        priority: Some(i64::from(spec.priority)),
        runner: spec.external.then(|| EXTERNAL_RUNNER.to_string()),
        grace: spec.external.then(|| format_exact(spec.timeouts.queue)),
        expected_duration: spec.expected_duration.map(|b| b.to_string()),
        // The secret is not kept: a definition read back keeps the job's token by leaving
        // the field out (see `keep_ping_token`).
        ping_token: None,
        ping_token_env: None,
        paused: None,
    }
}

/// RFC 7386 JSON merge patch: `patch`'s fields replace `target`'s, `null` removes one,
/// objects merge field by field.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(j: JobDefinition) -> Result<JobSpec> {
        job_spec("j".into(), &j, &JobDefaults::default(), &|k| k == "db")
    }

    #[test]
    fn a_definition_round_trips() {
        let j = JobDefinition {
            command: Some("echo hi".into()),
            schedule: Some("*/5 * * * *".into()),
            timezone: Some("Europe/Berlin".into()),
            run_timeout: Some("1h30m".into()),
            retry: Some(RetryDefinition {
                max_attempts: Some(3),
                backoff: Some("1500ms".into()),
                max_backoff: None,
            }),
            concurrency_key: Some("db".into()),
            priority: Some(7),
            ..Default::default()
        };
        let spec = spec_of(j).unwrap();
        let back = spec_of(definition(&spec)).unwrap();
        assert_eq!(spec, back);
        let every = spec_of(JobDefinition {
            queue: Some("q".into()),
            every: Some("90s".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(every.command, "");
        assert_eq!(spec_of(definition(&every)).unwrap(), every);
    }

    #[test]
    fn external_jobs_and_bounds() {
        let spec = spec_of(JobDefinition {
            runner: Some("external".into()),
            every: Some("2m".into()),
            grace: Some("30s".into()),
            expected_duration: Some("2m..30m".into()),
            ping_token: Some("a-ping-token-of-enough-length".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(spec.external && spec.command.is_empty());
        assert_eq!(spec.runner(), "external");
        assert_eq!(spec.timeouts.queue, Duration::from_secs(30));
        assert_eq!(spec.retry.max_attempts, 1);
        let b = spec.expected_duration.unwrap();
        assert_eq!(
            (b.min, b.max),
            (
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(1800))
            )
        );
        let back = definition(&spec);
        assert_eq!(back.grace.as_deref(), Some("30s"));
        assert_eq!(back.ping_token, None, "the secret is never shown");
        let again = spec_of(back).unwrap();
        assert_eq!(
            JobSpec {
                ping_token_sha256: spec.ping_token_sha256.clone(),
                ..again
            },
            spec
        );
        let bad = |j: JobDefinition| spec_of(j).unwrap_err().field;
        assert_eq!(
            bad(JobDefinition {
                runner: Some("cloud".into()),
                ..Default::default()
            }),
            "runner"
        );
        assert_eq!(
            bad(JobDefinition {
                command: Some("x".into()),
                grace: Some("1m".into()),
                ..Default::default()
            }),
            "grace"
        );
        assert_eq!(
            bad(JobDefinition {
                command: Some("x".into()),
                expected_duration: Some("30m..2m".into()),
                ..Default::default()
            }),
            "expected_duration"
        );
        assert_eq!(
            bad(JobDefinition {
                command: Some("x".into()),
                expected_duration: Some("30m".into()),
                ..Default::default()
            }),
            "expected_duration"
        );
        assert_eq!(
            bad(JobDefinition {
                runner: Some("external".into()),
                ping_token: Some("short".into()),
                ..Default::default()
            }),
            "ping_token"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |j: JobDefinition| spec_of(j).unwrap_err().to_string();
        assert!(bad(JobDefinition::default()).starts_with("field 'command': is missing"));
        assert_eq!(
            bad(JobDefinition {
                command: Some("x".into()),
                run_timeout: Some("soon".into()),
                ..Default::default()
            })
            .split(':')
            .next(),
            Some("field 'run_timeout'")
        );
        assert!(
            bad(JobDefinition {
                command: Some("x".into()),
                concurrency_key: Some("nope".into()),
                ..Default::default()
            })
            .contains("has no limit")
        );
    }

    #[test]
    fn merge_patch_replaces_removes_and_merges() {
        let mut t = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4});
        merge_patch(
            &mut t,
            &serde_json::json!({"a": 5, "b": {"c": null}, "e": null, "f": 6}),
        );
        assert_eq!(t, serde_json::json!({"a": 5, "b": {"d": 3}, "f": 6}));
    }
}
