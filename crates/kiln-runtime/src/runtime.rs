//! The contract between the core and an isolation backend.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The port the agent serves on inside every sandbox (E2B's envd port).
pub const AGENT_PORT: u16 = 49983;

/// A template as a runtime needs it: a root filesystem on disk and its defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Template id (for the record; runtimes key caches on it).
    pub id: String,
    /// Directory holding the template's root filesystem, used read-only.
    pub rootfs: PathBuf,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id; also the hostname inside the sandbox.
    pub id: String,
    pub template: TemplateRef,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    /// Environment of the agent (and so the default environment of commands).
    pub env: BTreeMap<String, String>,
    /// Whether the sandbox may reach the internet (egress through NAT).
    pub internet: bool,
}

/// A sandbox that exists: how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxHandle {
    pub id: String,
    /// Address on the host side at which every port of the sandbox is reachable
    /// (the agent at `AGENT_PORT`, user servers at their own port).
    pub ip: IpAddr,
    /// The agent's port (normally `AGENT_PORT`; a fake may differ).
    pub agent_port: u16,
    /// Host pid of the sandbox's init (the agent), if the backend has one.
    pub pid: Option<u32>,
}

/// Resource use, read from cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// CPU time used since creation, in microseconds.
    pub cpu_usage_usec: u64,
    /// vCPUs the sandbox may use.
    pub cpu_count: u32,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_limit_bytes: u64,
}

/// Something that happened to a sandbox without the core asking for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeEvent {
    /// The sandbox's init exited (or was killed by the OOM killer).
    Exited {
        id: String,
        oom_killed: bool,
        exit_code: Option<i32>,
    },
    /// The kernel's OOM killer killed a process of the sandbox at its memory
    /// limit; the sandbox itself may still be running.
    OutOfMemory { id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("sandbox {0} already exists")]
    AlreadyExists(String),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("runtime {runtime} is not usable on this host: {reason}")]
    Unavailable {
        runtime: &'static str,
        reason: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A host primitive (cgroups, disks, ...) failed; the error names the path.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error("{0}")]
    Other(String),
}

/// One isolation backend (container, gvisor, microvm, fake).
///
/// Every method is safe to call concurrently for different sandboxes.
/// `kill` is idempotent and leaves nothing behind: processes, mounts,
/// cgroups, network devices, namespaces, upper directories.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name, as used in config (`container`, `fake`, ...).
    fn name(&self) -> &'static str;

    /// Create and start a sandbox; returns once the agent answers.
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError>;

    /// Stop every process of the sandbox from running (cgroup freezer).
    async fn freeze(&self, id: &str) -> Result<(), RuntimeError>;

    /// Undo `freeze`.
    async fn thaw(&self, id: &str) -> Result<(), RuntimeError>;

    /// Destroy the sandbox and everything it used. Killing an unknown
    /// sandbox is not an error.
    async fn kill(&self, id: &str) -> Result<(), RuntimeError>;

    /// Current resource use.
    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError>;

    /// Every sandbox this runtime finds on the host, including ones left by a
    /// previous run of the server (for recovery after a crash).
    async fn list(&self) -> Result<Vec<SandboxHandle>, RuntimeError>;

    /// Events about sandboxes ending on their own (OOM, init died).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;
}
