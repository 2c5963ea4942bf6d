//! The templates sandboxes are created from, by id or alias.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_runtime::TemplateRef;

/// A template ready to start sandboxes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    pub template: TemplateRef,
    pub aliases: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub created_at: DateTime<Utc>,
    /// The runtime its sandboxes get unless the create names one (`None`:
    /// the server's default).
    pub runtime: Option<kiln_runtime::RuntimeKind>,
    /// A long-lived process the template runs in every sandbox (the code
    /// interpreter), started after the agent's `/init`; the create returns
    /// once it is ready.
    pub start: Option<StartCommand>,
}

/// A template's start command and its ready check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCommand {
    /// Program and arguments (`argv[0]` is the program's path in the sandbox).
    pub argv: Vec<String>,
    pub user: String,
    pub cwd: String,
    /// On top of the sandbox's envVars.
    pub env: Vec<(String, String)>,
    /// Ready when `GET http://<sandbox>:<ready_port><ready_path>` answers 200.
    pub ready_port: u16,
    pub ready_path: String,
    /// How long the create waits for the ready check.
    pub ready_timeout: Duration,
    /// A request that readies the process for its first real use (the code
    /// interpreter: start the default kernel, import what agents import),
    /// sent to sandboxes kept warm for this template.
    pub warm: Option<WarmRequest>,
}

/// `POST http://<sandbox>:<port><path>` with `body` (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmRequest {
    pub port: u16,
    pub path: String,
    pub body: String,
}

/// The templates kilnd knows, looked up by id or alias.
#[derive(Default)]
pub struct TemplateCatalog {
    by_id: RwLock<BTreeMap<String, TemplateInfo>>,
}

impl TemplateCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a template.
    pub fn add(&self, info: TemplateInfo) {
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.template.id.clone(), info);
    }

    /// The template with this id or alias.
    pub fn resolve(&self, name: &str) -> Option<TemplateInfo> {
        let map = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .or_else(|| map.values().find(|t| t.aliases.iter().any(|a| a == name)))
            .cloned()
    }

    pub fn list(&self) -> Vec<TemplateInfo> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_by_id_and_alias() {
        let c = TemplateCatalog::new();
        c.add(TemplateInfo {
            template: TemplateRef {
                id: "t1".into(),
                rootfs: "/nonexistent".into(),
            },
            aliases: vec!["base".into()],
            vcpus: 2,
            memory_mib: 1024,
            disk_mib: 4096,
            created_at: Utc::now(),
            runtime: None,
            start: None,
        });
        assert_eq!(c.resolve("t1").unwrap().template.id, "t1");
        assert_eq!(c.resolve("base").unwrap().template.id, "t1");
        assert!(c.resolve("nope").is_none());
    }
}
