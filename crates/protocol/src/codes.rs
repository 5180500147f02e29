//! The closed sets of words the wire carries: statuses, outcomes and result codes. Each is an
//! enum here, shared by the server, the worker and the CLI, and written on the wire exactly as
//! before (snake_case words), so a client that matched strings still works.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!(
                        "unknown {} '{}' (expected {})",
                        stringify!($name),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

wire_enum! {
    /// The state of an execution.
    Status {
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        TimedOut = "timed_out",
        Cancelled = "cancelled",
        Skipped = "skipped",
    }
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

wire_enum! {
    /// A job's status, derived from its executions: running or queued when one is, else the
    /// state of its latest terminal execution, or "never run".
    JobStatus {
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        TimedOut = "timed_out",
        Cancelled = "cancelled",
        Skipped = "skipped",
        NeverRun = "never run",
    }
}

impl From<Status> for JobStatus {
    fn from(s: Status) -> JobStatus {
        match s {
            Status::Queued => JobStatus::Queued,
            Status::Running => JobStatus::Running,
            Status::Completed => JobStatus::Completed,
            Status::Failed => JobStatus::Failed,
            Status::TimedOut => JobStatus::TimedOut,
            Status::Cancelled => JobStatus::Cancelled,
            Status::Skipped => JobStatus::Skipped,
        }
    }
}

wire_enum! {
    /// What a worker reports about a run it ended.
    Outcome {
        /// It exited 0.
        Completed = "completed",
        /// It failed: a non-zero exit code, a signal, or the worker's own error.
        Failed = "failed",
        /// The worker stopped it at its run timeout.
        TimedOut = "timed_out",
        /// The worker stopped it on a cancel request.
        Cancelled = "cancelled",
    }
}

wire_enum! {
    /// The answer to a cancel.
    CancelResult {
        /// It was queued and is now cancelled.
        Cancelled = "cancelled",
        /// It runs: its owner was asked to stop it.
        Requested = "requested",
        /// It had already ended.
        AlreadyTerminal = "already_terminal",
    }
}

wire_enum! {
    /// The system's health.
    HealthStatus {
        Healthy = "healthy",
        Warning = "warning",
    }
}

wire_enum! {
    /// The answer of a probe.
    ProbeStatus {
        Ok = "ok",
        Unavailable = "unavailable",
    }
}

wire_enum! {
    /// The kind of an event in an execution's log.
    EventKind {
        /// A state change.
        Transition = "transition",
        /// A report the ledger refused (a lost lease); it changed nothing.
        Refused = "refused",
        /// Anything else worth knowing (a phase, a reschedule, a process recorded).
        Note = "note",
    }
}

wire_enum! {
    /// What answered one item of a batch.
    ItemResult {
        /// Recorded (or created).
        Accepted = "accepted",
        /// The same report (or idempotency key) was seen before: the earlier answer.
        Repeated = "repeated",
        /// The lease was lost: the report changed nothing.
        LeaseLost = "lease_lost",
        /// The item was invalid or could not be applied; `error` says why.
        Rejected = "rejected",
    }
}

/// The stable, machine-readable code of an error. A code this version does not know reads as
/// `Unknown`, so an older client still understands a newer server's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    InvalidJson,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    LeaseLost,
    PayloadTooLarge,
    UnsupportedMediaType,
    Timeout,
    Unavailable,
    Internal,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_codes_are_read() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(
            serde_json::to_string(&JobStatus::NeverRun).unwrap(),
            "\"never run\""
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"lease_lost\"").unwrap(),
            ErrorCode::LeaseLost
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            ErrorCode::Unknown
        );
        let e = "nope".parse::<Outcome>().unwrap_err();
        assert!(e.contains("completed, failed, timed_out, cancelled"), "{e}");
    }
}
