//! `jobward`: the one binary. Parses flags, loads the configuration, opens the store named by
//! it (the only place that names a backend), runs a command, and turns every error into one
//! line and an exit code: 0 fine, 1 a check failed, 2 bad usage or input.

mod commands;
mod output;

use jobward::config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "jobward",
    version,
    about = "A job scheduler and execution ledger: every execution reaches a terminal state with a true record."
)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./jobward.toml if it exists.
    #[arg(long, global = true, env = "JOBWARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://jobward.db. Overrides [server] db.
    #[arg(long, global = true, env = "JOBWARD_DATABASE_URL", value_name = "URL")]
    pub db: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

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
    /// Check invariants 1-3 (and 6) on the database; exits 1 on any violation.
    Audit(AuditArgs),
    /// Create the database or bring its schema up to date.
    Migrate,
    /// Nodes that have served this database.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Run a remote worker: claim executions of some queues from a jobward server and run them.
    Worker(WorkerArgs),
    /// Report progress from inside a running execution (reads the JOBWARD_* variables).
    Heartbeat(HeartbeatArgs),
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
    /// The server (default: from the config's [server] bind).
    #[arg(long, env = "JOBWARD_SERVER_URL")]
    pub server: Option<String>,
    /// A token with the operate role, when the server has tokens.
    #[arg(long, env = "JOBWARD_TOKEN", hide_env_values = true)]
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
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Jobs with their schedule, next fire and status (derived from their executions).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Queue an execution of a job now (under its overlap policy).
    Trigger {
        name: String,
        /// Wait until it ends; exit 1 unless it completed.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make the running server re-read its configuration (jobs and concurrency limits);
    /// running executions are not disturbed. SIGHUP does the same.
    Reload(RemoteArgs),
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Executions, newest first.
    List(RunsListArgs),
    /// One execution: its fields, event timeline and log tail.
    Show {
        id: i64,
        /// Lines of log to show.
        #[arg(long, default_value_t = 40)]
        log_lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel an execution: at once if queued; a running one is stopped (SIGTERM, then SIGKILL).
    Cancel {
        id: i64,
        /// Return without waiting for the owner to confirm.
        #[arg(long)]
        no_wait: bool,
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
    #[arg(long)]
    pub job: Option<String>,
    /// Only running executions whose last heartbeat is older than this, e.g. 10m.
    #[arg(long, value_name = "DUR")]
    pub stale_after: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Page: only executions with an id below this one.
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Running executions whose last heartbeat is older than this.
    #[arg(long, default_value = "1h", value_name = "DUR")]
    pub stale_after: String,
    /// Change them (timed_out, reason manual_cleanup). Without it: a dry run.
    #[arg(long)]
    pub apply: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[arg(long)]
    pub json: bool,
    /// Running longer than this counts as long-running (default from [health], 1h).
    #[arg(long, value_name = "DUR")]
    pub long_running_after: Option<String>,
    /// Warn when more than this many executions are long-running (default 5).
    #[arg(long, value_name = "N")]
    pub warn_long_running: Option<u64>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Apply the reaper rules to what is overdue, then check again.
    #[arg(long)]
    pub repair: bool,
    /// How far past a deadline a live execution may be (one reaper tick and some).
    #[arg(long, default_value = "5s", value_name = "DUR")]
    pub tolerance: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    List {
        #[arg(long)]
        json: bool,
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
            | Open { .. }
            | UnsupportedUrl(_) => Failure::Input(e.to_string()),
            other => Failure::Check(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
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
    let serving = matches!(cli.command, Command::Serve(_));
    let filter = std::env::var("JOBWARD_LOG").unwrap_or_else(|_| {
        if serving {
            "info".into()
        } else {
            "warn".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
            eprintln!("jobward: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Quiet) => ExitCode::from(1),
    }
}
