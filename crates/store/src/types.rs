//! Rows, parameters and reports of the store's operations.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jobward_core::{JobSpec, Overlap, Reason, RetryPolicy, State, Timeouts, Timestamp};
use serde::{Deserialize, Serialize};

pub type ExecutionId = i64;

/// Why an execution exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its instant came.
    Schedule,
    /// It stands for instants missed during downtime (misfire = run_once).
    CatchUp,
    /// Someone triggered it.
    Manual,
    /// It retries a previous attempt.
    Retry,
    /// An operator asked for the instants of a time range to be fired (each at most once).
    Backfill,
    /// It ran outside jobward (`jobward exec`, pings): jobward only records it.
    External,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
            Trigger::Backfill => "backfill",
            Trigger::External => "external",
        }
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "schedule" => Ok(Trigger::Schedule),
            "catch_up" => Ok(Trigger::CatchUp),
            "manual" => Ok(Trigger::Manual),
            "retry" => Ok(Trigger::Retry),
            "backfill" => Ok(Trigger::Backfill),
            "external" => Ok(Trigger::External),
            _ => Err(format!("unknown trigger '{s}'")),
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The process that runs an execution, as its owner recorded it. `pid` with `start_ticks`
/// (the kernel's start time of the process) and `boot_id` identify it beyond pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub pgid: i32,
    pub start_ticks: u64,
    pub boot_id: Option<String>,
}

/// One execution row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionRow {
    pub id: ExecutionId,
    pub job: String,
    pub number: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub retry_of: Option<ExecutionId>,
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    pub state: State,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub command: String,
    pub runner: String,
    pub concurrency_key: Option<String>,
    pub overlap: Overlap,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub queued_at: Timestamp,
    pub run_after: Timestamp,
    pub start_deadline: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub lease_owner: Option<String>,
    #[serde(skip_serializing)]
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub run_deadline: Option<Timestamp>,
    pub node_id: Option<String>,
    pub cancel_requested_at: Option<Timestamp>,
    pub cancel_reason: Option<Reason>,
    pub cancel_message: Option<String>,
    pub cancel_deadline: Option<Timestamp>,
    pub process: Option<ProcessInfo>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub finished_at: Option<Timestamp>,
    pub payload: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub progress: Option<f64>,
    pub phase: Option<String>,
    /// The last checkpoint its owner reported; a retry starts with its predecessor's.
    pub checkpoint: Option<serde_json::Value>,
    /// Who moved it to its terminal state: its owner, a reaper, an operator.
    pub ended_by: Option<String>,
    /// Claims take higher priorities first within a queue.
    pub priority: i32,
    /// How long it is expected to take (from its job when it was created).
    pub expected_duration: Option<jobward_core::DurationBounds>,
    /// When it was found running past the upper bound of `expected_duration`.
    pub overdue_at: Option<Timestamp>,
}

impl ExecutionRow {
    /// The lease reference that proves ownership of this execution as it is now.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            id: self.id,
            attempt: self.attempt,
            token: self.lease_token.clone().unwrap_or_default(),
        }
    }

    /// For a running execution whose lease expired (nobody heartbeats for it and the reaper
    /// has not settled it yet): how long since its last heartbeat.
    pub fn silent_for(&self, now: Timestamp) -> Option<Duration> {
        silent_for(self.state, self.heartbeat_at, self.lease_expires_at, now)
    }

    /// Time spent running, up to `now` for a running execution.
    pub fn runtime(&self, now: Timestamp) -> Option<Duration> {
        let start = self.started_at?;
        let end = self.finished_at.unwrap_or(now);
        Some(jobward_core::deadline::between(start, end))
    }
}

/// What identifies a lease: the execution, its attempt and the lease (fencing) token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LeaseRef {
    pub id: ExecutionId,
    pub attempt: u32,
    pub token: String,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub execution_id: ExecutionId,
    pub at: Timestamp,
    pub kind: EventKind,
    pub from: Option<State>,
    pub to: Option<State>,
    pub reason: Option<String>,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A state change (or the creation of the execution, from no state).
    Transition,
    /// A report that was refused: a late or forged heartbeat or completion.
    Refused,
    /// Something worth knowing that changes no state (a cancel request, a process start).
    Note,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Transition => "transition",
            EventKind::Refused => "refused",
            EventKind::Note => "note",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transition" => Ok(EventKind::Transition),
            "refused" => Ok(EventKind::Refused),
            "note" => Ok(EventKind::Note),
            _ => Err(format!("unknown event kind '{s}'")),
        }
    }
}

/// A job with what the ledger knows of it. Its status is derived from its executions
/// (invariant 7): nothing about it is stored that could disagree with them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub spec: JobSpec,
    /// Where the job is defined: the configuration file or the API.
    pub source: JobSource,
    /// False once the job is gone from the configuration; its history stays readable.
    pub defined: bool,
    pub paused: bool,
    pub next_fire_at: Option<Timestamp>,
    /// Its live executions (queued or running), oldest first.
    pub live: Vec<ExecutionSummary>,
    /// Its latest terminal execution.
    pub last_finished: Option<ExecutionSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionSummary {
    pub id: ExecutionId,
    pub number: i64,
    pub attempt: u32,
    pub state: State,
    pub reason: Option<Reason>,
    pub queued_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
    /// Not before this time (a delayed run, or a retry waiting out its backoff).
    pub run_after: Timestamp,
}

/// The one rule for "running, but nobody heartbeats for it": a running execution whose lease
/// expired and that the reaper has not settled yet. Returns the time since its last heartbeat.
pub fn silent_for(
    state: State,
    heartbeat_at: Option<Timestamp>,
    lease_expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<Duration> {
    match (state, lease_expires_at) {
        (State::Running, Some(lease)) if lease <= now => Some(jobward_core::deadline::between(
            heartbeat_at.unwrap_or(lease),
            now,
        )),
        _ => None,
    }
}

impl JobRow {
    /// The longest silence among its running executions whose lease expired.
    pub fn silent_for(&self, now: Timestamp) -> Option<Duration> {
        self.live
            .iter()
            .filter_map(|e| silent_for(e.state, e.heartbeat_at, e.lease_expires_at, now))
            .max()
    }

    /// The soonest start of its queued executions when none of them is due yet (all are
    /// delayed runs or retries waiting out a backoff): the job is scheduled, not waiting.
    pub fn scheduled_for(&self, now: Timestamp) -> Option<Timestamp> {
        if self.live.is_empty() || self.live.iter().any(|e| e.state != State::Queued) {
            return None;
        }
        let soonest = self.live.iter().map(|e| e.run_after).min()?;
        (soonest > now).then_some(soonest)
    }

    /// Running or queued when one of its executions is, else the state of its latest
    /// terminal execution; `None` when it never ran.
    pub fn state(&self) -> Option<State> {
        if self.live.iter().any(|e| e.state == State::Running) {
            return Some(State::Running);
        }
        if !self.live.is_empty() {
            return Some(State::Queued);
        }
        self.last_finished.as_ref().map(|e| e.state)
    }

    /// [`JobRow::state`] in words ("never run" when it never ran).
    pub fn status(&self) -> String {
        self.state()
            .map_or_else(|| "never run".into(), |s| s.to_string())
    }
}

/// Where a job is defined. Jobs from the file are owned by the file; the API may only change
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    File,
    Api,
}

impl JobSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::File => "file",
            JobSource::Api => "api",
        }
    }
}

impl FromStr for JobSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file" => Ok(JobSource::File),
            "api" => Ok(JobSource::Api),
            _ => Err(format!("unknown job source '{s}'")),
        }
    }
}

/// One recorded change of a job: who, when, the definition before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobChange {
    pub id: i64,
    pub job: String,
    pub at: Timestamp,
    pub actor: String,
    /// created, replaced, changed, deleted, paused or resumed.
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Create or replace a job defined through the API.
#[derive(Debug, Clone)]
pub struct PutJob {
    pub spec: JobSpec,
    pub actor: String,
    /// `changed` for a partial change (PATCH), `replaced` otherwise.
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PutJobReport {
    pub created: bool,
    /// The definition it replaced.
    pub before: Option<JobSpec>,
}

/// Delete a job defined through the API (its history stays, per retention).
#[derive(Debug, Clone)]
pub struct DeleteJob {
    pub name: String,
    /// Cancel its live executions; without it a job with live executions is not deleted.
    pub cancel: bool,
    pub actor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeleteJobReport {
    /// Executions cancelled (queued) or asked to stop (running).
    pub cancelled: Vec<ExecutionId>,
}

/// Move a queued execution's start (a delayed run) to another time.
#[derive(Debug, Clone)]
pub struct Reschedule {
    pub id: ExecutionId,
    pub run_at: Timestamp,
    pub actor: String,
}

/// Fire each instant of a job's schedule in [from, to] that has no execution yet.
#[derive(Debug, Clone)]
pub struct Backfill {
    pub job: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub actor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackfillReport {
    /// Executions created (queued, or skipped under the overlap policy), one per instant.
    pub created: Vec<ExecutionId>,
    /// Instants that already had their execution: left alone (invariant 9).
    pub already: usize,
}

/// A run that happens outside jobward starts (`jobward exec`, a start ping): it takes the
/// instant of its job that is due (an external job's schedule), or a new execution of its
/// own, and holds its lease.
#[derive(Debug, Clone)]
pub struct StartExternal {
    pub job: String,
    /// The lease owner, e.g. `exec:HOST:PID` or `ping`.
    pub owner: String,
    pub actor: String,
    /// What the record says about where it runs (host, user).
    pub note: String,
    /// Pairs a start with its end (a ping's `run_id`): a repeated start with the same id
    /// returns the same execution.
    pub run_id: Option<String>,
    /// Lease length; `None`: the job's heartbeat timeout (an owner that heartbeats). A start
    /// ping, which cannot heartbeat, holds its lease until the run deadline.
    pub lease: Option<Duration>,
}

impl StartExternal {
    /// The idempotency key a start with this `run_id` is recorded under (its end finds it).
    pub fn run_key(run_id: &str) -> String {
        format!("run:{run_id}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StartOutcome {
    /// It runs: the execution is `running` under the caller's lease.
    Started(ExecutionRow),
    /// The job's overlap policy skipped it (another run is live): it must not run.
    Skipped(ExecutionRow),
}

/// Registering a node incarnation.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub pid: i32,
    pub start_ticks: Option<u64>,
    pub boot_id: Option<String>,
    pub lease: Duration,
    /// Incarnations with this name that the caller proved dead (same host and boot, process
    /// gone): they are marked stopped even though their node lease has not run out.
    pub supersede: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    Registered,
    /// Another live incarnation with the same name holds its node lease.
    NameInUse {
        node_id: String,
        hostname: String,
        pid: i32,
        start_ticks: Option<u64>,
        boot_id: Option<String>,
        heartbeat_at: Timestamp,
        lease_expires_at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub pid: i32,
    pub start_ticks: Option<u64>,
    pub boot_id: Option<String>,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    pub lease_expires_at: Timestamp,
    pub stopped_at: Option<Timestamp>,
    pub stop_reason: Option<String>,
}

/// Make the ledger's job table match a configuration.
#[derive(Debug, Clone, Default)]
pub struct SyncJobs {
    pub jobs: Vec<JobSpec>,
    pub limits: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

#[derive(Debug, Clone, Default)]
pub struct TriggerParams {
    pub job: String,
    pub actor: String,
    pub payload: Option<serde_json::Value>,
    /// The same key for the same job returns the execution it created the first time.
    pub idempotency_key: Option<String>,
    /// Not before this time (a delayed run); its start deadline counts from it.
    pub run_at: Option<Timestamp>,
    /// Overrides the job's priority.
    pub priority: Option<i32>,
}

/// The result of creating an execution under the job's overlap policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Created {
    pub execution: ExecutionRow,
    /// Executions whose cancel this one requested (overlap = replace).
    pub replaced: Vec<ExecutionId>,
    /// True when an idempotency key matched an execution created earlier: nothing was created.
    pub existing: bool,
}

/// One scheduler tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FireReport {
    /// Executions created for on-time instants.
    pub fired: Vec<ExecutionId>,
    /// Catch-up executions created for missed instants.
    pub caught_up: Vec<ExecutionId>,
    /// Skipped records written (overlap, missed schedule, paused).
    pub skipped: Vec<ExecutionId>,
    /// Running executions asked to stop because a newer one replaced them.
    pub replaced: Vec<ExecutionId>,
    /// Earliest cursor among jobs after this tick, to sleep until.
    pub next_fire_at: Option<Timestamp>,
}

/// Which of its runner's executions a claimer can run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Serves {
    /// Every one: a node's executor, or a worker that runs commands and asks for no more.
    #[default]
    All,
    /// Command jobs when `commands`, and the handler jobs (no command) named in `handlers`.
    Only {
        commands: bool,
        handlers: Vec<String>,
    },
}

impl Serves {
    /// Whether a claimer serving this runs the given job (`command` empty: a handler job).
    pub fn runs(&self, job: &str, command: &str) -> bool {
        match self {
            Serves::All => true,
            Serves::Only { commands, handlers } => {
                if command.is_empty() {
                    handlers.iter().any(|h| h == job)
                } else {
                    *commands
                }
            }
        }
    }
}

/// A worker seen claiming: what it polls and what it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub queues: Vec<String>,
    pub serves: Serves,
    pub first_seen_at: Timestamp,
    pub last_claim_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// Lease owner: a node incarnation or a worker id.
    pub owner: String,
    /// Which executions: `local` for a node's own executor, or a queue name.
    pub runner: String,
    /// Set when the claimer is a node's local executor (so startup recovery can find them).
    pub node_id: Option<String>,
    pub limit: u32,
    /// What the claimer can run; it is given nothing else.
    pub serves: Serves,
}

/// One lease in a heartbeat, with what its owner reports about the run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LeaseBeat {
    pub lease: LeaseRef,
    /// 0..=1.
    pub progress: Option<f64>,
    pub phase: Option<String>,
    pub checkpoint: Option<serde_json::Value>,
}

impl From<LeaseRef> for LeaseBeat {
    fn from(lease: LeaseRef) -> Self {
        LeaseBeat {
            lease,
            ..Default::default()
        }
    }
}

/// Renew leases (and the node's own lease) in one statement per kind.
#[derive(Debug, Clone)]
pub struct HeartbeatParams {
    pub owner: String,
    pub leases: Vec<LeaseBeat>,
    /// The node's incarnation and lease length, when a node heartbeats.
    pub node: Option<(String, Duration)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeartbeatReport {
    pub renewed: Vec<ExecutionId>,
    /// Leases that are no longer the caller's; its process must be stopped.
    pub lost: Vec<LostLease>,
    /// Renewed executions whose cancel was requested: (id, reason).
    pub cancel_requested: Vec<(ExecutionId, Reason)>,
    /// False when the node row was taken over (stopped by someone else): the node must stop.
    pub node_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostLease {
    pub id: ExecutionId,
    pub state: Option<State>,
    pub reason: Option<Reason>,
}

/// How an owner says an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `None` for success; otherwise the reason kind (failed, run timeout, confirmed cancel).
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl Outcome {
    pub fn success(exit_code: i32) -> Outcome {
        Outcome {
            reason: None,
            message: None,
            exit_code: Some(exit_code),
            signal: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompleteParams {
    pub lease: LeaseRef,
    pub outcome: Outcome,
    pub actor: String,
}

/// A terminal transition that happened, with the retry it scheduled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settled {
    pub execution: ExecutionRow,
    pub retry: Option<ExecutionRow>,
    /// True when this was a repeat of a completion already recorded (idempotent).
    pub repeated: bool,
}

/// Progress reported from inside a running execution (`jobward heartbeat`), proven by the
/// execution's lease token. It changes no state and renews no lease.
#[derive(Debug, Clone)]
pub struct ProgressParams {
    pub lease: LeaseRef,
    pub progress: Option<f64>,
    pub phase: Option<String>,
    pub checkpoint: Option<serde_json::Value>,
    pub actor: String,
}

/// A worker hands back executions it will not finish (it is shutting down).
#[derive(Debug, Clone)]
pub struct ReleaseParams {
    pub owner: String,
    pub leases: Vec<LeaseRef>,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReleaseReport {
    /// Each handed-back attempt (`cancelled`, `handed_back`) with its immediate next attempt.
    pub released: Vec<Settled>,
    /// Leases that were no longer the caller's: nothing was changed for them.
    pub lost: Vec<LostLease>,
}

#[derive(Debug, Clone)]
pub struct CancelParams {
    pub id: ExecutionId,
    pub reason: Reason,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled { execution: ExecutionRow },
    /// It runs; its owner was asked to stop it (it must confirm before `cancel_deadline`).
    Requested { execution: ExecutionRow },
    /// It had already ended.
    AlreadyTerminal { execution: ExecutionRow },
}

#[derive(Debug, Clone)]
pub struct ReapParams {
    pub actor: String,
    /// Rows settled per transaction, so one tick never holds the write lock for long.
    pub batch: u32,
}

/// One execution the reaper (or startup recovery, or cleanup) settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovered {
    pub id: ExecutionId,
    pub job: String,
    pub number: i64,
    pub attempt: u32,
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub message: String,
    pub lease_owner: Option<String>,
    pub node_id: Option<String>,
    pub last_heartbeat: Option<Timestamp>,
    pub retry: Option<ExecutionId>,
    /// Who would have run it: "local", a queue, or "external".
    pub runner: String,
    /// The instant it stood for, for a scheduled run.
    pub scheduled_for: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReapReport {
    pub recovered: Vec<Recovered>,
}

impl ReapReport {
    pub fn count(&self, reason: Reason) -> usize {
        self.recovered.iter().filter(|r| r.reason == reason).count()
    }
    pub fn retries(&self) -> usize {
        self.recovered.iter().filter(|r| r.retry.is_some()).count()
    }
}

/// Settle executions that a previous incarnation of a node owned.
#[derive(Debug, Clone)]
pub struct RecoverParams {
    /// This node's name; earlier incarnations with the same name are "my previous self".
    pub name: String,
    /// This incarnation, which is never touched.
    pub node_id: String,
    pub actor: String,
}

#[derive(Debug, Clone, Default)]
pub struct CleanupParams {
    /// Running executions whose last heartbeat is older than this.
    pub stale_after: Duration,
    pub apply: bool,
    pub actor: String,
    /// What the caller found of each candidate's processes (killed, or may still be alive
    /// on some host), appended to its message. When given, only these executions are
    /// settled: the ones whose processes were looked at.
    pub process_notes: Option<std::collections::HashMap<ExecutionId, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// Everything that matched.
    pub candidates: Vec<ExecutionRow>,
    /// What was changed (empty on a dry run).
    pub changed: Vec<Recovered>,
    /// Candidates that ended by themselves between the read and the write.
    pub raced: Vec<ExecutionId>,
}

#[derive(Debug, Clone)]
pub struct PruneParams {
    pub batch: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PruneReport {
    /// (job, execution id) of every pruned execution, so its log can be removed.
    pub deleted: Vec<(String, ExecutionId)>,
}

/// Which executions to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub job: Option<String>,
    pub states: Vec<State>,
    /// Only running executions whose last heartbeat is older than this.
    pub stale_after: Option<Duration>,
    /// Queued at or after this time.
    pub since: Option<Timestamp>,
    /// Queued before this time.
    pub until: Option<Timestamp>,
    /// Keyset pagination: only ids below this one.
    pub before_id: Option<ExecutionId>,
    pub limit: u32,
    /// Only those that ended for this reason.
    pub reason: Option<Reason>,
    /// Only those of this trigger.
    pub trigger: Option<Trigger>,
    /// Only those held (or last held) by this lease owner or node incarnation.
    pub owner: Option<String>,
    /// Only running executions whose lease expired (nobody heartbeats for them).
    pub lease_expired: bool,
}

/// A queue (a runner: "local", a worker queue, or "external") as it stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    pub runner: String,
    /// Queued and due: waiting for a claimer.
    pub due: u64,
    /// Queued for later (delayed runs, retries waiting out their backoff).
    pub later: u64,
    /// The oldest due execution's start time (how long the queue has been waiting).
    pub oldest_due: Option<Timestamp>,
    pub running: u64,
    /// Claims in the last five minutes (counted up to 10,000 across all queues).
    pub claimed_5m: u64,
}

/// Start another attempt of a finished execution now (an operator's "retry now").
#[derive(Debug, Clone)]
pub struct RetryNow {
    pub id: ExecutionId,
    pub actor: String,
}

#[derive(Debug, Clone)]
pub struct HealthParams {
    pub long_running_after: Duration,
    pub stale_after: Option<Duration>,
}

/// The figures of `jobward health` (the seed 001 report's fields, plus stale and queued).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthMetrics {
    pub running_executions: u64,
    pub queued_executions: u64,
    pub long_running_executions: u64,
    /// Running executions whose lease expired: nobody heartbeats for them.
    pub stale_executions: u64,
    /// Queued executions past their start deadline.
    pub overdue_queued_executions: u64,
    pub recent_executions_24h: u64,
    pub live_nodes: u64,
    pub timestamp: Timestamp,
}

/// Figures for `/metrics`, read at scrape time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub by_state: Vec<(State, u64)>,
    /// The oldest last heartbeat among running executions.
    pub oldest_heartbeat_at: Option<Timestamp>,
    pub slots: Vec<SlotUse>,
    pub now: Timestamp,
    /// Per job and terminal state: when its latest execution in that state finished.
    pub last_finished: Vec<(String, State, Timestamp)>,
    /// Per job: its running executions past the upper bound of their expected duration.
    pub overdue: Vec<(String, u64)>,
    /// Running executions whose lease expired (not settled yet).
    pub stale: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotUse {
    pub key: String,
    pub used: u64,
    pub limit: u64,
}

/// A breach of an invariant found by `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: u8,
    pub execution_id: Option<ExecutionId>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct AuditParams {
    /// How far past a deadline a live execution may be before it is a violation (the reaper
    /// runs once per tick).
    pub tolerance: Duration,
}
