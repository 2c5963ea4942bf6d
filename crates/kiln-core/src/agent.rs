//! The one call the core makes to a sandbox's agent: `POST /init` after a
//! create or a resume. The HTTP client lives in kilnd; the core sees a trait.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kiln_runtime::SandboxHandle;

use crate::templates::StartCommand;

/// What the agent is told at start (E2B envd's `POST /init` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInit {
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
    /// The token the agent holds now, when `access_token` replaces it (a
    /// warm sandbox handed to its user, a restored copy of another
    /// sandbox): the request is authenticated with it.
    pub previous_token: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub default_user: String,
    pub default_workdir: String,
}

#[async_trait::async_trait]
pub trait AgentClient: Send + Sync + 'static {
    /// Sends `init` to the agent of the sandbox at `handle`. The error is a
    /// sentence saying what failed.
    async fn init(&self, handle: &SandboxHandle, init: &AgentInit) -> Result<(), String>;

    /// Starts a template's long-lived process through the agent (after
    /// `init`, so it gets the sandbox's envVars) and returns once its ready
    /// check answers, or an error saying why it did not within
    /// `start.ready_timeout` (its output included when it exited).
    async fn start(
        &self,
        _handle: &SandboxHandle,
        _access_token: &str,
        start: &StartCommand,
    ) -> Result<(), String> {
        Err(format!(
            "this agent client cannot run start commands ({:?})",
            start.argv
        ))
    }

    /// Sends a template's warm-up request (see
    /// [`crate::templates::WarmRequest`]) to a started sandbox and waits for
    /// its answer. Default: nothing to do.
    async fn warm(
        &self,
        _handle: &SandboxHandle,
        _access_token: &str,
        _req: &crate::templates::WarmRequest,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// For runtimes without an agent (the fake runtime in tests).
pub struct NoAgent;

#[async_trait::async_trait]
impl AgentClient for NoAgent {
    async fn init(&self, _handle: &SandboxHandle, _init: &AgentInit) -> Result<(), String> {
        Ok(())
    }

    async fn start(
        &self,
        _handle: &SandboxHandle,
        _access_token: &str,
        _start: &StartCommand,
    ) -> Result<(), String> {
        Ok(())
    }
}
