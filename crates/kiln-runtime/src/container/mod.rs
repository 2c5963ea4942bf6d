//! The `container` backend: Linux namespaces, an overlayfs root, seccomp,
//! capabilities, cgroups and a network namespace per sandbox.
//!
//! One file per verb (`create.rs`, `kill.rs`, `pause.rs` (and resume),
//! `snapshot.rs` (and restore), `egress.rs`, `stats.rs`, `recover.rs`), the host primitives shared with other runtimes in
//! [`crate::host`] (cgroups, disks, seccomp, masks), and `spawn.rs`, the body of the `kiln-spawn`
//! helper that does the forking, so that this multi-threaded process never
//! forks without exec.
//!
//! Host objects of one runtime carry its `tag` (see [`ContainerConfig::tag`]):
//! cgroups `kiln/<tag>/<id>`, bridge `kb-<tag>`, veths `kv<tag>-<n>`,
//! namespaces `kiln-<tag>-<n>`, nftables table `inet kiln_<tag>`, and
//! everything on disk under `data_dir`.

mod create;
mod egress;
mod kill;
mod pause;
mod recover;
mod snapshot;
pub mod spawn;
mod stats;
mod warm;

pub(crate) use create::{pids_limit, validate as validate_spec};

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use crate::host::cgroup::{Cgroups, Limits};
use crate::host::disk;
pub use kiln_net::NetConfig;

use crate::runtime::{
    Capabilities, EgressPolicy, Found, Paused, ResumeMode, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxHandle, SandboxSpec, SandboxStats, SnapshotInfo, StateMode, AGENT_PORT,
};

/// Configuration of the container backend.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Where sandbox state and disk images live (`<data_dir>/sandboxes/<id>/`,
    /// `<data_dir>/disk-pool/`).
    pub data_dir: PathBuf,
    /// Short tag naming this runtime's host objects (1–4 of `[a-z0-9]`).
    pub tag: String,
    /// The static agent binary, bind-mounted read-only into every sandbox.
    pub agent_bin: PathBuf,
    /// Where the agent appears inside the sandbox.
    pub agent_path: String,
    /// Arguments of the agent (after argv[0]).
    pub agent_args: Vec<String>,
    /// More host files bind-mounted read-only into the sandboxes of one
    /// template (by template id), like the agent: (host path, path inside).
    /// The code-interpreter template gets the `kiln-interpreter` binary so.
    pub template_binds: BTreeMap<String, Vec<(PathBuf, String)>>,
    /// The `kiln-spawn` helper binary (built from this crate).
    pub spawn_bin: PathBuf,
    /// First host uid/gid of the range root inside maps to. Template root
    /// filesystems must be owned by this range (uid 0 inside = `uid_base`).
    pub uid_base: u32,
    pub uid_count: u32,
    /// Where the host-wide claims on sandbox uid ranges are kept (see
    /// [`crate::host::uidrange`]); `None` runs every sandbox in the
    /// `uid_base` range (as the layers are stored).
    pub uid_ranges: Option<PathBuf>,
    /// Warm helpers kept ready (see `warm.rs`); each holds a network
    /// namespace and a cgroup.
    pub warm_pool: usize,
    /// Ready disk images kept per recently used disk size.
    pub disk_pool: usize,
    /// Disk sizes (MiB) to pool from the start.
    pub disk_pool_sizes_mib: Vec<u64>,
    /// How long `create` waits for the agent's ready byte.
    pub ready_timeout: Duration,
    /// The most pids.max of a sandbox; smaller sandboxes get less (see
    /// `pids_limit`).
    pub pids_max: u64,
    pub net: NetConfig,
    /// Host file for the agents' output (debugging only).
    pub agent_log: Option<PathBuf>,
    /// Install the seccomp policy (always on outside of debugging).
    pub seccomp: bool,
}

impl ContainerConfig {
    /// Defaults for a data directory, an agent binary and the spawn helper.
    pub fn new(data_dir: PathBuf, agent_bin: PathBuf, spawn_bin: PathBuf) -> Self {
        Self {
            data_dir,
            tag: "k0".into(),
            agent_bin,
            agent_path: "/usr/local/bin/kiln-agent".into(),
            agent_args: Vec::new(),
            template_binds: BTreeMap::new(),
            spawn_bin,
            uid_base: DEFAULT_UID_BASE,
            uid_count: 65536,
            uid_ranges: Some(crate::host::uidrange::DEFAULT_DIR.into()),
            warm_pool: 4,
            disk_pool: 4,
            disk_pool_sizes_mib: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            pids_max: 4096,
            net: NetConfig::new("k0"),
            agent_log: None,
            seccomp: true,
        }
    }
}

/// The host uid root inside a sandbox maps to, by default.
pub const DEFAULT_UID_BASE: u32 = 100_000;

/// What is kept on disk about a sandbox, for recovery after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: String,
    /// The sandbox's cgroup name under `kiln/<tag>/` (made before the id
    /// was known, by a warm helper).
    cgroup: String,
    pid: i32,
    /// Start time of `pid` (field 22 of /proc/pid/stat), against pid reuse.
    start_time: u64,
    net_index: u32,
    netns: String,
    veth: String,
    ip: Ipv4Addr,
    internet: bool,
    vcpus: u32,
    memory_bytes: u64,
    disk_bytes: u64,
    /// File name of the sandbox's disk image (its writable upper) in its
    /// directory.
    #[serde(default)]
    disk_image: String,
    /// Snapshot layers between the upper and the template, top first.
    #[serde(default)]
    layers: Vec<String>,
    #[serde(default)]
    phase: Phase,
    /// The host uid root inside maps to while it runs (0: the store's
    /// range, as before sandboxes had ranges of their own).
    #[serde(default)]
    uid_base: u32,
}

/// Where a sandbox's kept state is. Written (durably) before each step
/// that could lose it, so recovery after a crash knows to keep the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// Running (possibly frozen by a memory pause); a dead one's leftovers
    /// are removed.
    #[default]
    Running,
    /// A filesystem pause is under way: whatever is left running is
    /// killed and the disk kept.
    PausingFs,
    /// Paused keeping its disk: no process, no cgroup, no network.
    PausedFs,
    /// Booting again from its kept disk: if it dies before it answers, it
    /// is paused again with its disk.
    Resuming,
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

    fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            id: self.id.clone(),
            ip: self.ip.into(),
            agent_port: AGENT_PORT,
            pid: Some(self.pid as u32),
        }
    }
}

struct Sandbox {
    rec: Record,
    /// Egress now (`rec.internet` is what it was created with).
    internet: AtomicBool,
    /// Paused with memory (its cgroup is frozen).
    frozen: AtomicBool,
    oom_kills: AtomicU64,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Sandbox {
    fn new(rec: Record, oom_kills: u64, frozen: bool) -> Self {
        Self {
            internet: AtomicBool::new(rec.internet),
            frozen: AtomicBool::new(frozen),
            oom_kills: AtomicU64::new(oom_kills),
            rec,
            watcher: Mutex::new(None),
        }
    }

    /// The record as it is now.
    fn record(&self) -> Record {
        Record {
            internet: self.internet.load(Ordering::Acquire),
            ..self.rec.clone()
        }
    }
}

struct Inner {
    cfg: ContainerConfig,
    /// Where each file bound into sandboxes (the agent, templates' binds)
    /// has its neutral copy (see [`crate::host::bins`]).
    bins: BTreeMap<PathBuf, PathBuf>,
    net: Arc<kiln_net::Network>,
    disk: disk::DiskPool,
    cgroups: Cgroups,
    sandboxes: Mutex<BTreeMap<String, Arc<Sandbox>>>,
    /// Sandboxes paused keeping only their disk (no process).
    paused: Mutex<BTreeMap<String, Record>>,
    /// Snapshot layers of sandboxes being started from them (not yet in
    /// `sandboxes`), which garbage collection must keep.
    booting_layers: Mutex<BTreeMap<String, Vec<String>>>,
    /// Ids being created or killed right now.
    busy: Mutex<BTreeSet<String>>,
    events: broadcast::Sender<RuntimeEvent>,
    refilling: AtomicBool,
    warm: Mutex<Vec<warm::Warm>>,
    cgroup_counter: AtomicU64,
    shut_down: AtomicBool,
    /// Sandbox uid ranges, where configured.
    uid_ranges: Option<crate::host::uidrange::UidRanges>,
    /// Per filesystem (st_dev) of a template: whether it takes idmapped
    /// mounts (probed once with kiln-spawn).
    idmap_ok: Mutex<BTreeMap<u64, bool>>,
}

/// The container runtime. Cheap to clone.
#[derive(Clone)]
pub struct ContainerRuntime {
    inner: Arc<Inner>,
}

impl Inner {
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    /// The tmpfs with the copies of the files bound into sandboxes.
    fn bins_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("sandbox-bin")
    }

    /// The copy of a host file bound into sandboxes (itself if not copied).
    fn bin(&self, host: &std::path::Path) -> PathBuf {
        self.bins
            .get(host)
            .cloned()
            .unwrap_or_else(|| host.to_owned())
    }

    /// Where snapshots' layers live (`<build>/layer.img`, `meta.json`).
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
}

/// Runs blocking host work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Other(format!("blocking task failed: {e}")))?
}

impl ContainerRuntime {
    /// Sets the host up (cgroups, the layers' filesystem, bridge, firewall,
    /// namespace pool) and recovers from a previous run: sandboxes whose init
    /// still lives are re-attached (see [`Runtime::list`]); leftovers of dead
    /// ones are removed. Call once at server start, inside a tokio runtime.
    pub async fn new(cfg: ContainerConfig) -> Result<Self, RuntimeError> {
        let inner = blocking(move || recover::start(cfg)).await?;
        let inner = Arc::new(inner);
        let alive: Vec<_> = inner.sandboxes.lock().unwrap().values().cloned().collect();
        for sb in alive {
            create::watch(&inner, &sb);
        }
        spawn_oom_poller(Arc::downgrade(&inner));
        warm::refill(&inner);
        Ok(Self { inner })
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.inner.cfg
    }

    /// The directories of a sandbox's cgroup (one per controller on v1).
    pub fn cgroup_dirs(&self, id: &str) -> Option<Vec<PathBuf>> {
        let sb = self.inner.get(id).ok()?;
        Some(
            self.inner
                .cgroups
                .procs_files(&sb.rec.cgroup)
                .into_iter()
                .filter_map(|p| p.parent().map(PathBuf::from))
                .collect(),
        )
    }

    /// Cgroup version in use (1 or 2).
    pub fn cgroup_version(&self) -> u8 {
        self.inner.cgroups.version()
    }

    /// Releases the pool and, if no sandbox is left, the bridge, firewall,
    /// layers' filesystem and cgroup parents. Sandboxes still running are
    /// left running (a restarted server re-attaches them).
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.inner.shut_down.store(true, Ordering::Release);
        while self.inner.refilling.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let warm = std::mem::take(&mut *self.inner.warm.lock().unwrap());
        let inner = self.inner.clone();
        blocking(move || {
            for w in warm {
                warm::discard(&inner, w);
            }
            recover::shutdown(&inner)
        })
        .await
    }
}

fn spawn_oom_poller(inner: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(inner) = inner.upgrade() else { return };
            let list: Vec<_> = inner.sandboxes.lock().unwrap().values().cloned().collect();
            for sb in list {
                let n = inner.cgroups.stats(&sb.rec.cgroup).oom_kills;
                let before = sb.oom_kills.swap(n, Ordering::AcqRel);
                if n > before {
                    tracing::info!(id = %sb.rec.id, "out-of-memory kill in sandbox");
                    let _ = inner.events.send(RuntimeEvent::OutOfMemory {
                        id: sb.rec.id.clone(),
                    });
                }
            }
        }
    });
}

#[async_trait::async_trait]
impl Runtime for ContainerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_memory: true,
            pause_filesystem: true,
            snapshot_filesystem: true,
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
            .keys()
            .map(|id| Found::Paused {
                id: id.clone(),
                mode: StateMode::Filesystem,
            })
            .collect();
        Ok(self
            .inner
            .sandboxes
            .lock()
            .unwrap()
            .values()
            .map(|s| {
                if s.frozen.load(Ordering::Acquire) {
                    Found::Paused {
                        id: s.rec.id.clone(),
                        mode: StateMode::Memory,
                    }
                } else {
                    Found::Running(s.rec.handle())
                }
            })
            .chain(paused)
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        ContainerRuntime::shutdown(self).await
    }
}
