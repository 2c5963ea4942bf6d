//! Sandbox records and the typed inputs of core calls.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

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
    pub internet: bool,
    pub envd_version: String,
}

/// Input of [`crate::Core::create`], already parsed from the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    pub template: String,
    /// Seconds; `None` means the configured default.
    pub timeout_secs: Option<i64>,
    pub auto_pause: bool,
    pub internet: bool,
    /// Whether the sandbox's ports need the traffic token.
    pub private_traffic: bool,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
}

/// Input of [`crate::Core::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Every pair must be present in a sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// States to include; empty means running and paused.
    pub states: Vec<SandboxState>,
    /// Page size (1..=100; default 100).
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub next_token: Option<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items follow.
    pub next_token: Option<String>,
}
