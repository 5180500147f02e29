//! The JSON that crosses HTTP: API views, the worker protocol, and the one error shape.
//! Shared by the server and every client (the `jobward worker`, the CLI); it depends on
//! nothing of jobward, so a worker never links the store.
//!
//! Requests refuse unknown fields, so a typo in a client is an error, not a silent default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

mod codes;
pub use codes::*;

/// Every error: `{"error": {"code": "lease_lost", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: bad_request, invalid_json, unauthorized, forbidden,
    /// not_found, method_not_allowed, conflict, lease_lost, payload_too_large, timeout,
    /// unavailable, internal.
    pub code: ErrorCode,
    /// For humans; never contains SQL or internals.
    pub message: String,
}

/// One execution ("run").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecutionView {
    pub id: i64,
    pub job: String,
    pub number: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    /// queued, running, completed, failed, timed_out, cancelled or skipped.
    pub status: Status,
    /// The status for humans: "running — no heartbeat for 15s (lease expired)",
    /// "running (cancelling: replaced)", or the status itself.
    pub status_text: String,
    /// Running, but its lease expired: nobody heartbeats for it, and the reaper settles it at
    /// its next tick (or an operator's cleanup does).
    pub lease_expired: bool,
    /// For a running execution: how long since its last heartbeat.
    pub heartbeat_age_ms: Option<u64>,
    /// schedule, catch_up, manual or retry.
    pub trigger: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub run_deadline: Option<DateTime<Utc>>,
    pub runtime_ms: Option<u64>,
    /// Why a terminal state other than completed was reached.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub retry_of: Option<i64>,
    /// "local" (a node runs it) or the queue remote workers claim it from.
    pub runner: String,
    pub node_id: Option<String>,
    pub lease_owner: Option<String>,
    pub pid: Option<i32>,
    /// The reason of a cancel that was requested and is not confirmed yet.
    pub cancel_requested: Option<String>,
    pub progress: Option<f64>,
    pub phase: Option<String>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Value>,
    /// Not before this time: set for a queued delayed run (or a retry waiting out its
    /// backoff).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Its priority: claims take higher first within a queue.
    #[serde(default)]
    pub priority: i32,
    /// The command it runs (empty for a handler job).
    #[serde(default)]
    pub command: String,
    /// For a queued execution: it must start by then, or it times out.
    #[serde(default)]
    pub start_deadline: Option<DateTime<Utc>>,
    /// For a running execution whose cancel was requested: settled by then at the latest.
    #[serde(default)]
    pub cancel_deadline: Option<DateTime<Utc>>,
    /// The process group of its process, when a node or worker started one.
    #[serde(default)]
    pub pgid: Option<i32>,
    /// How long it is expected to take ("2m..30m"), when its job says.
    #[serde(default)]
    pub expected_duration: Option<String>,
    /// It ran (or runs) past the upper bound of its expected duration.
    #[serde(default)]
    pub overdue: bool,
    /// It completed faster than the lower bound of its expected duration.
    #[serde(default)]
    pub too_short: bool,
}

/// One entry of an execution's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub execution_id: i64,
    pub at: DateTime<Utc>,
    /// transition, refused or note.
    pub kind: EventKind,
    pub from: Option<Status>,
    pub to: Option<Status>,
    pub reason: Option<String>,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub execution_id: i64,
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    pub execution_id: i64,
    /// The tail of the log (stdout and stderr), or null when there is none.
    pub log: Option<String>,
    /// Where the server keeps it.
    #[serde(default)]
    pub path: Option<String>,
}

/// A job, with its status derived from its executions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub name: String,
    pub command: String,
    /// cron, every or manual.
    pub schedule_kind: String,
    /// "cron 0 0 2 * * * (Europe/Berlin)", "every 30s", "manual".
    pub schedule: String,
    pub next_fire_at: Option<DateTime<Utc>>,
    /// running, queued, the state of its latest terminal execution, or "never run".
    pub status: JobStatus,
    /// The status for humans, e.g. "running — no heartbeat for 15s (lease expired)".
    pub status_text: String,
    /// One of its running executions has an expired lease (nobody heartbeats for it).
    pub lease_expired: bool,
    pub paused: bool,
    /// False when the job is gone from the configuration (its history remains).
    pub defined: bool,
    pub overlap: String,
    pub misfire: String,
    pub concurrency_key: Option<String>,
    pub runner: String,
    pub heartbeat_timeout_ms: u64,
    pub run_timeout_ms: u64,
    pub queue_timeout_ms: u64,
    pub max_attempts: u32,
    /// Where the job is defined: `file` (the configuration file owns it) or `api`.
    pub source: String,
    /// Its live executions (queued or running), oldest first.
    #[serde(default)]
    pub live: Vec<RunRef>,
    /// Its latest finished execution.
    #[serde(default)]
    pub last_finished: Option<RunRef>,
    /// Claims take higher priorities first within a queue (ties by age).
    pub priority: i32,
    /// How long a run is expected to take ("2m..30m"), when set.
    #[serde(default)]
    pub expected_duration: Option<String>,
    /// Its pings need a token of their own (a ping token is set).
    #[serde(default)]
    pub ping_token_set: bool,
}

/// An execution in a job's summary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunRef {
    pub id: i64,
    pub number: i64,
    pub attempt: u32,
    pub status: Status,
    pub reason: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Not before this time (a delayed run, or a retry waiting out its backoff).
    pub run_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    pub job: JobView,
    /// Its most recent executions, newest first.
    pub recent: Vec<ExecutionView>,
    /// For a job run by workers: who serves its queue, in words ("served by 2 workers …",
    /// or why no worker runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<String>,
    /// The workers seen claiming from its queue in the last 5 minutes that run it.
    #[serde(default)]
    pub workers: Vec<WorkerView>,
    /// Its whole definition, every setting explicit (unset optional fields are left out):
    /// what `PUT /api/jobs/{name}` takes.
    pub definition: JobDefinition,
    /// Its recorded changes (through the API, pause and resume), newest first (at most 20).
    pub changes: Vec<JobChangeView>,
}

/// One recorded change of a job: who, when, what it was before and after.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobChangeView {
    pub at: DateTime<Utc>,
    /// `api:TOKEN-NAME`, `cli:USER@HOST`, `dashboard:TOKEN-NAME`, ...
    pub actor: String,
    /// created, replaced, changed, deleted, paused or resumed.
    pub action: String,
    /// The definition before (null when created, paused or resumed).
    #[schema(value_type = Option<serde_json::Value>)]
    pub before: Option<Value>,
    /// The definition after (null when deleted, paused or resumed).
    #[schema(value_type = Option<serde_json::Value>)]
    pub after: Option<Value>,
}

/// A job definition: the fields of a `[[job]]` in the configuration file, with the same
/// names, forms and validation. Absent fields take the server's `[defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobDefinition {
    /// The job's name; in `PUT /api/jobs/{name}` it may be left out (it must match the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Run with `sh -c` by a node (or by a worker, with a queue). Absent with a queue: a
    /// handler job, run by a worker's handler for its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Cron (5 or 6 fields), in `timezone`. Not with `every`. Neither: manual only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A fixed interval, e.g. "30s", "1h". Not with `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA time zone of a cron `schedule` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Lease length: an owner silent this long loses the run (at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<String>,
    /// The longest one attempt may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout: Option<String>,
    /// The longest a run may wait to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// Between SIGTERM and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace: Option<String>,
    /// skip, queue, replace or allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// run_once or skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_grace: Option<String>,
    /// A key with a limit in the server's `[concurrency]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDefinition>,
    /// Remote workers claim it from this queue; absent (or "local"): a node runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// -1000 to 1000; higher is claimed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// "local" (the default: a node runs it, or a worker with `queue`) or "external": it runs
    /// outside jobward (cron, a CronJob, CI) and jobward records its runs (`jobward exec`,
    /// pings) and, with a schedule, each instant that saw no start within `grace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// For an external job with a schedule: how late a start may come before its instant is
    /// recorded as missed (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// How long a run is expected to take: "MIN..MAX", "MIN.." or "..MAX" (e.g. "2m..30m").
    /// Past MAX a run is marked overdue (not killed), under MIN too short; both alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_duration: Option<String>,
    /// A secret (at least 16 characters) that may send this job's pings
    /// (`POST /api/ping/{name}/...`) and nothing else. Never shown back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_token: Option<String>,
    /// Configuration file only: the environment variable holding `ping_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_token_env: Option<String>,
    /// API only (the file's jobs are paused with `jobward jobs pause`): pause or resume it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryDefinition {
    /// Keep at most this many finished executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<i64>,
    /// Delete finished executions older than this, e.g. "30d".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDefinition {
    /// Attempts in all, 1 to 1000 (1: no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    /// Before the second attempt; doubles each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
}

/// The answer to creating, replacing or changing a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPutResponse {
    /// True when the job did not exist (or had been deleted) before.
    pub created: bool,
    pub job: JobView,
    /// Its whole definition as stored.
    pub definition: JobDefinition,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobDeleteResponse {
    pub name: String,
    /// Its live executions that were cancelled (queued) or asked to stop (running).
    pub cancelled: Vec<i64>,
}

/// Fire each instant of the job's schedule in [from, to] that has no execution yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// RFC 3339.
    pub from: String,
    /// RFC 3339; at most 1,000 instants in the range.
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackfillResponse {
    /// The executions created, one per missed instant (queued, or skipped under the overlap
    /// policy).
    pub created: Vec<i64>,
    /// Instants that already had their execution, left alone.
    pub already: usize,
}

/// A node incarnation: one run of `jobward serve`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The incarnation id (new at every start).
    pub id: String,
    /// The node's stable name.
    pub name: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub stop_reason: Option<String>,
    /// live, lease_expired (silent: it will be found lost) or stopped.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// Move a queued execution's start: `run_at` or `delay` (from now).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionPatch {
    /// Not before this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// Not before this long from now ("10m"). Not with `run_at`.
    #[serde(default)]
    pub delay: Option<String>,
}

/// A worker seen claiming.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    pub queues: Vec<String>,
    /// The handler jobs it runs by name; absent: it is offered every job of its queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handlers: Option<Vec<String>>,
    /// Whether it runs jobs' commands.
    pub commands: bool,
    pub last_claim_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Handed to the command as `JOBWARD_PAYLOAD` (JSON text, at most 16 KiB).
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Value>,
    /// The same key returns the execution it created the first time, instead of a second one.
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
    /// Overrides the job's priority (-1000 to 1000; higher is claimed first).
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// Not before this time (RFC 3339): a delayed run. Its queue timeout counts from then.
    #[serde(default)]
    pub run_at: Option<String>,
    /// Not before this long from now ("90s", "15m"): a delayed run. Not with `run_at`.
    #[serde(default)]
    pub delay: Option<String>,
}

/// One trigger of a batch: a job name and what `TriggerRequest` says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerItem {
    pub job: String,
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Value>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub run_at: Option<String>,
    #[serde(default)]
    pub delay: Option<String>,
}

impl TriggerItem {
    /// The fields of a single trigger.
    pub fn request(&self) -> TriggerRequest {
        TriggerRequest {
            payload: self.payload.clone(),
            idempotency_key: self.idempotency_key.clone(),
            priority: self.priority,
            run_at: self.run_at.clone(),
            delay: self.delay.clone(),
        }
    }
}

/// Up to 1,000 triggers of one or several jobs, created in one transaction.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBatchRequest {
    #[schema(max_items = 1000)]
    pub triggers: Vec<TriggerItem>,
}

/// The answer to one trigger of a batch, in the order they were sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TriggerItemResult {
    pub job: String,
    /// accepted (created), repeated (its idempotency key matched an earlier trigger: that
    /// execution) or rejected (see `error`; nothing was created for it).
    pub result: ItemResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// queued, or skipped under the job's overlap policy (or because it is paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerBatchResponse {
    pub results: Vec<TriggerItemResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerResponse {
    /// True when a run was queued: false when the idempotency key matched an earlier trigger
    /// (that execution is returned), or when it was skipped.
    pub created: bool,
    /// It was recorded as skipped (its overlap policy, or the job is paused): it will not run.
    #[serde(default)]
    pub skipped: bool,
    pub execution: ExecutionView,
    /// Executions whose cancel this trigger requested (overlap = replace).
    pub replaced: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseResponse {
    pub name: String,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReloadResponse {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionPage {
    pub executions: Vec<ExecutionView>,
    /// Pass as `before` to get the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// cancelled (it was queued), requested (its owner will stop it) or already_terminal.
    pub result: CancelResult,
    pub execution: ExecutionView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthMetricsView {
    pub running_executions: u64,
    pub queued_executions: u64,
    pub long_running_executions: u64,
    pub stale_executions: u64,
    pub overdue_queued_executions: u64,
    pub recent_executions_24h: u64,
    pub live_nodes: u64,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// healthy or warning.
    pub status: HealthStatus,
    pub metrics: HealthMetricsView,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunningList {
    pub count: usize,
    pub executions: Vec<ExecutionView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    /// Running executions whose last heartbeat is older than this (default "1h").
    pub stale_after: Option<String>,
    /// True unless false is sent: only say what would change.
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CleanupResponse {
    pub dry_run: bool,
    pub stale_after: String,
    pub matched: usize,
    pub changed: usize,
    pub raced: usize,
    /// Every execution it changed or, on a dry run, would change (as it was before).
    pub executions: Vec<ExecutionView>,
    pub changed_ids: Vec<i64>,
    pub retries: Vec<i64>,
    /// What was recorded for each changed execution, in the order of `changed_ids`.
    #[serde(default)]
    pub changed_messages: Vec<String>,
}

// ---- the worker protocol ----

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Stable for the worker process; it owns the leases it claims.
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    /// Queues to claim from, in order of preference.
    #[schema(min_items = 1, max_items = 20)]
    pub queues: Vec<String>,
    /// How many executions at most (1 to 100).
    #[schema(minimum = 1, maximum = 100)]
    pub batch: u32,
    /// Long poll: wait up to this long for work when there is none (0 to 30000).
    #[serde(default)]
    #[schema(maximum = 30000)]
    pub wait_ms: u64,
    /// The handler jobs (jobs with a queue and no command) this worker runs, by job name.
    /// Given, the worker is offered only those and, when `commands` is true, jobs with a
    /// command; absent, it is offered every execution of its queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 200)]
    pub handlers: Option<Vec<String>>,
    /// Whether this worker runs jobs' commands (default: true when `handlers` is absent,
    /// false when it is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<bool>,
}

/// A claimed execution and its lease. Durations are relative: a worker's clock is never
/// compared with the server's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedExecution {
    pub id: i64,
    pub job: String,
    pub number: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub command: String,
    pub trigger: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Value>,
    /// The last checkpoint of the previous attempt, for a retry.
    #[schema(value_type = Option<serde_json::Value>)]
    pub checkpoint: Option<Value>,
    /// Proves the lease in every heartbeat and completion.
    pub lease_token: String,
    /// Heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// The lease lasts this long after each renewal.
    pub heartbeat_timeout_ms: u64,
    /// Send SIGTERM after this long (the run timeout).
    pub terminate_after_ms: u64,
    /// Then SIGKILL after this long.
    pub kill_grace_ms: u64,
    /// The W3C trace context of this attempt's run span, when the server exports traces:
    /// give it to the process as `TRACEPARENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    pub executions: Vec<ClaimedExecution>,
}

/// The proof of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseProof {
    pub id: i64,
    /// The attempt the lease is for (1 to 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseReport {
    pub id: i64,
    /// The attempt the lease is for (1 to 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
    /// 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: Option<f64>,
    #[schema(max_length = 200)]
    pub phase: Option<String>,
    /// Small JSON (at most 16 KiB) handed to a retry of this execution.
    #[schema(value_type = Option<serde_json::Value>)]
    pub checkpoint: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    /// Every lease the worker holds: one call renews them all.
    #[schema(max_items = 1000)]
    pub leases: Vec<LeaseReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LostLeaseView {
    pub id: i64,
    /// What the execution is now (null if it no longer exists).
    pub status: Option<Status>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CancelRequestView {
    pub id: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub renewed: Vec<i64>,
    /// Stop these at once (SIGKILL): the ledger already ended them.
    pub lost: Vec<LostLeaseView>,
    /// Stop these gracefully and complete them with outcome "cancelled".
    pub cancel: Vec<CancelRequestView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    pub id: i64,
    /// The attempt the lease is for (1 to 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
    /// completed, failed, timed_out (the worker enforced the run timeout) or cancelled
    /// (it stopped the run on a cancel request).
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    #[schema(max_length = 4096)]
    pub error: Option<String>,
    /// The end of the run's output, kept as its log (at most 64 KiB).
    #[schema(max_length = 65536)]
    pub log_tail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
/// The same completion sent twice gets this same answer twice.
pub struct CompleteResponse {
    pub execution: ExecutionView,
    pub retry: Option<ExecutionView>,
}

/// One completion in a batch: what `CompleteRequest` says, without the worker id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionReport {
    pub id: i64,
    /// The attempt the lease is for (1 to 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub error: Option<String>,
    /// The end of the run's output, kept as its log (at most 64 KiB).
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub log_tail: Option<String>,
}

/// Many completions in one call and one transaction, each still fenced by its own lease.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    #[schema(max_items = 1000)]
    pub completions: Vec<CompletionReport>,
}

/// The answer to one completion of a batch, in the order they were sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionResult {
    pub id: i64,
    /// accepted, repeated (the same completion was recorded before: same answer), lease_lost
    /// (refused; it changed nothing) or rejected (see `error`).
    pub result: ItemResult,
    /// What the execution is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The next attempt, when it will be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompleteBatchResponse {
    pub results: Vec<CompletionResult>,
}

/// Complete these, then claim the next: a busy worker's one call per batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    /// Recorded first, each fenced by its own lease.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub completions: Vec<CompletionReport>,
    /// Queues to claim from, in order of preference.
    #[schema(min_items = 1, max_items = 20)]
    pub queues: Vec<String>,
    /// How many executions to claim at most (0 to 100; 0 claims nothing).
    #[schema(minimum = 0, maximum = 100)]
    pub batch: u32,
    /// Long poll: when nothing is claimable, wait up to this long for work (0 to 30000).
    #[serde(default)]
    #[schema(maximum = 30000)]
    pub wait_ms: u64,
    /// The handler jobs (jobs with a queue and no command) this worker runs, by job name.
    /// Given, the worker is offered only those and, when `commands` is true, jobs with a
    /// command; absent, it is offered every execution of its queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 200)]
    pub handlers: Option<Vec<String>>,
    /// Whether this worker runs jobs' commands (default: true when `handlers` is absent,
    /// false when it is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExchangeResponse {
    /// One per completion sent, in order.
    pub results: Vec<CompletionResult>,
    /// What was claimed.
    pub executions: Vec<ClaimedExecution>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub worker_id: String,
    #[schema(max_items = 1000)]
    pub leases: Vec<LeaseProof>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseResponse {
    /// Handed back (cancelled, handed_back) and queued again at once.
    pub released: Vec<i64>,
    /// The new attempts.
    pub retries: Vec<i64>,
    /// Not the caller's any more: nothing changed for them.
    pub lost: Vec<LostLeaseView>,
}

/// Progress from inside a running execution (`jobward heartbeat`), proven by its lease token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    /// The attempt the lease is for (1 to 1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
    #[schema(minimum = 0, maximum = 1)]
    pub progress: Option<f64>,
    #[schema(max_length = 200)]
    pub phase: Option<String>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub checkpoint: Option<Value>,
}

/// The answer of `/livez` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProbeView {
    /// `ok`, or `unavailable` (with status 503).
    pub status: ProbeStatus,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node's incarnation, when one is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

// ---- runs outside jobward: `jobward exec` and pings ----

/// A run that happens outside jobward starts (`jobward exec`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalStartRequest {
    /// The host it runs on.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub host: Option<String>,
    /// The user that started it.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub user: Option<String>,
    /// Its process id on that host.
    #[serde(default)]
    pub pid: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExternalStartResponse {
    /// False when the job's overlap policy skipped it: it must not run.
    pub started: bool,
    pub execution: ExecutionView,
    /// The lease: heartbeat `POST /api/executions/{id}/heartbeat` and end with
    /// `POST /api/executions/{id}/complete`, both proven by it.
    pub attempt: u32,
    pub lease_token: Option<String>,
    /// Renew the lease at least this often.
    pub heartbeat_interval_ms: u64,
}

/// A heartbeat proven by the execution's own lease token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseHeartbeatRequest {
    #[schema(minimum = 1, maximum = 1000000)]
    pub attempt: u32,
    pub lease_token: String,
}

/// A ping about a job that runs outside jobward. Every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PingRequest {
    /// Pairs a start with its end (any text up to 200 characters, e.g. `$(date +%s)-$$`).
    /// Without it an end pairs with the job's latest started run.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub run_id: Option<String>,
    /// For an end: the command's exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// For an end: what happened, in words.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub message: Option<String>,
    /// For an end: the end of its output (at most 64 KiB).
    #[serde(default)]
    #[schema(max_length = 65536)]
    pub log_tail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PingResponse {
    /// start, success or fail.
    pub ping: String,
    /// What the ping recorded (a skipped start is recorded as skipped).
    pub execution: ExecutionView,
    /// An end without a start: recorded as a run of unknown (zero) duration.
    pub unpaired: bool,
}

/// A queue: the executions one runner ("local", a worker queue, "external") claims.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub runner: String,
    /// Queued and due: waiting for a claimer.
    pub due: u64,
    /// Queued for later (delayed runs, retries waiting out their backoff).
    pub later: u64,
    /// How long the oldest due execution has waited.
    pub oldest_due_age_ms: Option<u64>,
    pub running: u64,
    /// Claims in the last five minutes.
    pub claimed_5m: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}
