//! The runtimes one kilnd serves at once, and which one a sandbox gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_runtime::{Runtime, RuntimeKind};

use crate::agent::AgentClient;
use crate::error::CoreError;

/// A runtime and the client for the agents in its sandboxes.
#[derive(Clone)]
pub struct Backend {
    pub runtime: Arc<dyn Runtime>,
    pub agent: Arc<dyn AgentClient>,
}

/// Every runtime kilnd set up, the ones it could not (with why), and the
/// server's default.
#[derive(Clone)]
pub struct Runtimes {
    default: RuntimeKind,
    ready: BTreeMap<RuntimeKind, Backend>,
    unavailable: BTreeMap<RuntimeKind, String>,
}

impl Runtimes {
    pub fn new(default: RuntimeKind) -> Self {
        Self {
            default,
            ready: BTreeMap::new(),
            unavailable: BTreeMap::new(),
        }
    }

    /// One runtime, also the default.
    pub fn single(runtime: Arc<dyn Runtime>, agent: Arc<dyn AgentClient>) -> Self {
        let mut set = Self::new(runtime.kind());
        set.add(Backend { runtime, agent });
        set
    }

    pub fn add(&mut self, backend: Backend) {
        let kind = backend.runtime.kind();
        self.unavailable.remove(&kind);
        self.ready.insert(kind, backend);
    }

    /// Records that `kind` cannot run on this host, and why.
    pub fn mark_unavailable(&mut self, kind: RuntimeKind, why: impl Into<String>) {
        self.unavailable.insert(kind, why.into());
    }

    pub fn default_kind(&self) -> RuntimeKind {
        self.default
    }

    /// The runtime of `kind`, or why there is none (a 400 naming it).
    pub fn get(&self, kind: RuntimeKind) -> Result<&Backend, CoreError> {
        if let Some(b) = self.ready.get(&kind) {
            return Ok(b);
        }
        Err(CoreError::InvalidArgument(
            match self.unavailable.get(&kind) {
                Some(why) => format!("runtime {kind} is not available on this host: {why}"),
                None => format!(
                    "runtime {kind} is not enabled on this server (it serves {})",
                    self.kinds()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        ))
    }

    /// The backend of a sandbox already on `kind` (which was available
    /// when it was made); `None` if this start lacks it.
    pub fn backend(&self, kind: RuntimeKind) -> Option<&Backend> {
        self.ready.get(&kind)
    }

    /// The runtimes ready to serve.
    pub fn kinds(&self) -> Vec<RuntimeKind> {
        self.ready.keys().copied().collect()
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.ready.values()
    }

    /// The runtimes that could not start, with why.
    pub fn unavailable(&self) -> &BTreeMap<RuntimeKind, String> {
        &self.unavailable
    }
}
