//! Handlers: what runs a claimed execution. A Rust service registers its own [`Handler`]s by
//! job name and runs them against a jobward server with [`crate::run`]; `jobward worker` is the
//! same loop with one built-in handler, [`Command`], for jobs that have a command.
//!
//! ```no_run
//! use std::sync::Arc;
//! use jobward_worker::{Context, Failure, Handler, WorkerConfig};
//!
//! struct SendReport;
//!
//! #[jobward_worker::async_trait]
//! impl Handler for SendReport {
//!     async fn run(&self, ctx: &Context) -> Result<(), Failure> {
//!         let start = ctx.last_checkpoint().and_then(|c| c["page"].as_u64()).unwrap_or(0);
//!         for page in start..10 {
//!             if ctx.stopping().is_some() {
//!                 return Err(Failure::new("stopped on request"));
//!             }
//!             ctx.progress(page as f64 / 10.0);
//!             ctx.checkpoint(serde_json::json!({ "page": page + 1 }));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn start(mut cfg: WorkerConfig) {
//! cfg.handlers.insert("send-report".into(), Arc::new(SendReport));
//! let (_stop, shutdown) = tokio::sync::watch::channel(false);
//! jobward_worker::run(cfg, shutdown).await.unwrap();
//! # }
//! ```
//!
//! The worker keeps the protocol's rules for every handler: one heartbeat call renews all
//! leases and carries each run's progress, phase and checkpoint; a cancel, a lost lease, the
//! run timeout and a shutdown are told to the handler through [`Context::stopping`] and
//! [`Context::stopped`]; a handler that does not return within the kill grace after that is
//! dropped (an `async` handler is cancelled at its next `.await`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobward_exec::{Ending, Exit, Launch, Stop};
use jobward_protocol::{ClaimedExecution, Outcome};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Runs one execution. `Ok(())` completes it; an error fails it (with its message), unless
/// the run was being stopped: then it is recorded as what stopped it (cancelled, timed out).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: &Context) -> Result<(), Failure>;
}

/// Why a run is being stopped; a handler sees it through [`Context::stopping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// Cancelled from the API, the CLI or the dashboard: stop and return.
    Cancel,
    /// Its run timeout passed.
    RunTimeout,
    /// The worker is shutting down: it will hand the run back, to run again elsewhere.
    ShuttingDown,
    /// The lease is lost (the ledger already ended the run): stop at once; nothing more
    /// of this run is recorded.
    LeaseLost,
}

/// A failed run: its message, and what a command's process ended with.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            outcome: Outcome::Failed,
            exit_code: None,
            signal: None,
        }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::new(e.to_string())
    }
}

/// What the next heartbeat carries for a run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Beat {
    pub progress: Option<f64>,
    pub phase: Option<String>,
    pub checkpoint: Option<Value>,
}

impl Beat {
    pub fn is_empty(&self) -> bool {
        self.progress.is_none() && self.phase.is_none() && self.checkpoint.is_none()
    }

    /// Puts back what a failed heartbeat did not deliver, unless newer values came since.
    pub fn restore(&mut self, old: Beat) {
        self.progress = self.progress.or(old.progress);
        self.phase = self.phase.take().or(old.phase);
        self.checkpoint = self.checkpoint.take().or(old.checkpoint);
    }
}

/// The most of a handler's own log lines kept for the run's log tail.
const LOG_TAIL: usize = 60 * 1024;

/// What a handler knows of its run and how it reports on it.
pub struct Context {
    execution: ClaimedExecution,
    pub(crate) beat: Arc<Mutex<Beat>>,
    stopping: watch::Receiver<Option<Stopping>>,
    /// Process-level stop requests, for the command handler.
    pub(crate) stops: Mutex<Option<mpsc::UnboundedReceiver<Stop>>>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log_path: PathBuf,
    pub(crate) log_max_bytes: u64,
    log: Mutex<String>,
}

impl Context {
    pub(crate) fn new(
        execution: ClaimedExecution,
        stopping: watch::Receiver<Option<Stopping>>,
        stops: mpsc::UnboundedReceiver<Stop>,
        env: Vec<(String, String)>,
        log_path: PathBuf,
        log_max_bytes: u64,
    ) -> Context {
        Context {
            execution,
            beat: Default::default(),
            stopping,
            stops: Mutex::new(Some(stops)),
            env,
            log_path,
            log_max_bytes,
            log: Mutex::new(String::new()),
        }
    }

    /// The claimed execution: id, job, attempt, payload, lease durations.
    pub fn execution(&self) -> &ClaimedExecution {
        &self.execution
    }

    pub fn job(&self) -> &str {
        &self.execution.job
    }

    pub fn payload(&self) -> Option<&Value> {
        self.execution.payload.as_ref()
    }

    pub fn attempt(&self) -> u32 {
        self.execution.attempt
    }

    /// The previous attempt's last checkpoint, on a retry.
    pub fn last_checkpoint(&self) -> Option<&Value> {
        self.execution.checkpoint.as_ref()
    }

    /// Progress between 0 and 1 (clamped), sent with the next heartbeat.
    pub fn progress(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.beat.lock().expect("beat lock").progress = Some(p);
    }

    /// The phase the run is in ("render", "upload"), shown in `runs show`.
    pub fn phase(&self, phase: impl Into<String>) {
        self.beat.lock().expect("beat lock").phase = Some(phase.into());
    }

    /// A checkpoint the next attempt receives if this one fails.
    pub fn checkpoint(&self, checkpoint: Value) {
        self.beat.lock().expect("beat lock").checkpoint = Some(checkpoint);
    }

    /// A line for the run's log tail.
    pub fn log(&self, line: impl AsRef<str>) {
        let mut log = self.log.lock().expect("log lock");
        log.push_str(line.as_ref());
        log.push('\n');
        if log.len() > LOG_TAIL {
            let mut cut = log.len() - LOG_TAIL;
            while !log.is_char_boundary(cut) {
                cut += 1;
            }
            log.drain(..cut);
        }
    }

    pub(crate) fn log_tail(&self) -> Option<String> {
        let log = self.log.lock().expect("log lock");
        (!log.is_empty()).then(|| log.clone())
    }

    /// Whether, and why, the run is being stopped.
    pub fn stopping(&self) -> Option<Stopping> {
        *self.stopping.borrow()
    }

    pub(crate) fn stopping_watch(&self) -> watch::Receiver<Option<Stopping>> {
        self.stopping.clone()
    }

    /// Resolves when the run is asked to stop (for `tokio::select!` beside the work).
    pub async fn stopped(&self) -> Stopping {
        let mut rx = self.stopping.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The worker dropped the run: as good as a lost lease.
                return Stopping::LeaseLost;
            }
        }
    }
}

/// The built-in handler of jobs with a command: `sh -c COMMAND` under jobward's supervisor,
/// in its own process group, with the `JOBWARD_*` environment and a bounded log; SIGTERM and
/// then SIGKILL at the run timeout or on a cancel, SIGKILL at once when the lease is lost.
pub struct Command;

#[async_trait]
impl Handler for Command {
    async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let e = ctx.execution();
        let launch = Launch {
            command: e.command.clone(),
            env: ctx.env.clone(),
            log_path: ctx.log_path.clone(),
            log_max_bytes: ctx.log_max_bytes,
            cwd: None,
            echo: false,
        };
        let running = jobward_exec::spawn(&launch)
            .map_err(|err| Failure::new(format!("could not start `sh -c`: {err}")))?;
        let stops = ctx
            .stops
            .lock()
            .expect("stops lock")
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        let terminate_at = Instant::now() + Duration::from_millis(e.terminate_after_ms);
        let f = running
            .supervise(
                Some(terminate_at),
                Duration::from_millis(e.kill_grace_ms),
                stops,
            )
            .await;
        let (exit_code, signal) = match f.exit {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
        };
        let failure = |outcome: Outcome, message: &str| Failure {
            message: message.to_string(),
            outcome,
            exit_code,
            signal,
        };
        match f.ending {
            Ending::RunTimeout => Err(failure(
                Outcome::TimedOut,
                "exceeded its run timeout; stopped by its worker",
            )),
            Ending::Stopped(Stop::Immediate) => {
                Err(failure(Outcome::Failed, "killed after its lease was lost"))
            }
            Ending::Stopped(Stop::Graceful) => Err(failure(Outcome::Cancelled, "")),
            _ if f.exit.success() => Ok(()),
            _ => Err(failure(Outcome::Failed, "")),
        }
    }
}
