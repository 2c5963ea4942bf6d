//! The `gvisor` backend: each sandbox is a runsc (gVisor) sandbox, so the
//! sandbox's processes talk to gVisor's user-space kernel, not the host's.
//!
//! What it shares with the container backend: the template rootfs (an
//! overlay with the sandbox's own size-limited disk as upper, mounted on
//! the host by [`crate::host::overlay`] for runsc's gofer to serve), the
//! agent as init, a network namespace from kiln-net (runsc's netstack
//! takes over its veth, so the same firewall, egress rules and proxy path
//! apply), cgroup limits (runsc applies them on `kiln/<tag>/<id>`).
//!
//! What it adds: memory state on disk. A memory pause is `runsc
//! checkpoint` into the sandbox's directory (written under a temporary
//! name, fsynced, renamed): the sandbox's memory is freed and the pause
//! survives kilnd restarts and host reboots; resume is `runsc restore`. A
//! snapshot with memory is a checkpoint plus a copy of the disk image;
//! every sandbox restored from it gets its own copy of that disk and its
//! own network namespace (its netstack takes the new namespace's address
//! at restore, so copies never share an address).
//!
//! One file per verb: `create.rs`, `kill.rs`, `pause.rs` (and resume),
//! `snapshot.rs` (and restore), `egress.rs`, `stats.rs`, `recover.rs`;
//! `runsc.rs` runs runsc, `bundle.rs` writes the OCI config.
//!
//! On disk, under `data_dir`: `sandboxes/<id>/` (`state.json`, `disk.img`,
//! `layers/` and `rootfs/` mount points, `config.json`, `checkpoint/`),
//! `snapshots/<id>/` (`meta.json`, `disk.img`, `checkpoint/`), `runsc/`
//! (runsc's `--root`), `disk-pool/`.

mod bundle;
pub use bundle::{host_memory_limit, host_pids_limit};
mod create;
mod egress;
mod kill;
mod pause;
mod recover;
pub mod runsc;
mod snapshot;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::host::cgroup::Cgroups;
use crate::host::disk;
pub use kiln_net::NetConfig;

use crate::runtime::{
    Capabilities, EgressPolicy, Found, Paused, ResumeMode, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxHandle, SandboxSpec, SandboxStats, SnapshotInfo, StateMode, AGENT_PORT,
};

/// Configuration of the gVisor backend.
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// Where sandbox state, checkpoints and disk images live.
    pub data_dir: PathBuf,
    /// Short tag naming this runtime's host objects (1–4 of `[a-z0-9]`):
    /// cgroups `kiln/<tag>/<id>`, and kiln-net's bridge, namespaces and
    /// firewall table (`NetConfig::tag` is set to it).
    pub tag: String,
    /// The runsc binary.
    pub runsc: PathBuf,
    /// The static agent binary, bound read-only into every sandbox.
    pub agent_bin: PathBuf,
    pub agent_path: String,
    pub agent_args: Vec<String>,
    /// More host files bound read-only into one template's sandboxes.
    pub template_binds: BTreeMap<String, Vec<(PathBuf, String)>>,
    /// Host uid of root inside (as the container runtime's, so templates
    /// and disk images are shared).
    pub uid_base: u32,
    pub uid_count: u32,
    /// Ready disk images kept per recently used size.
    pub disk_pool: usize,
    pub disk_pool_sizes_mib: Vec<u64>,
    /// How long a create or a restore waits for the agent to listen.
    pub ready_timeout: Duration,
    pub pids_max: u64,
    pub net: NetConfig,
    /// runsc debug logs go to this directory (debugging only).
    pub debug_log: Option<PathBuf>,
}

impl GvisorConfig {
    pub fn new(data_dir: PathBuf, agent_bin: PathBuf, runsc: PathBuf) -> Self {
        Self {
            data_dir,
            tag: "g0".into(),
            runsc,
            agent_bin,
            agent_path: "/usr/local/bin/kiln-agent".into(),
            agent_args: Vec::new(),
            template_binds: BTreeMap::new(),
            uid_base: crate::container::DEFAULT_UID_BASE,
            uid_count: 65536,
            disk_pool: 2,
            disk_pool_sizes_mib: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            pids_max: 4096,
            net: NetConfig::new("g0"),
            debug_log: None,
        }
    }
}

/// Where a sandbox's state is; written durably before each step that
/// could lose it, so recovery after a crash knows what to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// Running (if runsc's sandbox lives; else its leftovers are removed).
    #[default]
    Running,
    /// A checkpoint is under way (a pause, or a snapshot with memory, which
    /// then restores the sandbox in place). After a crash: if runsc's
    /// sandbox still runs, it goes on (its agent told to listen again); if
    /// runsc finished the checkpoint (its marker, `runsc::SAVED`), the
    /// sandbox is paused with that image; else paused on its disk.
    Pausing,
    /// Paused with its memory in `checkpoint/` and its disk.
    PausedMemory,
    /// Paused with its disk only.
    PausedFs,
    /// Coming back: if it dies before it answers, it is paused again.
    Resuming,
}

/// What is kept on disk about a sandbox (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: String,
    template_id: String,
    /// The template's rootfs (the overlay's lower).
    lower: PathBuf,
    /// kiln-net slot; `u32::MAX` while paused (no network held).
    net_index: u32,
    netns: String,
    veth: String,
    ip: Ipv4Addr,
    internet: bool,
    vcpus: u32,
    memory_bytes: u64,
    disk_bytes: u64,
    /// runsc's sandbox process (0 when none).
    pid: i32,
    start_time: u64,
    phase: Phase,
    /// While `Pausing`: the image the checkpoint writes (the sandbox's
    /// `checkpoint.tmp/`, or a snapshot's), so that recovery finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<PathBuf>,
}

impl Record {
    fn lease(&self) -> kiln_net::NetLease {
        kiln_net::NetLease {
            index: self.net_index,
            netns_path: PathBuf::from("/run/netns").join(&self.netns),
            netns: self.netns.clone(),
            veth: self.veth.clone(),
            ip: self.ip,
            internet: self.internet,
        }
    }

    fn has_net(&self) -> bool {
        self.net_index != u32::MAX
    }

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            id: self.id.clone(),
            ip: self.ip.into(),
            agent_port: AGENT_PORT,
            pid: (self.pid > 0).then_some(self.pid as u32),
        }
    }
}

struct Sandbox {
    rec: Mutex<Record>,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
    /// Its watcher saw it end on its own: no longer listed as running (an
    /// exit before anyone subscribed to the events is not lost).
    exited: std::sync::atomic::AtomicBool,
}

impl Sandbox {
    fn new(rec: Record) -> Self {
        Self {
            rec: Mutex::new(rec),
            watcher: Mutex::new(None),
            exited: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self) -> Record {
        self.rec.lock().unwrap().clone()
    }

    fn unwatch(&self) {
        if let Some(w) = self.watcher.lock().unwrap().take() {
            w.abort();
        }
    }
}

struct Inner {
    cfg: GvisorConfig,
    runsc: runsc::Runsc,
    net: Arc<kiln_net::Network>,
    disk: disk::DiskPool,
    cgroups: Cgroups,
    /// Running sandboxes.
    sandboxes: Mutex<BTreeMap<String, Arc<Sandbox>>>,
    /// Paused ones (no process), with what they kept.
    paused: Mutex<BTreeMap<String, Record>>,
    /// Ids being created, paused, resumed or killed right now.
    busy: Mutex<BTreeSet<String>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Inner {
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    /// Where a sandbox's disk and root are mounted while it runs:
    /// `/run/kiln-gvisor/<tag>/<id>/{layers,rootfs}`. Not under the data
    /// directory: runsc's gofer opens the root as the sandbox's root user
    /// (host uid `uid_base`), who must be able to reach it, and the data
    /// directory's parents may be closed to other users.
    fn mounts_dir(&self, id: &str) -> PathBuf {
        PathBuf::from(MOUNTS_ROOT).join(&self.cfg.tag).join(id)
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("snapshots")
    }

    fn get(&self, id: &str) -> Result<Arc<Sandbox>, RuntimeError> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    /// The cgroup runsc puts the sandbox in (`cgroupsPath`).
    fn cgroup_path(&self, id: &str) -> String {
        format!("/kiln/{}/{id}", self.cfg.tag)
    }

    /// Marks `id` busy for the life of the guard; `None` if it already is.
    fn reserve(self: &Arc<Self>, id: &str) -> Option<Reservation> {
        self.busy
            .lock()
            .unwrap()
            .insert(id.to_owned())
            .then(|| Reservation(self.clone(), id.to_owned()))
    }
}

/// An id reserved against concurrent operations; released on drop.
struct Reservation(Arc<Inner>, String);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.busy.lock().unwrap().remove(&self.1);
    }
}

/// Runs blocking host work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Other(format!("blocking task failed: {e}")))?
}

fn net_err(e: kiln_net::NetError) -> RuntimeError {
    RuntimeError::Other(format!("network: {e}"))
}

/// Parent of the sandboxes' mount directories (see `Inner::mounts_dir`).
pub const MOUNTS_ROOT: &str = "/run/kiln-gvisor";

/// The gVisor runtime. Cheap to clone.
#[derive(Clone)]
pub struct GvisorRuntime {
    inner: Arc<Inner>,
}

impl GvisorRuntime {
    /// Checks runsc, sets the host up (cgroups, network, disk pool) and
    /// recovers from a previous run: sandboxes runsc still runs are
    /// re-attached, paused ones (checkpoints on disk) kept, leftovers of
    /// dead ones removed. Call once at server start, inside tokio.
    pub async fn new(cfg: GvisorConfig) -> Result<Self, RuntimeError> {
        let inner = Arc::new(blocking(move || recover::start(cfg)).await?);
        let alive: Vec<_> = inner.sandboxes.lock().unwrap().values().cloned().collect();
        // A kilnd killed between the agent's listener closed for a
        // checkpoint (pause.rs) and reopened after it left the agent not
        // listening: told to listen again (a no-op if it does).
        let mut reopened = tokio::task::JoinSet::new();
        for sb in &alive {
            create::watch(&inner, sb);
            let (inner, id) = (inner.clone(), sb.record().id);
            reopened.spawn(async move {
                if let Err(e) = pause::reopen_listener(&inner, &id).await {
                    tracing::warn!(id, error = %e, "could not tell a recovered sandbox's agent to listen");
                }
            });
        }
        while reopened.join_next().await.is_some() {}
        Ok(Self { inner })
    }

    pub fn config(&self) -> &GvisorConfig {
        &self.inner.cfg
    }

    /// The host directories of a sandbox's cgroup (one per controller on v1).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let name = id.to_owned();
        self.inner
            .cgroups
            .procs_files(&name)
            .into_iter()
            .filter_map(|p| p.parent().map(PathBuf::from))
            .filter(|d| d.exists())
            .collect()
    }
}

#[async_trait::async_trait]
impl Runtime for GvisorRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Gvisor
    }

    fn capabilities(&self) -> Capabilities {
        // This runsc cannot save a TCP socket held in an epoll set, as the
        // agent's listener is: the agent closes it for the checkpoint and
        // listens again after the restore (pause.rs). What the sandbox's
        // own processes hold may still make a save fail (the pause then
        // says so and the sandbox boots again on its disk). A copy
        // restored from a memory snapshot is the source's agent, token
        // and all: the core sets the copy's token through the source's.
        Capabilities {
            pause_memory: true,
            durable_memory: true,
            pause_filesystem: true,
            snapshot_filesystem: true,
            snapshot_memory: true,
            fork: true,
            ..Capabilities::default()
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        create::create(&self.inner, spec).await
    }

    async fn pause(&self, id: &str, mode: StateMode) -> Result<Paused, RuntimeError> {
        pause::pause(&self.inner, id, mode).await
    }

    async fn resume(
        &self,
        spec: &SandboxSpec,
        mode: ResumeMode,
    ) -> Result<SandboxHandle, RuntimeError> {
        pause::resume(&self.inner, spec, mode).await
    }

    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        mode: StateMode,
    ) -> Result<SnapshotInfo, RuntimeError> {
        snapshot::snapshot(&self.inner, id, snapshot_id, mode).await
    }

    async fn restore(
        &self,
        spec: &SandboxSpec,
        snapshot_id: &str,
    ) -> Result<SandboxHandle, RuntimeError> {
        snapshot::restore(&self.inner, spec, snapshot_id).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        snapshot::delete(&self.inner, snapshot_id).await
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        snapshot::list(&self.inner).await
    }

    async fn set_egress(&self, id: &str, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        egress::set_egress(&self.inner, id, policy).await
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        kill::kill(&self.inner, id).await
    }

    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        stats::stats(&self.inner, id).await
    }

    async fn list(&self) -> Result<Vec<Found>, RuntimeError> {
        let paused: Vec<Found> = self
            .inner
            .paused
            .lock()
            .unwrap()
            .values()
            .map(|r| Found::Paused {
                id: r.id.clone(),
                mode: if r.phase == Phase::PausedMemory {
                    StateMode::Memory
                } else {
                    StateMode::Filesystem
                },
            })
            .collect();
        Ok(self
            .inner
            .sandboxes
            .lock()
            .unwrap()
            .values()
            .filter(|s| !s.exited.load(std::sync::atomic::Ordering::SeqCst))
            .map(|s| Found::Running(s.record().handle()))
            .chain(paused)
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        let inner = self.inner.clone();
        blocking(move || recover::shutdown(&inner)).await
    }
}
