//! The `Runtime` trait every isolation backend implements, the backends
//! themselves (one module each) and a fake for unit tests of the core.
//!
//! The core holds a `dyn Runtime`; it never knows which backend it drives.

mod runtime;

pub mod container;
pub mod fake;
pub mod gvisor;
pub mod host;

pub use runtime::{
    Capabilities, EgressPolicy, Found, Paused, ResumeMode, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxHandle, SandboxSpec, SandboxStats, SnapshotInfo, StateMode, TemplateRef,
    UnknownRuntime, AGENT_PORT,
};
