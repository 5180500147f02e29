//! The configuration file: TOML, unknown keys rejected, every error one line naming the file,
//! the job and the field. Parsed into raw structs, then validated into ready objects.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobward_core::duration::{parse_duration, parse_positive_duration};
use jobward_core::{History, JobSpec, Misfire, Overlap, RetryPolicy, Timeouts, validate_name};
use jobward_protocol::{HistoryDefinition, JobDefinition, RetryDefinition};
use jobward_server::alerts::{AlertKind, Webhook};
use jobward_server::health::HealthSettings;
use jobward_server::http::{Role, Token};
pub use jobward_server::jobdef::JobDefaults;
use jobward_server::jobdef::{self, FieldError};
use jobward_server::telemetry::TelemetryConfig;
use serde::Deserialize;

/// A configuration error, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub concurrency: BTreeMap<String, i64>,
    #[serde(default)]
    pub job: Vec<RawJob>,
    #[serde(default)]
    pub token: Vec<RawToken>,
    #[serde(default)]
    pub alert: Vec<RawAlert>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    pub url: Option<String>,
    pub on: Option<Vec<String>>,
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub db: Option<String>,
    pub bind: Option<String>,
    pub public_url: Option<String>,
    pub node_name: Option<String>,
    pub log_dir: Option<String>,
    pub log_max_bytes: Option<i64>,
    pub max_running: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub reaper_interval: Option<String>,
    pub poll_interval: Option<String>,
    pub retention_interval: Option<String>,
    pub pg_idle_in_transaction_timeout: Option<String>,
    pub pg_lock_timeout: Option<String>,
    pub log_format: Option<String>,
    pub api_commands: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub heartbeat_timeout: Option<String>,
    pub run_timeout: Option<String>,
    pub queue_timeout: Option<String>,
    pub kill_grace: Option<String>,
    pub overlap: Option<String>,
    pub misfire: Option<String>,
    pub misfire_grace: Option<String>,
    pub history: Option<HistoryDefinition>,
    pub retry: Option<RetryDefinition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub long_running_after: Option<String>,
    pub warn_long_running: Option<i64>,
}

/// A `[[job]]`: the same definition the API's `PUT /api/jobs/{name}` takes.
pub type RawJob = JobDefinition;

/// Server settings after defaults, file and flags were merged.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub db: String,
    pub bind: std::net::SocketAddr,
    /// The URL runs and workers reach this server at (default: from `bind`).
    pub public_url: Option<String>,
    pub node_name: Option<String>,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub max_running: u32,
    pub shutdown_grace: Duration,
    pub reaper_interval: Duration,
    pub poll_interval: Duration,
    pub retention_interval: Duration,
    pub store: jobward_store::StoreOptions,
    pub log_format: LogFormat,
    /// Jobs with a `command` may be created and changed through the API (admin role).
    pub api_commands: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format '{other}' (expected text or json)"
            )),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: String,
    pub server: ServerSettings,
    pub defaults: Timeouts,
    /// What a job does not say for itself (file and API jobs alike).
    pub job_defaults: JobDefaults,
    pub health: HealthSettings,
    pub limits: BTreeMap<String, u32>,
    pub jobs: Vec<JobSpec>,
    pub tokens: Vec<Token>,
    pub alerts: Vec<Webhook>,
    /// OTLP export of execution traces, when an endpoint is configured.
    pub telemetry: Option<TelemetryConfig>,
}

pub const DEFAULT_DB: &str = "sqlite://jobward.db";

/// Overrides from flags and environment, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub db: Option<String>,
    pub bind: Option<String>,
    /// `ROLE:SECRET` pairs, comma-separated (JOBWARD_TOKENS).
    pub tokens: Option<String>,
    pub node_name: Option<String>,
    pub log_dir: Option<String>,
    pub max_running: Option<u32>,
    pub heartbeat_timeout: Option<String>,
    pub run_timeout: Option<String>,
    pub queue_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub long_running_after: Option<String>,
    pub warn_long_running: Option<u64>,
    /// OTEL_EXPORTER_OTLP_ENDPOINT.
    pub otlp_endpoint: Option<String>,
    /// OTEL_SERVICE_NAME.
    pub service_name: Option<String>,
}

impl Overrides {
    /// The overrides every command takes from the environment.
    pub fn from_env() -> Overrides {
        Overrides {
            tokens: std::env::var("JOBWARD_TOKENS").ok(),
            ..Default::default()
        }
    }

    /// Adds the OpenTelemetry variables (for `serve` and `check` only: a stray variable must
    /// not stop `runs list`).
    pub fn with_telemetry_env(mut self) -> Overrides {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        self.otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        self.service_name = var("OTEL_SERVICE_NAME");
        self
    }
}

/// Where a problem is: "file: job 'x': field 'y': ..." .
struct Ctx<'a> {
    file: &'a str,
    job: Option<String>,
}

impl Ctx<'_> {
    /// A definition's field error, said of this file (and job).
    fn field(&self, e: FieldError) -> ConfigError {
        self.err(&e.field, e.problem)
    }
    fn err(&self, field: &str, problem: impl std::fmt::Display) -> ConfigError {
        match &self.job {
            Some(j) => ConfigError(format!(
                "{}: job '{j}': field '{field}': {problem}",
                self.file
            )),
            None => ConfigError(format!("{}: field '{field}': {problem}", self.file)),
        }
    }
    fn dur(
        &self,
        field: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        v.as_deref()
            .map(|s| parse_duration(s).map_err(|e| self.err(field, e)))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }
    fn pos(
        &self,
        field: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        v.as_deref()
            .map(|s| parse_positive_duration(s).map_err(|e| self.err(field, e)))
            .transpose()
            .map(|d| d.unwrap_or(default))
    }
    fn at_least(
        &self,
        field: &str,
        v: Option<i64>,
        min: i64,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            Some(n) if n < min => Err(self.err(field, format!("must be at least {min}, got {n}"))),
            Some(n) if n > u32::MAX as i64 => Err(self.err(field, format!("is too large: {n}"))),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    }
}

/// Reads and validates a configuration file. `None` means no file: defaults only.
///
/// Relative paths of the ledger (`sqlite://PATH`) and of `log_dir`, written in the file or
/// defaulted, are relative to the file's directory, so every command that reads the same
/// file finds the same ledger wherever it runs. Flags and environment variables are
/// relative to the working directory.
pub fn load(path: Option<&Path>, o: &Overrides) -> Result<Settings, ConfigError> {
    let (source, raw, base) = match path {
        None => ("(defaults)".to_string(), RawConfig::default(), None),
        Some(p) => {
            let shown = p.display().to_string();
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read config {shown}: {e}")))?;
            let raw = parse(&shown, &text)?;
            (
                shown,
                raw,
                Some(p.parent().unwrap_or(Path::new("")).to_path_buf()),
            )
        }
    };
    validate(&source, raw, o, base.as_deref())
}

/// Parses and validates configuration text (`file` names it in errors). Relative paths stay
/// relative to the working directory.
pub fn load_str(file: &str, text: &str, o: &Overrides) -> Result<Settings, ConfigError> {
    validate(file, parse(file, text)?, o, None)
}

/// The `[server] log_format` of a configuration file, if it can be read (before logging
/// starts; any error is reported later by the command itself).
pub fn peek_log_format(path: &Path) -> Option<LogFormat> {
    let text = std::fs::read_to_string(path).ok()?;
    let raw: RawConfig = toml::from_str(&text).ok()?;
    raw.server.log_format?.parse().ok()
}

/// A relative path of the file, made relative to the file's directory.
fn beside(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
        _ => p,
    }
}

/// A `sqlite:` URL of the file with a relative path, made relative to the file's directory.
fn sqlite_beside(base: Option<&Path>, url: String) -> String {
    let Some(base) = base.filter(|b| !b.as_os_str().is_empty()) else {
        return url;
    };
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url;
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" || Path::new(path).is_absolute() {
        return url;
    }
    let joined = base.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

/// Parses TOML, turning a parse error into "file:line:col: message" on one line.
pub fn parse(file: &str, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str::<RawConfig>(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before
                    .rfind('\n')
                    .map(|i| before.len() - i)
                    .unwrap_or(before.len() + 1);
                let job = enclosing_job(text, span.start)
                    .map(|j| format!(" (in job '{j}')"))
                    .unwrap_or_default();
                ConfigError(format!("{file}:{line}:{col}: {msg}{job}"))
            }
            None => ConfigError(format!("{file}: {msg}")),
        }
    })
}

/// The `name` of the `[[job]]` table around a byte offset, to say which job an error is in.
fn enclosing_job(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind("[[job]]")?;
    let end = text[start + 7..]
        .find("\n[")
        .map(|i| start + 7 + i)
        .unwrap_or(text.len());
    text[start..end].lines().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_prefix("name")?
            .trim_start()
            .strip_prefix('=')?
            .trim();
        Some(rest.trim_matches('"').to_string())
    })
}

/// Validates parsed configuration. Its errors quote values from the file (names, URLs,
/// patterns), which may hold newlines: those are shown escaped, so every error is one line.
fn validate(
    file: &str,
    raw: RawConfig,
    o: &Overrides,
    base: Option<&Path>,
) -> Result<Settings, ConfigError> {
    validate_fields(file, raw, o, base).map_err(|e| ConfigError(escape_controls(&e.0)))
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn validate_fields(
    file: &str,
    raw: RawConfig,
    o: &Overrides,
    base: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let top = Ctx { file, job: None };
    let RawConfig {
        server,
        defaults,
        health,
        concurrency,
        job,
        token,
        alert,
        telemetry,
    } = raw;
    let server = server_settings(&top, server, o, base)?;
    let job_defaults = job_defaults(&top, defaults, o)?;
    let health = health_settings(&top, health, o)?;
    let limits = limits(&top, concurrency)?;
    let mut jobs = Vec::with_capacity(job.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, j) in job.into_iter().enumerate() {
        jobs.push(job_spec(file, i + 1, j, &job_defaults, &limits, &mut seen)?);
    }
    let tokens = tokens(&top, token, o.tokens.as_deref())?;
    if !server.bind.ip().is_loopback() && tokens.is_empty() {
        return Err(top.err(
            "server.bind",
            format!(
                "refusing to serve on {} without tokens: anyone who can reach it could trigger and cancel jobs; \
                 add [[token]] entries (or JOBWARD_TOKENS) or bind to 127.0.0.1",
                server.bind
            ),
        ));
    }
    Ok(Settings {
        source: file.to_string(),
        server,
        defaults: job_defaults.timeouts,
        job_defaults,
        health,
        limits,
        jobs,
        tokens,
        alerts: alerts(&top, alert)?,
        telemetry: telemetry_settings(&top, telemetry, o)?,
    })
}

fn server_settings(
    top: &Ctx<'_>,
    server: RawServer,
    o: &Overrides,
    base: Option<&Path>,
) -> Result<ServerSettings, ConfigError> {
    let db = match o.db.clone() {
        Some(db) => db,
        None => sqlite_beside(base, server.db.unwrap_or_else(|| DEFAULT_DB.to_string())),
    };
    if !(db.starts_with("sqlite:")
        || db.starts_with("postgres://")
        || db.starts_with("postgresql://"))
    {
        return Err(top.err(
            "server.db",
            format!(
                "unsupported database URL '{}' (expected sqlite://PATH or postgres://USER@HOST/DATABASE)",
                jobward_store::display_url(&db)
            ),
        ));
    }
    let node_name = o.node_name.clone().or(server.node_name);
    if let Some(n) = &node_name {
        validate_name("node name", n).map_err(|e| top.err("server.node_name", e))?;
    }
    let log_dir = match o.log_dir.clone() {
        Some(dir) => PathBuf::from(dir),
        None => beside(
            base,
            PathBuf::from(server.log_dir.unwrap_or_else(|| "jobward-logs".into())),
        ),
    };
    let bind_text = o
        .bind
        .clone()
        .or(server.bind)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let bind: std::net::SocketAddr = bind_text.parse().map_err(|_| {
        top.err(
            "server.bind",
            format!("'{bind_text}' is not an address such as 127.0.0.1:8080"),
        )
    })?;
    if let Some(u) = &server.public_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(top.err(
            "server.public_url",
            format!("'{u}' must start with http:// or https://"),
        ));
    }
    let log_format = server
        .log_format
        .as_deref()
        .map(|f| {
            f.parse::<LogFormat>()
                .map_err(|e| top.err("server.log_format", e))
        })
        .transpose()?
        .unwrap_or_default();
    Ok(ServerSettings {
        db,
        bind,
        public_url: server.public_url,
        node_name,
        log_dir,
        log_max_bytes: top.at_least("server.log_max_bytes", server.log_max_bytes, 4096, 1 << 20)?
            as u64,
        max_running: match o.max_running {
            Some(0) => return Err(top.err("--max-running", "must be at least 1")),
            Some(n) => n,
            None => top.at_least("server.max_running", server.max_running, 1, 64)? as u32,
        },
        shutdown_grace: top.dur(
            "server.shutdown_grace",
            &o.shutdown_grace.clone().or(server.shutdown_grace),
            Duration::from_secs(30),
        )?,
        reaper_interval: top.pos(
            "server.reaper_interval",
            &server.reaper_interval,
            Duration::from_secs(1),
        )?,
        poll_interval: top.pos(
            "server.poll_interval",
            &server.poll_interval,
            Duration::from_millis(500),
        )?,
        retention_interval: top.pos(
            "server.retention_interval",
            &server.retention_interval,
            Duration::from_secs(60),
        )?,
        store: jobward_store::StoreOptions {
            pg_idle_in_transaction_timeout: top.pos(
                "server.pg_idle_in_transaction_timeout",
                &server.pg_idle_in_transaction_timeout,
                jobward_store::StoreOptions::default().pg_idle_in_transaction_timeout,
            )?,
            pg_lock_timeout: top.pos(
                "server.pg_lock_timeout",
                &server.pg_lock_timeout,
                jobward_store::StoreOptions::default().pg_lock_timeout,
            )?,
        },
        log_format,
        api_commands: server.api_commands.unwrap_or(false),
    })
}

fn job_defaults(
    top: &Ctx<'_>,
    defaults: RawDefaults,
    o: &Overrides,
) -> Result<JobDefaults, ConfigError> {
    let base = JobDefaults::default();
    let f = |e| top.field(e);
    let heartbeat = jobdef::positive(
        "defaults.heartbeat_timeout",
        &o.heartbeat_timeout.clone().or(defaults.heartbeat_timeout),
        base.timeouts.heartbeat,
    )
    .map_err(f)?;
    let timeouts = Timeouts {
        heartbeat: jobdef::heartbeat("defaults.heartbeat_timeout", heartbeat).map_err(f)?,
        run: jobdef::positive(
            "defaults.run_timeout",
            &o.run_timeout.clone().or(defaults.run_timeout),
            base.timeouts.run,
        )
        .map_err(f)?,
        queue: jobdef::positive(
            "defaults.queue_timeout",
            &o.queue_timeout.clone().or(defaults.queue_timeout),
            base.timeouts.queue,
        )
        .map_err(f)?,
        kill_grace: jobdef::duration(
            "defaults.kill_grace",
            &defaults.kill_grace,
            base.timeouts.kill_grace,
        )
        .map_err(f)?,
    };
    Ok(JobDefaults {
        timeouts,
        overlap: jobdef::overlap("defaults.overlap", &defaults.overlap, Overlap::Skip)
            .map_err(f)?,
        misfire: jobdef::misfire("defaults.misfire", &defaults.misfire, Misfire::RunOnce)
            .map_err(f)?,
        misfire_grace: jobdef::duration(
            "defaults.misfire_grace",
            &defaults.misfire_grace,
            base.misfire_grace,
        )
        .map_err(f)?,
        history: jobdef::history(
            "defaults.history",
            defaults.history.as_ref(),
            History::default(),
        )
        .map_err(f)?,
        retry: jobdef::retry(
            "defaults.retry",
            defaults.retry.as_ref(),
            RetryPolicy::default(),
        )
        .map_err(f)?,
    })
}

fn health_settings(
    top: &Ctx<'_>,
    health: RawHealth,
    o: &Overrides,
) -> Result<HealthSettings, ConfigError> {
    Ok(HealthSettings {
        long_running_after: top.pos(
            "health.long_running_after",
            &o.long_running_after.clone().or(health.long_running_after),
            Duration::from_secs(3600),
        )?,
        warn_long_running: match o.warn_long_running {
            Some(n) => n,
            None => {
                top.at_least("health.warn_long_running", health.warn_long_running, 0, 5)? as u64
            }
        },
    })
}

fn limits(
    top: &Ctx<'_>,
    concurrency: BTreeMap<String, i64>,
) -> Result<BTreeMap<String, u32>, ConfigError> {
    let mut limits = BTreeMap::new();
    for (key, limit) in concurrency {
        validate_name("concurrency key", &key)
            .map_err(|e| top.err(&format!("concurrency.{key}"), e))?;
        if limit < 1 {
            return Err(top.err(
                &format!("concurrency.{key}"),
                format!("limit must be at least 1, got {limit}"),
            ));
        }
        if limit > u32::MAX as i64 {
            return Err(top.err(
                &format!("concurrency.{key}"),
                format!("limit is too large: {limit}"),
            ));
        }
        limits.insert(key, limit as u32);
    }
    Ok(limits)
}

/// One `[[job]]` (number `n` in the file).
fn job_spec(
    file: &str,
    n: usize,
    j: RawJob,
    d: &JobDefaults,
    limits: &BTreeMap<String, u32>,
    seen: &mut HashMap<String, usize>,
) -> Result<JobSpec, ConfigError> {
    let Some(name) = j.name.clone() else {
        return Err(ConfigError(format!(
            "{file}: job #{n}: field 'name' is missing"
        )));
    };
    validate_name("job name", &name)
        .map_err(|e| ConfigError(format!("{file}: job #{n}: field 'name': {e}")))?;
    if let Some(first) = seen.insert(name.clone(), n) {
        return Err(ConfigError(format!(
            "{file}: job '{name}' is defined twice (jobs #{first} and #{n})"
        )));
    }
    let ctx = Ctx {
        file,
        job: Some(name.clone()),
    };
    if j.paused.is_some() {
        return Err(ctx.err(
            "paused",
            "is not set in the file: pause a job with `jobward jobs pause NAME`",
        ));
    }
    let mut j = j;
    if let Some(var) = j.ping_token_env.take() {
        if j.ping_token.is_some() {
            return Err(ctx.err(
                "ping_token_env",
                "give ping_token or ping_token_env, not both",
            ));
        }
        let value = std::env::var(&var).map_err(|_| {
            ctx.err(
                "ping_token_env",
                format!("the environment variable {var} is not set"),
            )
        })?;
        j.ping_token = Some(value);
    }
    jobdef::job_spec(name, &j, d, &|k| limits.contains_key(k)).map_err(|e| ctx.field(e))
}

fn alerts(top: &Ctx<'_>, raw: Vec<RawAlert>) -> Result<Vec<Webhook>, ConfigError> {
    let mut alerts = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let field = format!("alert #{}", i + 1);
        let url = a
            .url
            .ok_or_else(|| top.err(&format!("{field}.url"), "is missing"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(top.err(
                &format!("{field}.url"),
                format!("'{url}' must start with http:// or https://"),
            ));
        }
        let on = match a.on {
            None => AlertKind::ALL.to_vec(),
            Some(list) => list
                .iter()
                .map(|k| {
                    k.parse::<AlertKind>()
                        .map_err(|e| top.err(&format!("{field}.on"), e))
                })
                .collect::<Result<_, _>>()?,
        };
        let kind = match a.kind.as_deref() {
            None => jobward_server::alerts::SinkKind::Json,
            Some(k) => k
                .parse()
                .map_err(|e| top.err(&format!("{field}.kind"), e))?,
        };
        alerts.push(Webhook { url, on, kind });
    }
    Ok(alerts)
}

/// `[telemetry]`; OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME beat the file.
fn telemetry_settings(
    top: &Ctx<'_>,
    raw: RawTelemetry,
    o: &Overrides,
) -> Result<Option<TelemetryConfig>, ConfigError> {
    let Some(endpoint) = o.otlp_endpoint.clone().or(raw.otlp_endpoint) else {
        return Ok(None);
    };
    let scheme = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    if scheme.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
        return Err(top.err(
            "telemetry.otlp_endpoint",
            format!(
                "'{endpoint}' must be an http:// or https:// URL such as http://127.0.0.1:4318"
            ),
        ));
    }
    let service_name = o
        .service_name
        .clone()
        .or(raw.service_name)
        .unwrap_or_else(|| "jobward".into());
    if service_name.trim().is_empty() || service_name.chars().any(char::is_control) {
        return Err(top.err("telemetry.service_name", "must be a non-empty name"));
    }
    Ok(Some(TelemetryConfig {
        otlp_endpoint: endpoint,
        service_name,
    }))
}

fn tokens(
    top: &Ctx<'_>,
    raw: Vec<RawToken>,
    from_env: Option<&str>,
) -> Result<Vec<Token>, ConfigError> {
    let mut out: Vec<(String, Role, String)> = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let field = format!("token #{}", i + 1);
        let name = t.name.unwrap_or_else(|| format!("token-{}", i + 1));
        let role_text = t.role.ok_or_else(|| {
            top.err(
                &format!("{field}.role"),
                "is missing (read, operate or worker)",
            )
        })?;
        let role = role_text
            .parse::<Role>()
            .map_err(|e| top.err(&format!("{field}.role"), e))?;
        let secret = match (t.secret, t.secret_env) {
            (Some(_), Some(_)) => {
                return Err(top.err(
                    &format!("{field}.secret"),
                    "give secret or secret_env, not both",
                ));
            }
            (Some(s), None) => s,
            (None, Some(var)) => std::env::var(&var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    top.err(
                        &format!("{field}.secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
            (None, None) => {
                return Err(top.err(
                    &format!("{field}.secret"),
                    "is missing (secret or secret_env)",
                ));
            }
        };
        out.push((name, role, secret));
    }
    if let Some(list) = from_env {
        for (i, pair) in list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let (role, secret) = pair.split_once(':').ok_or_else(|| {
                ConfigError("JOBWARD_TOKENS: each entry is ROLE:SECRET, comma-separated".into())
            })?;
            let role = role
                .parse::<Role>()
                .map_err(|e| ConfigError(format!("JOBWARD_TOKENS: {e}")))?;
            out.push((format!("env-{}", i + 1), role, secret.to_string()));
        }
    }
    for (i, (name, _, secret)) in out.iter().enumerate() {
        if secret.len() < 16 {
            return Err(ConfigError(format!(
                "{}: token '{name}': its secret must be at least 16 characters",
                top.file
            )));
        }
        if out[..i].iter().any(|(_, _, s)| s == secret) {
            return Err(ConfigError(format!(
                "{}: token '{name}': the same secret is used twice",
                top.file
            )));
        }
    }
    Ok(out
        .into_iter()
        .map(|(name, role, secret)| Token::new(name, role, &secret))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Settings, ConfigError> {
        validate(
            "t.toml",
            parse("t.toml", text)?,
            &Overrides::default(),
            None,
        )
    }

    const ISSUE_EXAMPLE: &str = r#"
[server]
db = "sqlite://jobward.db"
[defaults]
heartbeat_timeout = "30s"
run_timeout = "24h"
queue_timeout = "1h"
[concurrency]
reports = 1
[[job]]
name = "nightly-report"
command = "python report.py"
schedule = "0 0 2 * * *"
timezone = "Europe/Berlin"
run_timeout = "2h"
overlap = "skip"
misfire = "run_once"
concurrency_key = "reports"
history = { keep_last = 100, max_age = "30d" }
retry = { max_attempts = 3, backoff = "10s", max_backoff = "10m" }
"#;

    #[test]
    fn the_documented_shape_loads() {
        let s = load_str(ISSUE_EXAMPLE).unwrap();
        let j = &s.jobs[0];
        assert_eq!(j.name, "nightly-report");
        assert_eq!(j.timeouts.run, Duration::from_secs(7200));
        assert_eq!(j.timeouts.heartbeat, Duration::from_secs(30));
        assert_eq!(j.retry.max_attempts, 3);
        assert_eq!(j.history.keep_last, Some(100));
        assert_eq!(s.limits["reports"], 1);
        assert!(matches!(j.schedule, jobward_core::Schedule::Cron { .. }));
    }

    fn one_line_error(text: &str) -> String {
        let e = load_str(text).unwrap_err().0;
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("t.toml"), "{e}");
        e
    }

    #[test]
    fn bad_input_is_one_clear_line() {
        let job = |extra: &str| format!("[[job]]\nname = \"j\"\ncommand = \"true\"\n{extra}\n");
        let cases = [
            (
                job("schedule = \"61 * * * * *\""),
                "job 'j': field 'schedule': invalid cron pattern",
            ),
            (
                job("every = \"10x\""),
                "job 'j': field 'every': invalid duration '10x'",
            ),
            (job("run_timeout = \"0s\""), "job 'j': field 'run_timeout'"),
            (job("run_timeout = \"-5m\""), "negative"),
            (
                job("schedule = \"* * * * *\"\ntimezone = \"Mars/Base\""),
                "field 'timezone': unknown time zone",
            ),
            (
                job("schedulee = \"* * * * *\""),
                "unknown field `schedulee`",
            ),
            (
                job("concurrency_key = \"k\""),
                "'k' has no limit in [concurrency]",
            ),
            (job("overlap = \"sometimes\""), "unknown overlap policy"),
            (
                job("retry = { max_attempts = 0 }"),
                "retry.max_attempts': must be between 1 and 1000",
            ),
            (
                job("history = { keep_last = 0 }"),
                "history.keep_last': must be at least 1",
            ),
            (job("schedule = \"* * * * *\"\nevery = \"1m\""), "not both"),
            (
                format!("{}{}", job(""), job("")),
                "job 'j' is defined twice (jobs #1 and #2)",
            ),
            (
                "[[job]]\nname = \"nocmd\"\n".to_string(),
                "job 'nocmd': field 'command': is missing",
            ),
            (
                "[[job]]\nname = \"x\"\ncommand = \"  \"\n".to_string(),
                "field 'command': is empty",
            ),
            (
                "[[job]]\nname = \"a/b\"\ncommand = \"true\"\n".to_string(),
                "invalid job name 'a/b'",
            ),
            (
                "[concurrency]\nreports = 0\n".to_string(),
                "concurrency.reports': limit must be at least 1, got 0",
            ),
            (
                "[concurrency]\nreports = -2\n".to_string(),
                "limit must be at least 1, got -2",
            ),
            (
                "[server]\nbogus = 1\n".to_string(),
                "t.toml:2:1: unknown field `bogus`",
            ),
            (
                "[server]\ndb = \"mysql://x\"\n".to_string(),
                "unsupported database URL",
            ),
            ("[server\n".to_string(), "t.toml:1:"),
            (
                "[defaults]\nheartbeat_timeout = \"500ms\"\n".to_string(),
                "must be at least 1s",
            ),
            (
                "[server]\nbind = \"0.0.0.0:8080\"\n".to_string(),
                "refusing to serve on 0.0.0.0:8080 without tokens",
            ),
            (
                "[server]\nbind = \"localhost\"\n".to_string(),
                "is not an address",
            ),
            (
                "[[token]]\nrole = \"root\"\nsecret = \"0123456789abcdef\"\n".to_string(),
                "unknown role 'root' (expected read, operate, admin or worker)",
            ),
            (
                "[[token]]\nrole = \"read\"\nsecret = \"short\"\n".to_string(),
                "at least 16 characters",
            ),
            (
                "[[token]]\nrole = \"read\"\nsecret_env = \"JOBWARD_TEST_UNSET_VAR\"\n".to_string(),
                "JOBWARD_TEST_UNSET_VAR is not set",
            ),
            (
                "[[alert]]\nurl = \"ftp://x\"\n".to_string(),
                "must start with http",
            ),
            (
                "[[alert]]\nurl = \"http://x\"\non = [\"sometimes\"]\n".to_string(),
                "unknown alert event 'sometimes'",
            ),
            (job("queue = \"a b\""), "field 'queue': invalid queue name"),
        ];
        for (text, want) in cases {
            let e = one_line_error(&text);
            assert!(e.contains(want), "expected {want:?} in: {e}");
        }
    }

    #[test]
    fn values_with_newlines_still_give_one_line() {
        // Caught by the config fuzz target's one-line check (fuzz/regressions/config).
        let job = |extra: &str| format!("[[job]]\nname = \"j\"\ncommand = \"true\"\n{extra}\n");
        for (text, want) in [
            (job(r#"schedule = "a\nb""#), r"invalid cron pattern 'a\nb'"),
            (
                job("schedule = \"* * * * *\"\ntimezone = \"x\\ny\""),
                r"unknown time zone 'x\ny'",
            ),
            (job(r#"every = "x\ny""#), r"invalid duration 'x\ny'"),
            (job(r#"overlap = "x\ny""#), r"x\ny"),
            (job(r#"queue = "x\ny""#), r"x\ny"),
            (
                "[[job]]\nname = \"a\\nb\"\ncommand = \"true\"\n".into(),
                r"a\nb",
            ),
            ("[server]\nbind = \"a\\nb\"\n".into(), r"'a\nb'"),
            (
                "[[token]]\nrole = \"a\\nb\"\nsecret = \"0123456789abcdef\"\n".into(),
                r"a\nb",
            ),
        ] {
            let e = one_line_error(&text);
            assert!(e.contains(want), "expected {want:?} in: {e}");
        }
    }

    #[test]
    fn a_job_with_a_queue_and_no_command_is_a_handler_job() {
        let s = load_str("[[job]]\nname = \"send-report\"\nqueue = \"py\"\n").unwrap();
        assert_eq!(s.jobs[0].command, "");
        assert_eq!(s.jobs[0].queue.as_deref(), Some("py"));
        let e = one_line_error("[[job]]\nname = \"x\"\nqueue = \"local\"\n");
        assert!(e.contains("needs a queue"), "{e}");
    }

    #[test]
    fn an_unknown_key_names_its_job() {
        let e = one_line_error(
            "[[job]]\nname = \"alpha\"\ncommand = \"true\"\n[[job]]\nname = \"beta\"\ncommand = \"true\"\nrun_timout = \"1h\"\n",
        );
        assert!(
            e.contains("t.toml:7:1") && e.contains("(in job 'beta')"),
            "{e}"
        );
    }

    #[test]
    fn relative_ledger_and_log_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc/jobward.toml");
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(
            &conf,
            "[server]\ndb = \"sqlite://data/ledger.db?mode=rwc\"\nlog_dir = \"logs\"\n",
        )
        .unwrap();
        let s = load(Some(&conf), &Overrides::default()).unwrap();
        let etc = dir.path().join("etc");
        assert_eq!(
            s.server.db,
            format!("sqlite://{}?mode=rwc", etc.join("data/ledger.db").display())
        );
        assert_eq!(s.server.log_dir, etc.join("logs"));
        // Defaults live beside the file too; absolute paths and flags are left alone.
        std::fs::write(&conf, "").unwrap();
        let s = load(Some(&conf), &Overrides::default()).unwrap();
        assert_eq!(
            s.server.db,
            format!("sqlite://{}", etc.join("jobward.db").display())
        );
        assert_eq!(s.server.log_dir, etc.join("jobward-logs"));
        std::fs::write(&conf, "[server]\ndb = \"sqlite:///var/lib/j.db\"\n").unwrap();
        assert_eq!(
            load(Some(&conf), &Overrides::default()).unwrap().server.db,
            "sqlite:///var/lib/j.db"
        );
        let o = Overrides {
            db: Some("sqlite://here.db".into()),
            log_dir: Some("here-logs".into()),
            ..Default::default()
        };
        let s = load(Some(&conf), &o).unwrap();
        assert_eq!(s.server.db, "sqlite://here.db");
        assert_eq!(s.server.log_dir, PathBuf::from("here-logs"));
        // A file in the working directory keeps its relative paths as they are.
        let s = load(Some(Path::new("jobward-test-nonexistent.toml")), &o);
        assert!(s.is_err());
    }

    #[test]
    fn telemetry_and_log_format_are_validated() {
        let s = load_str("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n[server]\nlog_format = \"json\"\n").unwrap();
        let t = s.telemetry.unwrap();
        assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4318");
        assert_eq!(t.service_name, "jobward");
        assert_eq!(s.server.log_format, LogFormat::Json);
        assert!(load_str("").unwrap().telemetry.is_none());
        let e = one_line_error("[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n");
        assert!(e.contains("field 'telemetry.otlp_endpoint'"), "{e}");
        let e = one_line_error("[server]\nlog_format = \"xml\"\n");
        assert!(
            e.contains("field 'server.log_format': unknown log format 'xml'"),
            "{e}"
        );
        let o = Overrides {
            otlp_endpoint: Some("http://collector:4318".into()),
            service_name: Some("billing".into()),
            ..Default::default()
        };
        let raw = parse("t.toml", "[telemetry]\notlp_endpoint = \"http://x:1\"\n").unwrap();
        let t = validate("t.toml", raw, &o, None)
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(
            (t.otlp_endpoint.as_str(), t.service_name.as_str()),
            ("http://collector:4318", "billing"),
            "the environment beats the file"
        );
    }

    #[test]
    fn overrides_beat_the_file() {
        let raw = parse(
            "t.toml",
            "[defaults]\nrun_timeout = \"1h\"\n[[job]]\nname = \"a\"\ncommand = \"true\"\n",
        )
        .unwrap();
        let o = Overrides {
            run_timeout: Some("5m".into()),
            db: Some("sqlite:///tmp/x.db".into()),
            ..Default::default()
        };
        let s = validate("t.toml", raw, &o, None).unwrap();
        assert_eq!(s.jobs[0].timeouts.run, Duration::from_secs(300));
        assert_eq!(s.server.db, "sqlite:///tmp/x.db");
    }
}
