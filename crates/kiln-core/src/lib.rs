//! Sandbox lifecycle state machine, store, timers; no HTTP.
//!
//! kilnd's handlers turn requests into calls on [`Core`]; the core drives a
//! [`kiln_runtime::Runtime`], keeps records in a [`store::Store`] and kills
//! (or pauses) sandboxes whose timeout expired.

pub mod agent;
pub mod error;
pub mod history;
pub mod ids;
pub mod keys;
pub mod lifecycle;
pub mod limits;
pub mod sandbox;
pub mod snapshots;
pub mod store;
pub mod templates;

pub mod recovery;
pub mod runtimes;
mod timers;

pub use agent::{AgentClient, AgentInit, NoAgent};
pub use error::CoreError;
pub use lifecycle::{
    Core, CoreConfig, FoundTemplate, Gone, Metrics, Route, SnapshotFilter, WarmPool,
    MAX_METRICS_SANDBOXES,
};
pub use runtimes::{Backend, Runtimes};
pub use sandbox::{
    CreateSandbox, ListFilter, Order, Page, SandboxList, SandboxRecord, SandboxState, Team,
};
pub use snapshots::{SnapshotRecord, SnapshotState};
