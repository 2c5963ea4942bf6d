//! Sandbox records and the typed inputs of core calls.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use kiln_runtime::{RuntimeKind, StateMode};

/// The team a caller acts for (resolved from its API key). Every sandbox
/// belongs to exactly one team.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Team {
    pub id: String,
}

/// Where a sandbox is in its life.
///
/// ```text
/// creating ──▶ running ◀──▶ paused
///     │           │            │
///     └───────────┴────────────┴──▶ killed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    Creating,
    Running,
    Paused,
    Killed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Killed => "killed",
        }
    }

    /// Whether a sandbox in this state still exists for its users.
    pub fn is_live(self) -> bool {
        matches!(self, SandboxState::Running | SandboxState::Paused)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "killed" => SandboxState::Killed,
            other => return Err(format!("unknown sandbox state {other:?}")),
        })
    }
}

/// Everything the store keeps about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub team_id: String,
    pub template_id: String,
    /// The name the caller used for the template, when it was an alias.
    pub alias: Option<String>,
    pub state: SandboxState,
    pub started_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub killed_at: Option<DateTime<Utc>>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub envd_access_token: String,
    /// `None` when the sandbox's ports are public.
    pub traffic_access_token: Option<String>,
    pub auto_pause: bool,
    /// When auto-pausing: keep memory (else the filesystem only).
    pub auto_pause_memory: bool,
    /// A request through the proxy to the paused sandbox resumes it.
    pub auto_resume: bool,
    pub internet: bool,
    /// Networks the sandbox may reach whatever `internet` says.
    pub allow_out: Vec<String>,
    /// Networks the sandbox may not reach.
    pub deny_out: Vec<String>,
    pub envd_version: String,
    /// The isolation backend the sandbox runs on.
    pub runtime: RuntimeKind,
    /// While paused: what the pause kept.
    pub pause_mode: Option<StateMode>,
    /// Why the sandbox ended, when nobody asked (timed out, died, lost
    /// across a host restart).
    pub end_reason: Option<String>,
}

impl SandboxRecord {
    /// The egress policy a runtime applies.
    pub fn egress(&self) -> kiln_runtime::EgressPolicy {
        kiln_runtime::EgressPolicy {
            internet: self.internet,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
        }
    }
}

/// Input of [`crate::Core::create`], already parsed from the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    pub template: String,
    /// Seconds; `None` means the configured default.
    pub timeout_secs: Option<i64>,
    pub auto_pause: bool,
    /// With `auto_pause`: keep memory (E2B's `keep_memory`, its default).
    pub auto_pause_memory: bool,
    pub auto_resume: bool,
    pub internet: bool,
    /// Whether the sandbox's ports need the traffic token.
    pub private_traffic: bool,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub allow_out: Vec<String>,
    pub deny_out: Vec<String>,
    /// The runtime asked for; `None`: the template's, else the server's default.
    pub runtime: Option<RuntimeKind>,
}

/// Input of [`crate::Core::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Every pair must be present in a sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// States to include; empty means running and paused.
    pub states: Vec<SandboxState>,
    /// Page size (1..=1000; default 100).
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub next_token: Option<String>,
    /// By start time; newest first unless asked otherwise (E2B's default).
    pub order: Order,
    /// Only sandboxes started at or after this time.
    pub started_after: Option<DateTime<Utc>>,
    /// Only sandboxes started at or before this time.
    pub started_before: Option<DateTime<Utc>>,
    /// Only sandboxes of this template (its id or an alias; a snapshot by
    /// the id or name the sandboxes were created with). Untagged.
    pub template: Option<String>,
}

/// The order of a listing by start time (ties broken by id, the same way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    NewestFirst,
    OldestFirst,
}

/// A page of [`crate::Core::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxList {
    pub page: Page<SandboxRecord>,
    /// With running sandboxes asked for: how many match the filters in all
    /// (E2B's `X-Total-Running`), before paging.
    pub total_running: Option<usize>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items follow.
    pub next_token: Option<String>,
}
