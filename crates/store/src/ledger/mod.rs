//! The ledger's domain logic, written once for every backend.
//!
//! A backend provides `Tx`: row-level primitives inside one write transaction (load a row,
//! read and lock a job, insert an execution, append an event, the compare-and-set updates).
//! Everything a state change means (the transition decided by `jobward_core::transition`, its
//! event, the retry it owes, overlap, fire plans, fencing refusals) is composed here from those
//! primitives, so SQLite and PostgreSQL cannot drift apart. Backends keep only what truly
//! differs: how they claim, batch heartbeats, select due rows, and read.

pub(crate) mod ops;

use std::collections::BTreeMap;

use async_trait::async_trait;
use jobward_core::{JobSpec, Reason, RetryPolicy, State, Timeouts, Timestamp};

use crate::Result;
use crate::types::*;

/// A job as the write path reads it.
#[derive(Debug, Clone)]
pub(crate) struct JobState {
    pub spec: JobSpec,
    pub defined: bool,
    pub paused: bool,
}

/// A job row as `sync_jobs` compares it.
#[derive(Debug, Clone)]
pub(crate) struct StoredJob {
    pub name: String,
    pub spec_json: String,
    pub schedule_json: String,
    pub defined: bool,
}

/// Every column of a new execution row.
#[derive(Debug, Clone)]
pub(crate) struct RowValues {
    pub job: String,
    pub number: i64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub retry_of: Option<ExecutionId>,
    pub trigger: Trigger,
    pub scheduled_for: Option<Timestamp>,
    pub state: State,
    pub command: String,
    pub runner: String,
    pub concurrency_key: Option<String>,
    pub overlap: jobward_core::Overlap,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub queued_at: Timestamp,
    pub run_after: Timestamp,
    pub start_deadline: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub checkpoint: Option<serde_json::Value>,
}

/// One event to append.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent<'a> {
    pub id: ExecutionId,
    pub kind: EventKind,
    pub from: Option<State>,
    pub to: Option<State>,
    pub reason: Option<&'a str>,
    pub message: &'a str,
    pub actor: &'a str,
}

/// The terminal fields a compare-and-set writes.
#[derive(Debug, Clone)]
pub(crate) struct End<'a> {
    pub state: State,
    /// Written as `ended_by`.
    pub actor: &'a str,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Row-level operations of one write transaction. Every compare-and-set is guarded by
/// (id, expected state, attempt, lease token) and returns whether exactly one row changed.
#[async_trait]
pub(crate) trait Tx: Send {
    /// The store's `now`, read once when the transaction began (invariant 5).
    fn now(&self) -> Timestamp;

    async fn load(&mut self, id: ExecutionId) -> Result<Option<ExecutionRow>>;
    /// Reads a job for a write; backends that run writers concurrently lock its row, so the
    /// executions of one job are created one at a time (overlap, numbering).
    async fn load_job(&mut self, name: &str) -> Result<Option<JobState>>;
    async fn next_number(&mut self, job: &str) -> Result<i64>;
    async fn insert_execution(&mut self, v: &RowValues) -> Result<ExecutionRow>;
    async fn event(&mut self, e: &NewEvent<'_>) -> Result<()>;
    /// Moves `row` (as it was read) to a terminal state.
    async fn cas_end(&mut self, row: &ExecutionRow, end: &End<'_>) -> Result<bool>;
    async fn cas_cancel_request(
        &mut self,
        row: &ExecutionRow,
        reason: Reason,
        message: &str,
        deadline: Timestamp,
    ) -> Result<bool>;
    async fn cas_progress(
        &mut self,
        lease: &LeaseRef,
        progress: Option<f64>,
        phase: Option<&str>,
        checkpoint: Option<&serde_json::Value>,
    ) -> Result<bool>;
    async fn live_of_job(&mut self, job: &str) -> Result<Vec<ExecutionRow>>;
    async fn by_idempotency_key(&mut self, job: &str, key: &str) -> Result<Option<ExecutionRow>>;
    /// The attempt that followed `id` (its retry), if any.
    async fn next_attempt_of(
        &mut self,
        id: ExecutionId,
        attempt: u32,
    ) -> Result<Option<ExecutionRow>>;
    /// Whether an instant of a job already has its execution (invariant 9).
    async fn fired_already(&mut self, job: &str, at: Timestamp) -> Result<bool>;
    /// Whether the key's slots are all held by running executions.
    async fn key_full(&mut self, key: &str) -> Result<bool>;

    // ---- jobs ----
    async fn stored_jobs(&mut self) -> Result<Vec<StoredJob>>;
    async fn insert_job(
        &mut self,
        name: &str,
        spec: &str,
        schedule: &str,
        first: Option<Timestamp>,
    ) -> Result<()>;
    async fn update_job(
        &mut self,
        name: &str,
        spec: &str,
        schedule: &str,
        reset_cursor: bool,
        first: Option<Timestamp>,
    ) -> Result<()>;
    async fn undefine_job(&mut self, name: &str) -> Result<()>;
    async fn replace_limits(&mut self, limits: &BTreeMap<String, u32>) -> Result<()>;
    /// Jobs whose scheduler cursor is due, locked for this transaction (others skip them).
    async fn due_jobs(&mut self) -> Result<Vec<(String, Timestamp)>>;
    /// Moves a job's cursor from `old` to `new` (compare-and-set).
    async fn move_cursor(
        &mut self,
        name: &str,
        old: Timestamp,
        new: Option<Timestamp>,
    ) -> Result<bool>;
    async fn earliest_cursor(&mut self) -> Result<Option<Timestamp>>;

    // ---- nodes ----
    /// A live incarnation with this name other than `except`.
    async fn live_node_named(&mut self, name: &str, except: &str) -> Result<Option<NodeRow>>;
    async fn insert_node(&mut self, node: &NewNode) -> Result<()>;
    /// Marks incarnations stopped: `id` alone, or every other one with `name`.
    async fn stop_nodes(&mut self, which: StopNodes<'_>, reason: &str) -> Result<()>;
    /// Live incarnations whose node lease has expired, locked for this transaction (another
    /// node settling them at the same time skips them).
    async fn expired_nodes(&mut self) -> Result<Vec<NodeRow>>;
    /// Executions a node's own executor runs.
    async fn running_on_node(&mut self, node_id: &str) -> Result<Vec<ExecutionRow>>;
}

/// Which incarnations to mark stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StopNodes<'a> {
    One { id: &'a str, name: Option<&'a str> },
    AllNamedExcept { name: &'a str, except: &'a str },
}
