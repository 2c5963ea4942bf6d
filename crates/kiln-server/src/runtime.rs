//! The one place that turns configuration into a runtime, an agent client
//! and the template catalog. Integration points of the other crates live here.

use std::sync::Arc;

use chrono::Utc;
use kiln_core::templates::{TemplateCatalog, TemplateInfo};
use kiln_core::{AgentClient, NoAgent};
use kiln_runtime::{Runtime, TemplateRef};

use crate::agent_client::HttpAgentClient;
use crate::config::Config;

/// The envd version Kiln's agent implements, reported to the SDKs.
///
/// The agent's own constant, so the two cannot drift apart.
pub const ENVD_VERSION: &str = kiln_api::agent::ENVD_VERSION;

/// The alias of the default template (the SDKs' default).
pub const BASE_TEMPLATE: &str = "base";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("unknown runtime {0:?}: use container or fake")]
    UnknownRuntime(String),
    #[error("the {0} runtime is not available in this build of kilnd yet")]
    NotBuilt(&'static str),
}

/// The runtimes this build of kilnd can run.
///
/// Integration: add "container" when its backend is wired in `build_runtime`.
pub const AVAILABLE_RUNTIMES: &[&str] = &["fake"];

/// A runtime and the client for the agents in its sandboxes.
pub struct Backend {
    pub runtime: Arc<dyn Runtime>,
    pub agent: Arc<dyn AgentClient>,
}

/// Builds the configured runtime and the matching agent client.
pub fn build_runtime(config: &Config) -> Result<Backend, SetupError> {
    match config.runtime.as_str() {
        "fake" => Ok(Backend {
            runtime: Arc::new(kiln_runtime::fake::FakeRuntime::new()),
            agent: Arc::new(NoAgent),
        }),
        // Integration: kiln_runtime's container backend, e.g.
        //   Ok(Backend { runtime: Arc::new(ContainerRuntime::new(..)?), agent: Arc::new(HttpAgentClient::new()) })
        "container" => {
            let _agent = HttpAgentClient::new;
            Err(SetupError::NotBuilt("container"))
        }
        other => Err(SetupError::UnknownRuntime(other.to_owned())),
    }
}

/// The templates sandboxes can start from. For the fake runtime a
/// placeholder; for real runtimes the base template built by kiln-template.
pub async fn load_templates(config: &Config) -> Result<TemplateCatalog, SetupError> {
    let catalog = TemplateCatalog::new();
    // Integration: for real runtimes, build or reuse the base image here:
    //   let base = kiln_template::ensure_base(&config.template_dir(), &progress).await?;
    // and add it with its own id and the alias "base".
    let rootfs = config.template_dir().join(BASE_TEMPLATE).join("rootfs");
    catalog.add(TemplateInfo {
        template: TemplateRef {
            id: BASE_TEMPLATE.into(),
            rootfs,
        },
        aliases: vec![],
        vcpus: config.sandbox_vcpus,
        memory_mib: config.sandbox_memory_mib,
        disk_mib: config.sandbox_disk_mib,
        created_at: Utc::now(),
    });
    Ok(catalog)
}
