//! jobward's domain core: job definitions, executions, the states of invariant 1, the one
//! transition function, retry/backoff, schedules and deadline maths.
//!
//! This crate does no IO and never reads a clock: `now` is always passed in, so every rule
//! here is tested exhaustively and deterministically. Stores apply its decisions; they do not
//! make their own.

pub mod deadline;
pub mod duration;
pub mod execution;
pub mod job;
pub mod machine;
pub mod retry;
pub mod schedule;
pub mod state;

pub use deadline::Timeouts;
pub use execution::{ApplyError, Execution, Reporter};
pub use job::{
    DurationBounds, EXTERNAL_RUNNER, History, JobSpec, LOCAL_RUNNER, Overlap, validate_name,
};
pub use machine::{Deadline, Event, Refusal, Step, transition};
pub use retry::{Retry, RetryPolicy};
pub use schedule::{FirePlan, Misfire, Schedule, ScheduleSpec, Span, plan_fires};
pub use state::{Reason, State};

/// Every instant in jobward is UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
