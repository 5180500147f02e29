//! The ledger, written once for every backend: every operation of the `Store` trait, its
//! statements (`table`), its state changes (`ops`) and its reads (`reads`), over the one
//! row-level interface `crate::sql::Conn`.
//!
//! A backend (`Backend`) only runs an operation: inside one write transaction (with its own
//! locking, retries and commit), or on a connection for reads. Everything a state change means
//! (the transition decided by `jobward_core::transition`, its compare-and-set, its event, the
//! retry it owes, overlap, fire plans, fencing refusals) is composed here, so SQLite and
//! PostgreSQL cannot drift apart.

pub(crate) mod ops;
pub(crate) mod reads;
mod store;
pub(crate) mod table;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jobward_core::{JobSpec, Reason, RetryPolicy, State, Timeouts, Timestamp};

use crate::sql::Conn;
use crate::types::*;
use crate::{Clock, Result};

pub(crate) use store::Ledger;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One operation of the ledger, as a backend runs it: given a connection (a write
/// transaction, or a connection for reads), it returns its result. `FnMut` so that a backend
/// may run it again after a transient failure of the whole transaction.
pub(crate) type Op<T> = Box<dyn for<'c> FnMut(&'c mut dyn Conn) -> BoxFuture<'c, Result<T>> + Send>;

/// Boxes an operation; taking the closure through this bound is what lets the compiler see
/// that its future may borrow the connection.
pub(crate) fn op<T, F>(f: F) -> Op<T>
where
    F: for<'c> FnMut(&'c mut dyn Conn) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    Box::new(f)
}

/// What differs between databases: how an operation is run. Everything else is the ledger's.
pub(crate) trait Backend: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn name(&self) -> &'static str;
    fn clock(&self) -> &Clock;
    /// Database errors met since opening, including those retries absorbed.
    fn errors(&self) -> u64;
    /// Rung when work may have become claimable (written by any process or node).
    fn work_signal(&self) -> Arc<crate::WorkSignal>;
    /// Runs `op` inside one write transaction and commits it; retried on transient failures
    /// that happened before the commit began.
    fn write<T: Send + 'static>(&self, op: Op<T>) -> BoxFuture<'_, Result<T>>;
    /// Runs `op` on a connection for reads (no transaction is held open).
    fn read<T: Send + 'static>(&self, op: Op<T>) -> BoxFuture<'_, Result<T>>;
    /// Writes an online copy of the whole ledger to a new file.
    fn backup<'a>(&'a self, dest: &'a std::path::Path) -> BoxFuture<'a, Result<()>>;
}

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
    pub source: JobSource,
}

/// Every column of a new execution row.
#[derive(Debug, Clone)]
pub(crate) struct RowValues {
    /// Who created it (written as `ended_by` when it is born terminal).
    pub actor: String,
    pub priority: i32,
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
    pub expected_duration: Option<jobward_core::DurationBounds>,
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

/// Which incarnations to mark stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StopNodes<'a> {
    One { id: &'a str, name: Option<&'a str> },
    AllNamedExcept { name: &'a str, except: &'a str },
}
