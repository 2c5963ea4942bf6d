//! The contract between the core and an isolation backend.
//!
//! A backend turns a [`SandboxSpec`] into a running sandbox whose agent
//! answers at a [`SandboxHandle`], and back into nothing. Everything a
//! backend can do beyond that (pause with or without memory, snapshots,
//! fork, egress policy) it states in [`Capabilities`]; a method it cannot
//! serve answers [`RuntimeError::Unsupported`], never a silent no-op.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The port the agent serves on inside every sandbox (E2B's envd port).
pub const AGENT_PORT: u16 = 49983;

/// The isolation backends Kiln knows, from tightest to loosest (and the
/// fake, which isolates nothing).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Each sandbox its own kernel under QEMU.
    Microvm,
    /// gVisor's user-space kernel (runsc) in front of the host's.
    Gvisor,
    /// Linux namespaces, cgroups, seccomp on the host's kernel.
    #[default]
    Container,
    /// Nothing runs; records in memory. Tests only.
    Fake,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 4] = [
        RuntimeKind::Container,
        RuntimeKind::Gvisor,
        RuntimeKind::Microvm,
        RuntimeKind::Fake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Microvm => "microvm",
            RuntimeKind::Gvisor => "gvisor",
            RuntimeKind::Container => "container",
            RuntimeKind::Fake => "fake",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown runtime name; the message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime {0:?}: use container, gvisor, microvm or fake")]
pub struct UnknownRuntime(pub String);

impl FromStr for RuntimeKind {
    type Err = UnknownRuntime;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownRuntime(s.to_owned()))
    }
}

/// What a backend can do besides create, exec and kill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Pause keeping memory: processes go on where they stopped.
    pub pause_memory: bool,
    /// A memory pause is written to disk, frees the sandbox's memory and
    /// survives kilnd restarts and host reboots (not a freezer).
    pub durable_memory: bool,
    /// Pause keeping only the filesystem: processes end; resume boots anew.
    pub pause_filesystem: bool,
    /// Snapshots of the filesystem that new sandboxes start from.
    pub snapshot_filesystem: bool,
    /// Snapshots with memory: new sandboxes start with the processes running.
    pub snapshot_memory: bool,
    /// Running copies of a running sandbox (with memory where
    /// `snapshot_memory`, else its filesystem).
    pub fork: bool,
    /// Allow and deny lists of networks for egress (beyond internet on/off).
    pub egress_lists: bool,
    /// GPUs passed into sandboxes.
    pub gpu: bool,
}

/// What of a sandbox's state a pause or a snapshot keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    /// Memory and filesystem: processes go on as they were.
    Memory,
    /// The filesystem only: processes end and the sandbox boots anew.
    Filesystem,
}

impl StateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StateMode::Memory => "memory",
            StateMode::Filesystem => "filesystem",
        }
    }
}

impl fmt::Display for StateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StateMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(StateMode::Memory),
            "filesystem" => Ok(StateMode::Filesystem),
            other => Err(format!("unknown mode {other:?}: use memory or filesystem")),
        }
    }
}

/// How a paused sandbox comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeMode {
    /// As it was paused: from memory if the pause kept it, else booted
    /// anew on its kept filesystem.
    Restore,
    /// Booted anew on its kept filesystem, whatever the pause kept (E2B's
    /// `on_resume: reboot`); a memory state is discarded.
    Reboot,
}

/// A template as a runtime needs it: a root filesystem on disk and its defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    /// Template id (for the record; runtimes key caches on it).
    pub id: String,
    /// Directory holding the template's root filesystem, used read-only.
    pub rootfs: PathBuf,
}

/// Where a sandbox may send traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// Whether the sandbox may reach the internet at all (egress through NAT).
    pub internet: bool,
    /// Networks (CIDRs or addresses) the sandbox may reach even when
    /// `internet` is off, or despite `deny_out`: allow wins.
    pub allow_out: Vec<String>,
    /// Networks the sandbox may not reach.
    pub deny_out: Vec<String>,
}

impl EgressPolicy {
    /// Internet on or off, no lists.
    pub fn internet(on: bool) -> Self {
        Self {
            internet: on,
            ..Self::default()
        }
    }

    /// Whether the policy has lists (which need [`Capabilities::egress_lists`]).
    pub fn has_lists(&self) -> bool {
        !self.allow_out.is_empty() || !self.deny_out.is_empty()
    }
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
    /// The default environment of the sandbox's commands. The agent gets it
    /// in `/init`; a backend must not put it on an exec of its own (whose
    /// limits are 128 KiB a variable and 2 MiB in all).
    pub env: BTreeMap<String, String>,
    pub egress: EgressPolicy,
}

/// A sandbox that runs: how to reach it.
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

/// A sandbox as a backend finds it on the host (see [`Runtime::list`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Found {
    /// Running (its processes may be frozen by a memory pause that is not
    /// durable: the runtime reports those as `Paused` with `Memory`).
    Running(SandboxHandle),
    /// Paused, with what was kept.
    Paused { id: String, mode: StateMode },
}

impl Found {
    pub fn id(&self) -> &str {
        match self {
            Found::Running(h) => &h.id,
            Found::Paused { id, .. } => id,
        }
    }
}

/// A pause as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub mode: StateMode,
    /// Whether the pause survives a host reboot (written to disk).
    pub durable: bool,
    /// Bytes the paused state holds on disk (beyond the template).
    pub bytes_on_disk: u64,
}

/// A snapshot as taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub mode: StateMode,
    /// Bytes the snapshot holds on disk (beyond the template).
    pub size_bytes: u64,
    /// SHA-256 of the snapshot's content, hex.
    pub content_hash: String,
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
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// The sandbox is not in a state this operation applies to.
    #[error("{0}")]
    WrongState(String),
    /// This backend does not do this (see [`Capabilities`]).
    #[error("the {runtime} runtime cannot {what}")]
    Unsupported { runtime: RuntimeKind, what: String },
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

impl RuntimeError {
    pub fn unsupported(runtime: RuntimeKind, what: impl Into<String>) -> Self {
        RuntimeError::Unsupported {
            runtime,
            what: what.into(),
        }
    }
}

/// One isolation backend (container, gvisor, microvm, fake).
///
/// Every method is safe to call concurrently for different sandboxes; the
/// core serialises the operations on one sandbox. `kill` is idempotent and
/// leaves nothing behind: processes, mounts, cgroups, network devices,
/// namespaces, upper layers, paused state on disk.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Short name, as used in config and on sandbox records.
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    fn capabilities(&self) -> Capabilities;

    /// Makes whatever this backend needs of a template before sandboxes
    /// start from it (an image, a memory snapshot of a booted one, ...).
    /// Called once per template at start and when a template is added;
    /// cheap when already done.
    async fn prepare_template(&self, _template: &TemplateRef) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Creates and starts a sandbox; returns once the agent answers.
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError>;

    /// Pauses a running sandbox, keeping what `mode` says. The sandbox is
    /// paused, and its state durable if the answer says so, once this
    /// returns; on error it is still running as before.
    async fn pause(&self, id: &str, mode: StateMode) -> Result<Paused, RuntimeError>;

    /// Resumes a paused sandbox (`spec` describes it as it was created) and
    /// returns how to reach it now (a restored or rebooted sandbox may have
    /// a new address). On error it is still paused, its state intact.
    async fn resume(
        &self,
        spec: &SandboxSpec,
        mode: ResumeMode,
    ) -> Result<SandboxHandle, RuntimeError>;

    /// Takes a snapshot of a running or paused sandbox under `snapshot_id`;
    /// the sandbox goes on as it was. The snapshot is complete and durable
    /// once this returns, and absent (nothing half-written kept) on error.
    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        mode: StateMode,
    ) -> Result<SnapshotInfo, RuntimeError> {
        let _ = (id, snapshot_id);
        Err(RuntimeError::unsupported(
            self.kind(),
            format!("take {mode} snapshots"),
        ))
    }

    /// Creates a new sandbox (`spec.id`) from a snapshot; returns once its
    /// agent answers. The snapshot stays, usable again.
    async fn restore(
        &self,
        spec: &SandboxSpec,
        snapshot_id: &str,
    ) -> Result<SandboxHandle, RuntimeError> {
        let _ = (spec, snapshot_id);
        Err(RuntimeError::unsupported(
            self.kind(),
            "start sandboxes from snapshots",
        ))
    }

    /// Deletes a snapshot's files. Deleting an unknown one is not an error.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        let _ = snapshot_id;
        Ok(())
    }

    /// The complete snapshots this backend holds on disk (for reconciling
    /// the store at start; half-written ones are not listed and are removed).
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Changes where a running sandbox may send traffic.
    async fn set_egress(&self, id: &str, policy: &EgressPolicy) -> Result<(), RuntimeError>;

    /// Destroys the sandbox, running or paused, and everything it used.
    /// Killing an unknown sandbox is not an error.
    async fn kill(&self, id: &str) -> Result<(), RuntimeError>;

    /// Current resource use of a running sandbox.
    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError>;

    /// Every sandbox this runtime finds on the host, running or paused,
    /// including ones left by a previous run of the server (for recovery
    /// after a crash: a paused one must never be destroyed for being
    /// unknown to a running list).
    async fn list(&self) -> Result<Vec<Found>, RuntimeError>;

    /// Events about sandboxes ending on their own (OOM, init died).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;

    /// Releases pools and host objects no sandbox uses, at server stop.
    /// Sandboxes keep running (or paused); the next start finds them.
    async fn shutdown(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
}
