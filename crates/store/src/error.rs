//! Store errors. Messages are for users: they name the execution or job concerned and never
//! carry SQL.

use jobward_core::{Reason, Refusal, State, Timestamp};

use crate::types::ExecutionId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A heartbeat or completion whose lease is no longer current (invariant 4). The report
    /// was refused, written to the event log, and changed nothing else.
    #[error("lease lost: execution {id} is {} now{}; the report was refused and changed nothing",
        state, reason.map(|r| format!(" ({r})")).unwrap_or_default())]
    LeaseLost {
        id: ExecutionId,
        state: State,
        reason: Option<Reason>,
    },
    #[error("execution {0} does not exist")]
    ExecutionNotFound(ExecutionId),
    #[error("job '{0}' does not exist")]
    JobNotFound(String),
    #[error(
        "job '{0}' is no longer defined (gone from the configuration, or deleted through the API)"
    )]
    JobUndefined(String),
    /// The API may not change or delete a job the configuration file defines.
    #[error("job '{0}' is defined in the configuration file; change it there")]
    JobOwnedByFile(String),
    /// A job is the API's, and the configuration file defines one of the same name.
    #[error(
        "job '{0}' is defined through the API; the configuration file cannot also define it (rename one)"
    )]
    JobOwnedByApi(String),
    /// The job still has live executions.
    #[error("job '{name}' has {live} live execution(s); cancel them first, or ask to cancel them")]
    JobBusy { name: String, live: usize },
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "the database is at schema version {found}, newer than this jobward ({expected}); upgrade jobward"
    )]
    SchemaTooNew { found: i64, expected: i64 },
    #[error(
        "the database schema is at version {found}, this jobward needs {expected}: run `jobward migrate`"
    )]
    SchemaTooOld { found: i64, expected: i64 },
    #[error(
        "the database {0} does not exist (run `jobward serve` or `jobward migrate` to create it)"
    )]
    Missing(String),
    #[error("cannot open database {url}: {message}")]
    Open { url: String, message: String },
    #[error("the database stayed locked by another writer for {0:?}; try again")]
    Busy(std::time::Duration),
    #[error("database error: {0}")]
    Database(String),
    #[error("corrupt row in the ledger: {0}")]
    Corrupt(String),
    #[error("clock error: {0}")]
    Clock(String),
    #[error("unsupported database URL '{0}' (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    /// The operation is not one this backend does; the message says what to use instead.
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// True for errors that a retry of the same operation may cure.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy(_) | StoreError::Database(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => StoreError::Database(db.message().to_string()),
            sqlx::Error::PoolTimedOut => {
                StoreError::Database("timed out waiting for a database connection".into())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// When a stored value could not be read.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// For messages: a timestamp in RFC 3339 with second precision.
pub(crate) fn ts(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
