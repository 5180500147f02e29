//! A jobward node: the local executor, the scheduler, the reaper, retention, and the node
//! lifecycle (registration, startup recovery before scheduling, graceful shutdown).
//!
//! The node talks to the ledger only through `jobward_store::Store` and to processes only
//! through `jobward_exec`; it never names a concrete database backend.

pub mod alerts;
pub mod cleanup;
pub mod executor;
pub mod health;
pub mod http;
pub mod jobdef;
pub mod metrics;
pub mod node;
pub mod serve;
pub mod service;
pub mod services;
pub mod telemetry;
pub mod views;

pub use executor::{Executor, ExecutorConfig, log_path, outcome_of};
pub use node::{
    Node, NodeConfig, NodeError, NodeStatus, Recovery, ShutdownReport, default_node_name,
    recover_previous,
};
pub use serve::{ServeConfig, ServeError, ServeReport, run};
pub use services::{
    HealthAlert, HealthAlertConfig, LostNodes, LostNodesConfig, Reaper, ReaperConfig, Retention,
    RetentionConfig, Scheduler, SchedulerConfig,
};
