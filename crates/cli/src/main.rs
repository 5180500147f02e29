//! `jobward`: the one binary. Parses flags, loads the configuration, opens the store named by
//! it (the only place that names a backend), runs a command, and turns every error into one
//! line and an exit code: 0 fine, 1 a check failed, 2 bad usage or input.

mod api;
mod commands;
mod exec;
mod ledger;
mod output;

use jobward::config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "jobward",
    version,
    about = "A job scheduler and execution ledger: every execution reaches a terminal state with a true record.",
    after_help = "Commands that take --server go through that jobward server's API (its tokens and roles; \
the ledger records the token's name as the actor). Without --server (or JOBWARD_SERVER) they open the \
database the configuration names and run the same API in process, for local administration. serve, \
migrate, audit, backup, check, worker and heartbeat do not take --server. `exec` passes its command's \
exit code through.

Exit codes: 0 done; 1 a check failed or the operation did not succeed (a run that did not complete, \
a refused request); 2 bad usage or input; 3 `jobs trigger` was skipped (the job's overlap policy, or \
it is paused): nothing will run."
)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./jobward.toml if it exists. Also accepted after
    /// the command; `worker` and `heartbeat` read no configuration and ignore it.
    #[arg(long, env = "JOBWARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://jobward.db. Overrides [server] db. Also accepted after
    /// the command; `worker` and `heartbeat` ignore it.
    #[arg(long, env = "JOBWARD_DATABASE_URL", value_name = "URL")]
    pub db: Option<String>,
    /// Log lines as text or as one JSON object per line (default: [server] log_format, else
    /// text).
    #[arg(
        long,
        global = true,
        env = "JOBWARD_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT",
        display_order = 900
    )]
    pub log_format: Option<config::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// Where a command finds its configuration and ledger (given after the command; the same
/// flags before it, and JOBWARD_CONFIG / JOBWARD_DATABASE_URL, also work).
#[derive(Args, Debug, Default, Clone)]
pub struct StoreArgs {
    /// Configuration file (TOML). Default: JOBWARD_CONFIG, else ./jobward.toml if it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://jobward.db. Overrides [server] db (default:
    /// JOBWARD_DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
}

const AUDIT_ABOUT: &str = "Check invariants 1-3 (and 6) on the database; exits 1 on any violation";
const AUDIT_LONG_ABOUT: &str = "Check the ledger's invariants on the live database, reading the \
rows themselves rather than trusting the schema's CHECK constraints; exits 1 on any violation.

Invariants checked:
  1  States: every state is a known one; a terminal execution has finished_at and a live one \
does not; failed, timed_out, cancelled and skipped carry a reason kind (one that explains the \
state) and a message; queued, running and completed carry no reason.
  2  Deadlines: a queued execution has a start deadline, a running one its lease expiry and \
run deadline, and none is past a deadline (or a cancel deadline) by more than --tolerance.
  3  One source of truth: a running execution has a lease owner and token, is not owned by a \
node that stopped, and no concurrency key has more running executions than its limit.
  6  Events: every terminal execution has the transition event that led to its state.

With --repair, the reaper's rules are applied first (what is overdue is settled as the reaper \
would), then the audit runs.";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node: schedule jobs, run them, and keep the ledger true.
    Serve(ServeArgs),
    /// Job definitions and triggers.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Executions ("runs").
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Settle running executions whose last heartbeat is older than --stale-after (dry run
    /// unless --apply).
    Cleanup(CleanupArgs),
    /// Health figures; exits 1 when the status is `warning`.
    Health(HealthArgs),
    #[command(about = AUDIT_ABOUT, long_about = AUDIT_LONG_ABOUT)]
    Audit(AuditArgs),
    /// Create the database or bring its schema up to date.
    Migrate(MigrateArgs),
    /// Nodes that have served this database.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Validate a configuration file and show each job's next three fires; touches no
    /// database. Exits 0 when it is valid, 2 with the error when not.
    Check(CheckArgs),
    /// Write a consistent copy of the SQLite ledger to a new file while it is in use
    /// (PostgreSQL: use pg_dump).
    Backup(BackupArgs),
    /// Run a remote worker: claim executions of some queues from a jobward server and run
    /// them. Reads no configuration file or database: only its flags.
    Worker(WorkerArgs),
    /// Report progress from inside a running execution (reads the JOBWARD_* variables; no
    /// configuration file or database).
    Heartbeat(HeartbeatArgs),
    /// Run a command started by something else (cron, a CronJob, CI) and record it as a run
    /// of JOB: lease and heartbeats, run timeout, cancel, exit code passed through. With no
    /// ledger reachable the command still runs (unrecorded; stderr says so).
    Exec(ExecArgs),
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The job this run is recorded under (a job of the configuration or the API; usually
    /// runner = "external").
    #[arg(long, value_name = "NAME")]
    pub job: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Command {
    /// The configuration and ledger flags given after this command, if it takes them.
    pub fn store_args(&self) -> Option<&StoreArgs> {
        match self {
            Command::Serve(a) => Some(&a.store),
            Command::Jobs(JobsCommand::List { store, .. })
            | Command::Jobs(JobsCommand::Show { store, .. })
            | Command::Jobs(JobsCommand::Pause { store, .. })
            | Command::Jobs(JobsCommand::Resume { store, .. })
            | Command::Jobs(JobsCommand::Delete { store, .. })
            | Command::Jobs(JobsCommand::Backfill { store, .. })
            | Command::Runs(RunsCommand::Show { store, .. })
            | Command::Runs(RunsCommand::Cancel { store, .. })
            | Command::Runs(RunsCommand::Reschedule { store, .. })
            | Command::Nodes(NodesCommand::List { store, .. }) => Some(store),
            Command::Jobs(JobsCommand::Trigger(a)) => Some(&a.store),
            Command::Jobs(JobsCommand::Create(a)) | Command::Jobs(JobsCommand::Apply(a)) => {
                Some(&a.store)
            }
            Command::Jobs(JobsCommand::Reload(a)) => Some(&a.store),
            Command::Runs(RunsCommand::List(a)) => Some(&a.store),
            Command::Cleanup(a) => Some(&a.store),
            Command::Health(a) => Some(&a.store),
            Command::Audit(a) => Some(&a.store),
            Command::Migrate(a) => Some(&a.store),
            Command::Check(a) => Some(&a.store),
            Command::Backup(a) => Some(&a.store),
            Command::Exec(a) => Some(&a.store),
            Command::Worker(_) | Command::Heartbeat(_) => None,
        }
    }
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The new file to write (it must not exist).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The jobward server, e.g. http://10.0.0.5:8080.
    #[arg(long, env = "JOBWARD_SERVER_URL")]
    pub server: String,
    /// Queue to claim from (repeatable, in order of preference).
    #[arg(long = "queue", value_name = "NAME", required = true)]
    pub queue: Vec<String>,
    /// Executions run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// A token with the worker role.
    #[arg(long, env = "JOBWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stable id of this worker (default: HOST-PID).
    #[arg(long, env = "JOBWARD_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Directory for execution logs on this host.
    #[arg(long, default_value = "jobward-worker-logs")]
    pub log_dir: String,
    /// On SIGTERM: how long running executions may finish before they are handed back.
    #[arg(long, default_value = "30s")]
    pub shutdown_grace: String,
}

#[derive(Args, Debug)]
pub struct HeartbeatArgs {
    /// Progress, 0 to 1.
    #[arg(long)]
    pub progress: Option<f64>,
    /// What the run is doing now, e.g. "download".
    #[arg(long)]
    pub phase: Option<String>,
    /// Small JSON handed to a retry of this execution (JOBWARD_CHECKPOINT).
    #[arg(long)]
    pub checkpoint: Option<String>,
}

/// How a command reaches a running server.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Going through a jobward server's API instead of the database.
#[derive(Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// Go through this jobward server's API (e.g. http://10.0.0.5:8080) with --token, instead
    /// of opening the database.
    #[arg(long, env = "JOBWARD_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The token sent to --server (its role decides what the command may do).
    #[arg(
        long,
        env = "JOBWARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address of the HTTP API (default 127.0.0.1:8080; port 0 picks a free port). Binding
    /// anything but loopback needs tokens.
    #[arg(long, env = "JOBWARD_BIND")]
    pub bind: Option<String>,
    /// Stable node name (default: the host name). A restart with the same name recovers what
    /// the previous run left.
    #[arg(long, env = "JOBWARD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Directory for execution logs.
    #[arg(long, env = "JOBWARD_LOG_DIR")]
    pub log_dir: Option<String>,
    /// Most executions this node runs at once.
    #[arg(long, env = "JOBWARD_MAX_RUNNING")]
    pub max_running: Option<u32>,
    /// Default heartbeat timeout (lease length), e.g. 30s.
    #[arg(long, env = "JOBWARD_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<String>,
    /// Default run timeout, e.g. 24h.
    #[arg(long, env = "JOBWARD_RUN_TIMEOUT")]
    pub run_timeout: Option<String>,
    /// Default queue timeout, e.g. 1h.
    #[arg(long, env = "JOBWARD_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<String>,
    /// How long a graceful shutdown waits for running executions, e.g. 30s.
    #[arg(long, env = "JOBWARD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Jobs with their schedule, next fire, status (derived from their executions) and where
    /// each is defined (the file or the API).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One job: its definition, where it is defined, its recent runs and recorded changes.
    Show {
        /// The job.
        name: String,
        /// Print JSON (the API's job detail).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Queue an execution of a job (under its overlap policy): now, or later with --at/--in.
    /// Exits 3 when the trigger was skipped (overlap policy, or the job is paused).
    Trigger(TriggerArgs),
    /// Pause a job: its fires are recorded as skipped and its queued runs wait.
    Pause {
        /// The job.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Resume a paused job.
    Resume {
        /// The job.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create the jobs of a TOML file (`[[job]]` tables, or one job's fields at the top);
    /// refused for a job that exists. Needs the admin role through a server.
    Create(ApplyArgs),
    /// Create or replace the jobs of a TOML file (`[[job]]` tables, or one job's fields at
    /// the top). Needs the admin role through a server.
    Apply(ApplyArgs),
    /// Delete a job defined through the API (its history stays); refused while it has live
    /// runs unless --cancel. Needs the admin role through a server.
    Delete {
        /// The job.
        name: String,
        /// Cancel its queued runs and stop its running ones.
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Fire each instant of a job's schedule between --from and --to that has no run yet
    /// (once each, under its overlap policy).
    Backfill {
        /// The job.
        name: String,
        /// Start of the range (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        from: String,
        /// End of the range (RFC 3339), at most 1,000 instants after --from.
        #[arg(long, value_name = "TIME")]
        to: String,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make the running server re-read its configuration (jobs and concurrency limits);
    /// running executions are not disturbed. SIGHUP does the same.
    Reload(RemoteArgs),
}

#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The job to trigger.
    pub name: String,
    /// Wait for the final outcome, following retries (each attempt is printed as it ends);
    /// exit 0 when it completed, 1 when not.
    #[arg(long)]
    pub wait: bool,
    /// Handed to the run as JOBWARD_PAYLOAD (JSON).
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// The same key returns the run it created the first time instead of a second one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Priority of this run, -1000 to 1000 (higher is claimed first; default: the job's).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Not before this time (RFC 3339): a delayed run.
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub at: Option<String>,
    /// Not before this long from now, e.g. 10m: a delayed run.
    #[arg(long = "in", value_name = "DUR")]
    pub delay: Option<String>,
    /// Print the execution as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The TOML file with the job(s).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Executions, newest first.
    List(RunsListArgs),
    /// One execution: its fields, event timeline and log tail.
    Show {
        /// The execution id (the ID column of `runs list`).
        id: i64,
        /// Lines of log to show.
        #[arg(long, default_value_t = 40)]
        log_lines: usize,
        /// Print JSON (with node incarnation ids instead of names).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Cancel an execution: at once if queued; a running one is stopped (SIGTERM, then SIGKILL).
    Cancel {
        /// The execution id.
        id: i64,
        /// Return without waiting for the owner to confirm.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move a queued (delayed) run to another time.
    Reschedule {
        /// The execution id.
        id: i64,
        /// Not before this time (RFC 3339).
        #[arg(
            long,
            value_name = "TIME",
            conflicts_with = "delay",
            required_unless_present = "delay"
        )]
        at: Option<String>,
        /// Not before this long from now, e.g. 10m.
        #[arg(long = "in", value_name = "DUR")]
        delay: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Debug)]
pub struct RunsListArgs {
    /// Only running executions.
    #[arg(long)]
    pub running: bool,
    /// Only this state (repeatable).
    #[arg(long = "status", value_name = "STATE")]
    pub status: Vec<String>,
    /// Only executions of this job.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only running executions whose last heartbeat is older than this, e.g. 10m.
    #[arg(long, value_name = "DUR")]
    pub stale_after: Option<String>,
    /// Most executions shown (1 to 10000).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Page: only executions with an id below this one.
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Running executions whose last heartbeat is older than this.
    #[arg(long, default_value = "1h", value_name = "DUR")]
    pub stale_after: String,
    /// Change them (timed_out, reason manual_cleanup). Without it: a dry run.
    #[arg(long)]
    pub apply: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Running longer than this counts as long-running (default from [health], 1h).
    #[arg(long, value_name = "DUR")]
    pub long_running_after: Option<String>,
    /// Warn when more than this many executions are long-running (default 5).
    #[arg(long, value_name = "N")]
    pub warn_long_running: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Apply the reaper rules to what is overdue, then check again.
    #[arg(long)]
    pub repair: bool,
    /// How far past a deadline a live execution may be (one reaper tick and some).
    #[arg(long, default_value = "5s", value_name = "DUR")]
    pub tolerance: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// Every incarnation of every node, with its state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// A failure and the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or input: exit 2.
    Input(String),
    /// A check failed or an operation did not succeed: exit 1.
    Check(String),
    /// Exit 1 after the command already printed what went wrong.
    Quiet,
    /// Exit with this code after the command already printed why (3: a skipped trigger).
    Code(u8),
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        Failure::Input(e.0)
    }
}

impl From<jobward_store::StoreError> for Failure {
    fn from(e: jobward_store::StoreError) -> Self {
        use jobward_store::StoreError::*;
        match e {
            ExecutionNotFound(_)
            | JobNotFound(_)
            | JobUndefined(_)
            | Invalid(_)
            | SchemaTooNew { .. }
            | SchemaTooOld { .. }
            | Missing(_)
            | UnsupportedUrl(_)
            | Unsupported(_) => Failure::Input(e.to_string()),
            Open { url, message } => Failure::Input(output::open_error(&url, &message)),
            other => Failure::Check(other.to_string()),
        }
    }
}

/// A clap error as one line: `jobward: error: ... (usage: ...)`. Help and version are
/// printed as they are.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let code = e.exit_code().clamp(0, 255) as u8;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(code);
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let what = lines
        .next()
        .unwrap_or("bad usage")
        .trim_start_matches("error: ");
    let usage = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| format!(" (usage: {u})"))
        .unwrap_or_default();
    eprintln!("jobward: error: {what}{usage}");
    ExitCode::from(code)
}

/// Log lines go to stderr, as text or JSON; the filter is JOBWARD_LOG (default `info` for the
/// long-running commands, `warn` for the others).
fn init_logging(cli: &Cli) {
    let long_running = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    let filter = std::env::var("JOBWARD_LOG").unwrap_or_else(|_| {
        if long_running {
            "info".into()
        } else {
            "warn".into()
        }
    });
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
    let format = cli.log_format.or_else(|| {
        cli.command
            .store_args()
            .and_then(|_| commands::config_path(cli))
            .and_then(|p| config::peek_log_format(&p))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or_default() {
        config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    // Fault injection for the fault tests: nothing happens unless FAILPOINTS names a point
    // ("name=action;name=action", the fail crate's syntax, e.g. "complete_before_commit=sleep(3000)").
    if let Ok(points) = std::env::var("FAILPOINTS") {
        for point in points.split(';').filter(|p| !p.trim().is_empty()) {
            let (name, action) = point.split_once('=').unwrap_or((point, ""));
            if let Err(e) = fail::cfg(name.trim(), action.trim()) {
                eprintln!("jobward: error: FAILPOINTS: '{point}': {e}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jobward: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(m)) => {
            eprintln!("jobward: error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Check(m)) => {
            eprintln!("jobward: error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Quiet) => ExitCode::from(1),
        Err(Failure::Code(c)) => ExitCode::from(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn every_command(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), c.clone()));
        for sub in c.get_subcommands() {
            every_command(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_and_argument_has_help() {
        let mut all = Vec::new();
        every_command(&Cli::command(), "jobward".into(), &mut all);
        let mut missing = Vec::new();
        for (path, c) in &all {
            for arg in c.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            if c.get_about().is_none() && path != "jobward help" {
                missing.push(format!("{path}: (the command itself)"));
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn worker_and_heartbeat_do_not_offer_config_or_db() {
        let mut all = Vec::new();
        every_command(&Cli::command(), "jobward".into(), &mut all);
        for (path, c) in &all {
            let names: Vec<&str> = c.get_arguments().map(|a| a.get_id().as_str()).collect();
            let offers = names.contains(&"config") || names.contains(&"db");
            if path == "jobward worker" || path == "jobward heartbeat" {
                assert!(!offers, "{path} offers --config/--db: {names:?}");
            } else if c.get_subcommands().next().is_none()
                && !path.ends_with(" help")
                && !path.contains(" help ")
            {
                assert!(offers, "{path} does not take --config/--db: {names:?}");
            }
        }
        // Given before the command, they still work (and worker ignores them).
        assert!(Cli::try_parse_from(["jobward", "--config", "x.toml", "runs", "list"]).is_ok());
        assert!(Cli::try_parse_from(["jobward", "runs", "list", "--config", "x.toml"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "jobward", "worker", "--config", "x", "--server", "http://h", "--queue", "q"
            ])
            .is_err(),
            "worker refuses --config after it"
        );
    }

    #[test]
    fn audit_help_lists_the_invariants_it_checks() {
        let mut c = Cli::command();
        let audit = c.find_subcommand_mut("audit").unwrap();
        let help = audit.render_long_help().to_string();
        for inv in [
            "1  States",
            "2  Deadlines",
            "3  One source of truth",
            "6  Events",
        ] {
            assert!(
                help.contains(inv),
                "audit --help does not list {inv:?}:\n{help}"
            );
        }
    }
}
