//! A runtime that runs nothing: it records sandboxes in memory. For unit tests
//! of the core, never for users.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::runtime::{
    Runtime, RuntimeError, RuntimeEvent, SandboxHandle, SandboxSpec, SandboxStats, AGENT_PORT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Running,
    Frozen,
}

/// In-memory runtime. `fail_next_create` lets tests exercise error paths.
pub struct FakeRuntime {
    sandboxes: Mutex<BTreeMap<String, (SandboxSpec, FakeState)>>,
    events: broadcast::Sender<RuntimeEvent>,
    fail_next_create: Mutex<Option<String>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self {
            sandboxes: Mutex::new(BTreeMap::new()),
            events: broadcast::channel(64).0,
            fail_next_create: Mutex::new(None),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `create` fails with this message.
    pub fn fail_next_create(&self, message: &str) {
        *self.fail_next_create.lock().unwrap() = Some(message.to_owned());
    }

    pub fn state(&self, id: &str) -> Option<FakeState> {
        self.sandboxes.lock().unwrap().get(id).map(|(_, s)| *s)
    }

    pub fn count(&self) -> usize {
        self.sandboxes.lock().unwrap().len()
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

    fn handle(id: &str) -> SandboxHandle {
        SandboxHandle {
            id: id.to_owned(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            agent_port: AGENT_PORT,
            pid: None,
        }
    }

    fn set_state(&self, id: &str, state: FakeState) -> Result<(), RuntimeError> {
        let mut map = self.sandboxes.lock().unwrap();
        let entry = map
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        entry.1 = state;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        if let Some(msg) = self.fail_next_create.lock().unwrap().take() {
            return Err(RuntimeError::Other(msg));
        }
        let mut map = self.sandboxes.lock().unwrap();
        if map.contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists(spec.id.clone()));
        }
        map.insert(spec.id.clone(), (spec.clone(), FakeState::Running));
        Ok(Self::handle(&spec.id))
    }

    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_state(id, FakeState::Frozen)
    }

    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_state(id, FakeState::Running)
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.sandboxes.lock().unwrap().remove(id);
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        let map = self.sandboxes.lock().unwrap();
        let (spec, _) = map
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        Ok(SandboxStats {
            cpu_count: spec.vcpus,
            memory_limit_bytes: spec.memory_mib * 1024 * 1024,
            disk_limit_bytes: spec.disk_mib * 1024 * 1024,
            ..SandboxStats::default()
        })
    }

    async fn list(&self) -> Result<Vec<SandboxHandle>, RuntimeError> {
        Ok(self
            .sandboxes
            .lock()
            .unwrap()
            .keys()
            .map(|id| Self::handle(id))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}
