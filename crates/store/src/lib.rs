//! The ledger's storage: a `Store` trait of whole domain operations (enqueue, claim,
//! heartbeat, complete, reap, cleanup, ...), their parameter and report types, and the
//! backends that implement them.
//!
//! Every state change here is a compare-and-set on (id, expected state, attempt, lease token)
//! whose rows-affected count is checked (invariant 4), decided by `jobward_core::transition`
//! and written together with its event (invariant 6) and any retry it owes, in one
//! transaction. This crate must not spawn processes, read configuration files or keep state
//! outside the database: what it knows, the database knows.

mod audit;
pub mod clock;
pub mod error;
mod ledger;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;
pub mod types;
mod work;

pub use ledger::ops::{MAX_BACKFILL, REAPER_DUE};

use std::sync::Arc;

use async_trait::async_trait;
use jobward_core::{State, Timestamp};

pub use clock::Clock;
pub use error::StoreError;
pub use sql::database_counts;
pub use types::*;
pub use work::WorkSignal;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What opening makes of the schema version it found (`None`: a fresh database): a newer
/// schema than this build knows is refused; an older one is refused when opening an existing
/// ledger, and migrated (`true`) otherwise.
pub(crate) fn schema_verdict(found: Option<i64>, expected: i64, mode: OpenMode) -> Result<bool> {
    let found_v = found.unwrap_or(0);
    if found_v > expected {
        return Err(StoreError::SchemaTooNew {
            found: found_v,
            expected,
        });
    }
    match mode {
        OpenMode::Existing if found_v < expected => Err(StoreError::SchemaTooOld {
            found: found_v,
            expected,
        }),
        OpenMode::Existing => Ok(false),
        OpenMode::CreateAndMigrate => Ok(true),
    }
}

/// The ledger. Every method is one whole operation, atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// The clock deadlines are compared with.
    fn clock(&self) -> &Clock;

    /// Database errors this store met since it opened, including those its retries absorbed.
    fn database_errors(&self) -> u64 {
        0
    }

    /// Rung when work becomes claimable (queued by this process, another process, or
    /// another node), per runner.
    fn work_signal(&self) -> Arc<WorkSignal>;

    /// The store's `now`.
    async fn now(&self) -> Result<Timestamp>;

    /// Proves the database answers (a round trip on a pooled connection).
    async fn ping(&self) -> Result<()>;

    /// Writes an online, consistent copy of the whole ledger to `dest` (a new file). SQLite
    /// only: PostgreSQL answers `Unsupported`, naming `pg_dump`.
    async fn backup(&self, dest: &std::path::Path) -> Result<()>;

    // ---- nodes ----

    /// Records a new incarnation, unless another live incarnation holds the same name.
    async fn register_node(&self, node: NewNode) -> Result<RegisterOutcome>;
    /// Marks an incarnation stopped.
    async fn stop_node(&self, id: &str, reason: &str) -> Result<()>;
    async fn list_nodes(&self) -> Result<Vec<NodeRow>>;
    /// Running executions of earlier incarnations with this node name: what a restarted node
    /// must settle before it schedules anything (invariant 8).
    async fn orphans_of(&self, name: &str, node_id: &str) -> Result<Vec<ExecutionRow>>;
    /// Settles the local executions of nodes whose node lease expired (reason `node_lost`)
    /// and marks those nodes stopped. Safe to run on every node at once. `own` is the
    /// caller's incarnation, never declared lost by itself: it is running this.
    async fn settle_lost_nodes(&self, actor: &str, own: Option<&str>) -> Result<ReapReport>;
    /// Settles those orphans (reason `node_restarted`, each with its message) and marks the
    /// old incarnations stopped.
    async fn settle_orphans(
        &self,
        p: RecoverParams,
        orphans: Vec<(LeaseRef, String)>,
    ) -> Result<ReapReport>;

    // ---- jobs ----

    async fn sync_jobs(&self, p: SyncJobs) -> Result<SyncReport>;
    async fn list_jobs(&self) -> Result<Vec<JobRow>>;
    async fn get_job(&self, name: &str) -> Result<Option<JobRow>>;
    /// Pauses or resumes a job; the change is recorded with its actor.
    async fn set_paused(&self, name: &str, paused: bool, actor: &str) -> Result<()>;
    /// Creates or replaces a job defined through the API; refuses a job the file defines.
    async fn put_job(&self, p: PutJob) -> Result<PutJobReport>;
    /// Deletes a job defined through the API (history stays); refused while it has live
    /// executions unless asked to cancel them.
    async fn delete_job(&self, p: DeleteJob) -> Result<DeleteJobReport>;
    /// The recorded changes of a job, newest first.
    async fn job_changes(&self, name: &str) -> Result<Vec<JobChange>>;
    /// Fires each instant of a job's schedule in a range that has no execution yet.
    async fn backfill(&self, p: Backfill) -> Result<BackfillReport>;

    // ---- creating executions ----

    /// A manual trigger: creates an execution under the job's overlap policy.
    async fn trigger(&self, p: TriggerParams) -> Result<Created>;
    /// Many triggers, of one or several jobs, in one transaction (bulk enqueue): idempotency
    /// keys honoured per item, answered per item in order.
    async fn trigger_many(&self, items: Vec<TriggerParams>) -> Result<Vec<Result<Created>>>;
    /// One scheduler tick: fires every due instant of every job, at most once each.
    async fn fire_due(&self, actor: &str) -> Result<FireReport>;

    // ---- the lease ----

    /// Takes up to `limit` claimable executions, honouring concurrency limits and overlap.
    async fn claim(&self, p: ClaimParams) -> Result<Vec<ExecutionRow>>;
    /// Records that a worker claimed, with its queues and what it runs (rows of workers not
    /// seen for a week go in the same write).
    async fn worker_seen(&self, id: &str, queues: &[String], serves: &Serves) -> Result<()>;
    /// Workers seen claiming since `since`, the most recent first.
    async fn workers(&self, since: Timestamp) -> Result<Vec<WorkerRow>>;
    /// A run outside jobward starts (see `StartExternal`).
    async fn start_external(&self, p: StartExternal) -> Result<StartOutcome>;
    /// Marks running executions past the upper bound of their expected duration as overdue
    /// (once each, with a note), and returns them.
    async fn flag_overdue(&self, actor: &str) -> Result<Vec<ExecutionRow>>;
    /// Records the process an owner started for an execution.
    async fn record_process(&self, lease: &LeaseRef, process: &ProcessInfo) -> Result<()>;
    /// Renews many leases at once; names the lost ones and pending cancels.
    async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatReport>;
    /// Running executions of this owner whose cancel was requested: (id, reason).
    async fn cancel_requests(
        &self,
        owner: &str,
    ) -> Result<Vec<(ExecutionId, jobward_core::Reason)>>;
    /// Records how an execution ended; refuses a stale lease with `StoreError::LeaseLost`.
    async fn complete(&self, p: CompleteParams) -> Result<Settled>;
    /// Many completions in one transaction, each fenced by its own lease and answered on its
    /// own (accepted, idempotent repeat, or refused), in order.
    async fn complete_many(&self, items: Vec<CompleteParams>) -> Result<Vec<Result<Settled>>>;
    /// Completions (as `complete_many`) and then a claim, in one transaction.
    async fn exchange(
        &self,
        completions: Vec<CompleteParams>,
        claim: ClaimParams,
    ) -> Result<(Vec<Result<Settled>>, Vec<ExecutionRow>)>;
    /// Records progress, phase and checkpoint reported from inside a running execution.
    async fn report_progress(&self, p: ProgressParams) -> Result<ExecutionRow>;
    /// Hands back running executions: each becomes `cancelled` (`handed_back`) and its next
    /// attempt is queued at once.
    async fn release(&self, p: ReleaseParams) -> Result<ReleaseReport>;
    /// Another attempt of a failed, timed-out or cancelled execution, now (linked to it, its
    /// payload and checkpoint kept), whatever its retry policy had left.
    async fn retry_now(&self, p: RetryNow) -> Result<ExecutionRow>;
    /// Moves a queued execution's start to another time (a delayed run).
    async fn reschedule(&self, p: Reschedule) -> Result<ExecutionRow>;
    /// Cancels a queued execution, or asks the owner of a running one to stop it.
    async fn cancel(&self, p: CancelParams) -> Result<CancelOutcome>;

    // ---- maintenance ----

    /// Moves every live execution past a deadline to its terminal state, with retries.
    async fn reap(&self, p: ReapParams) -> Result<ReapReport>;
    /// Settles (or, on a dry run, lists) running executions with an old last heartbeat.
    async fn cleanup(&self, p: CleanupParams) -> Result<CleanupReport>;
    /// Deletes terminal executions beyond each job's history limits, with their events.
    async fn prune(&self, p: PruneParams) -> Result<PruneReport>;

    // ---- reading ----

    async fn list_executions(&self, f: ExecutionFilter) -> Result<Vec<ExecutionRow>>;
    /// Per state, how many executions match a filter (paging aside), each count stopping
    /// just past `cap`.
    async fn count_executions(&self, f: ExecutionFilter, cap: u64) -> Result<Vec<(State, u64)>>;
    /// Every queue (runner) with queued or running executions.
    async fn queues(&self) -> Result<Vec<QueueRow>>;
    /// Each concurrency key's slots in use and limit.
    async fn slots(&self) -> Result<Vec<SlotUse>>;
    async fn get_execution(&self, id: ExecutionId) -> Result<Option<ExecutionRow>>;
    async fn events(&self, id: ExecutionId) -> Result<Vec<EventRow>>;
    async fn health(&self, p: HealthParams) -> Result<HealthMetrics>;
    /// Figures for the Prometheus endpoint.
    async fn metrics(&self) -> Result<MetricsSnapshot>;
    /// Checks invariants 1-3 (and 6) on the live data.
    async fn audit(&self, p: AuditParams) -> Result<Vec<Violation>>;
}

pub type DynStore = Arc<dyn Store>;

/// How to open a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database if needed and bring its schema up to date (`serve`, `migrate`).
    CreateAndMigrate,
    /// The database must exist with this jobward's schema (read and admin commands).
    Existing,
}

/// What `open` did to the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    pub created: bool,
    pub applied_migrations: Vec<i64>,
}

/// Settings of a store connection beyond its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// PostgreSQL ends a session that sits inside a transaction this long (a frozen node):
    /// its row locks go with it, so a frozen holder cannot keep a row from the reaper longer
    /// than its lease plus this plus one reaper tick.
    pub pg_idle_in_transaction_timeout: std::time::Duration,
    /// The longest a PostgreSQL statement waits for a row lock before it fails (and its
    /// transaction is retried).
    pub pg_lock_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pg_idle_in_transaction_timeout: std::time::Duration::from_secs(5),
            pg_lock_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the store named by a database URL, with default options.
pub async fn open(url: &str, mode: OpenMode) -> Result<(DynStore, Opened)> {
    open_with(url, mode, &StoreOptions::default()).await
}

/// Opens the store named by a database URL. Only the composition root calls this.
pub async fn open_with(
    url: &str,
    mode: OpenMode,
    options: &StoreOptions,
) -> Result<(DynStore, Opened)> {
    if postgres::is_url(url) {
        let (db, opened) = postgres::PgBackend::open(url, mode, options).await?;
        return Ok((Arc::new(ledger::Ledger { db }), opened));
    }
    if let Some(path) = sqlite::path_from_url(url) {
        let (db, opened) = sqlite::SqliteBackend::open(url, &path, mode)?;
        return Ok((Arc::new(ledger::Ledger { db }), opened));
    }
    Err(StoreError::UnsupportedUrl(url.to_string()))
}

/// A database URL fit for logs and messages: without its password.
pub fn display_url(url: &str) -> String {
    postgres::redact(url)
}

/// SQL built at run time (column lists, placeholders); never from user input.
pub(crate) fn sql_text(s: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(s.to_string())
}
