//! A runtime that runs nothing: it records sandboxes and snapshots in
//! memory. For unit tests of the core, never for users. It claims every
//! capability, so the core's whole state machine can be driven through it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::runtime::{
    Capabilities, EgressPolicy, Found, Paused, ResumeMode, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxHandle, SandboxSpec, SandboxStats, SnapshotInfo, StateMode, AGENT_PORT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Running,
    Paused(StateMode),
}

struct FakeSandbox {
    spec: SandboxSpec,
    state: FakeState,
    /// How many times it was (re)started: a filesystem resume boots anew.
    boots: u32,
}

/// In-memory runtime. `fail_next` lets tests exercise error paths.
pub struct FakeRuntime {
    sandboxes: Mutex<BTreeMap<String, FakeSandbox>>,
    snapshots: Mutex<BTreeMap<String, (SnapshotInfo, SandboxSpec)>>,
    events: broadcast::Sender<RuntimeEvent>,
    fail_next: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self {
            sandboxes: Mutex::new(BTreeMap::new()),
            snapshots: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
            fail_next: Mutex::new(BTreeMap::new()),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `create` fails with this message.
    pub fn fail_next_create(&self, message: &str) {
        self.fail_next("create", message);
    }

    /// The next call of `op` (`create`, `pause`, `resume`, `snapshot`,
    /// `restore`, `kill`) fails with this message.
    pub fn fail_next(&self, op: &'static str, message: &str) {
        self.fail_next
            .lock()
            .unwrap()
            .insert(op, message.to_owned());
    }

    fn failing(&self, op: &'static str) -> Result<(), RuntimeError> {
        match self.fail_next.lock().unwrap().remove(op) {
            Some(msg) => Err(RuntimeError::Other(msg)),
            None => Ok(()),
        }
    }

    pub fn state(&self, id: &str) -> Option<FakeState> {
        self.sandboxes.lock().unwrap().get(id).map(|s| s.state)
    }

    /// How many times the sandbox booted (1 after create; +1 per
    /// filesystem resume).
    pub fn boots(&self, id: &str) -> Option<u32> {
        self.sandboxes.lock().unwrap().get(id).map(|s| s.boots)
    }

    /// The spec the sandbox was last started with.
    pub fn spec(&self, id: &str) -> Option<SandboxSpec> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|s| s.spec.clone())
    }

    pub fn count(&self) -> usize {
        self.sandboxes.lock().unwrap().len()
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        self.snapshots.lock().unwrap().keys().cloned().collect()
    }

    /// Pretend the sandbox's init died.
    pub fn crash(&self, id: &str, oom_killed: bool) {
        self.sandboxes.lock().unwrap().remove(id);
        let _ = self.events.send(RuntimeEvent::Exited {
            id: id.to_owned(),
            oom_killed,
            exit_code: None,
        });
    }

    /// Pretend the host rebooted: sandboxes whose state lived in memory
    /// (running, or paused without a durable state) are gone.
    pub fn reboot(&self) {
        self.sandboxes
            .lock()
            .unwrap()
            .retain(|_, s| matches!(s.state, FakeState::Paused(StateMode::Filesystem)));
    }

    fn handle(id: &str) -> SandboxHandle {
        SandboxHandle {
            id: id.to_owned(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            agent_port: AGENT_PORT,
            pid: None,
        }
    }

    fn insert(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let mut map = self.sandboxes.lock().unwrap();
        if map.contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists(spec.id.clone()));
        }
        map.insert(
            spec.id.clone(),
            FakeSandbox {
                spec: spec.clone(),
                state: FakeState::Running,
                boots: 1,
            },
        );
        Ok(Self::handle(&spec.id))
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Fake
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pause_memory: true,
            durable_memory: false,
            pause_filesystem: true,
            snapshot_filesystem: true,
            snapshot_memory: true,
            fork: true,
            egress_lists: true,
            gpu: false,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.failing("create")?;
        self.insert(spec)
    }

    async fn pause(&self, id: &str, mode: StateMode) -> Result<Paused, RuntimeError> {
        self.failing("pause")?;
        let mut map = self.sandboxes.lock().unwrap();
        let sb = map
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if sb.state != FakeState::Running {
            return Err(RuntimeError::WrongState(format!(
                "sandbox {id} is not running"
            )));
        }
        sb.state = FakeState::Paused(mode);
        Ok(Paused {
            mode,
            durable: mode == StateMode::Filesystem,
            bytes_on_disk: 0,
        })
    }

    async fn resume(
        &self,
        spec: &SandboxSpec,
        mode: ResumeMode,
    ) -> Result<SandboxHandle, RuntimeError> {
        self.failing("resume")?;
        let mut map = self.sandboxes.lock().unwrap();
        let sb = map
            .get_mut(&spec.id)
            .ok_or_else(|| RuntimeError::NotFound(spec.id.clone()))?;
        match sb.state {
            FakeState::Running => {
                return Err(RuntimeError::WrongState(format!(
                    "sandbox {} is not paused",
                    spec.id
                )))
            }
            FakeState::Paused(StateMode::Filesystem) => sb.boots += 1,
            FakeState::Paused(StateMode::Memory) if mode == ResumeMode::Reboot => sb.boots += 1,
            FakeState::Paused(StateMode::Memory) => {}
        }
        sb.state = FakeState::Running;
        sb.spec = spec.clone();
        Ok(Self::handle(&spec.id))
    }

    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
        mode: StateMode,
    ) -> Result<SnapshotInfo, RuntimeError> {
        self.failing("snapshot")?;
        let spec = self
            .spec(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let info = SnapshotInfo {
            id: snapshot_id.to_owned(),
            mode,
            size_bytes: 4096,
            content_hash: crate::host::sys::sha256_hex(snapshot_id.as_bytes()),
        };
        self.snapshots
            .lock()
            .unwrap()
            .insert(snapshot_id.to_owned(), (info.clone(), spec));
        Ok(info)
    }

    async fn restore(
        &self,
        spec: &SandboxSpec,
        snapshot_id: &str,
    ) -> Result<SandboxHandle, RuntimeError> {
        self.failing("restore")?;
        if !self.snapshots.lock().unwrap().contains_key(snapshot_id) {
            return Err(RuntimeError::SnapshotNotFound(snapshot_id.to_owned()));
        }
        self.insert(spec)
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        self.snapshots.lock().unwrap().remove(snapshot_id);
        Ok(())
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        Ok(self
            .snapshots
            .lock()
            .unwrap()
            .values()
            .map(|(i, _)| i.clone())
            .collect())
    }

    async fn set_egress(&self, id: &str, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        let mut map = self.sandboxes.lock().unwrap();
        let sb = map
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        sb.spec.egress = policy.clone();
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.failing("kill")?;
        self.sandboxes.lock().unwrap().remove(id);
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        let map = self.sandboxes.lock().unwrap();
        let sb = map
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        Ok(SandboxStats {
            cpu_count: sb.spec.vcpus,
            memory_limit_bytes: sb.spec.memory_mib * 1024 * 1024,
            disk_limit_bytes: sb.spec.disk_mib * 1024 * 1024,
            ..SandboxStats::default()
        })
    }

    async fn list(&self) -> Result<Vec<Found>, RuntimeError> {
        Ok(self
            .sandboxes
            .lock()
            .unwrap()
            .iter()
            .map(|(id, sb)| match sb.state {
                FakeState::Running => Found::Running(Self::handle(id)),
                FakeState::Paused(mode) => Found::Paused {
                    id: id.clone(),
                    mode,
                },
            })
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}
