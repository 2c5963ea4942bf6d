//! The control API's request and response bodies, as the `e2b` SDKs send and
//! read them (field names follow E2B's `spec/openapi.yml`).
//!
//! Unknown request fields are ignored, so newer SDKs that send more than Kiln
//! understands keep working.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Error body of every non-2xx answer of the control API and of the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Error {
    /// The HTTP status code, repeated.
    pub code: u16,
    /// What went wrong, as a sentence.
    pub message: String,
}

/// Network settings of a new sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetworkConfig {
    /// Whether the sandbox's ports are reachable without the traffic access
    /// token. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
    /// CIDRs or domains the sandbox may reach (recorded; enforcement is the
    /// network layer's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// CIDRs or domains the sandbox may not reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
}

/// Body of `POST /sandboxes` and `POST /v2/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template id or alias (e.g. `base`).
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Time to live in seconds (default 300, at most the server's maximum,
    /// `KILN_MAX_TIMEOUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub timeout: Option<i64>,
    /// Pause instead of killing the sandbox when its timeout expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// With `autoPause`: keep memory when pausing (default true); false
    /// keeps only the filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause_memory: Option<bool>,
    /// Resume the paused sandbox when a request reaches it through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<AutoResume>,
    /// Kiln extension: the isolation backend (`container`, `gvisor`,
    /// `microvm`); default the template's, else the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// v1 only: whether access to the agent needs the access token. Kiln
    /// always issues one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Whether the sandbox may reach the internet (default true).
    #[serde(
        default,
        rename = "allow_internet_access",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SandboxNetworkConfig>,
    /// Free-form string labels, returned in listings and usable as filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables of every process started in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `autoResume` of a new sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AutoResume {
    pub enabled: bool,
}

/// What a paused sandbox's latest pause kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PauseMode {
    /// Memory and filesystem.
    Full,
    Filesystem,
}

/// What happens when the sandbox's timeout expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Kill,
    Pause,
}

/// The sandbox's lifecycle settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLifecycle {
    pub auto_resume: bool,
    pub on_timeout: OnTimeout,
}

/// Body of `POST /sandboxes/{id}/pause`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPauseRequest {
    /// Keep memory (default true): processes go on where they stopped.
    /// False keeps only the filesystem: resume boots the sandbox anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A created (or connected, or resumed) sandbox: what a client needs to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Version of the agent's API (E2B's envd) the sandbox runs.
    pub envd_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Token for the agent (`X-Access-Token`).
    pub envd_access_token: String,
    /// Token for the sandbox's other ports (`e2b-traffic-access-token`);
    /// null when the sandbox's traffic is public.
    pub traffic_access_token: Option<String>,
    /// Domain under which `<port>-<sandboxID>.<domain>` reaches the sandbox.
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
}

/// One sandbox as `GET /sandboxes/{id}` and the listings describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub started_at: DateTime<Utc>,
    /// When the sandbox's timeout expires.
    pub end_at: DateTime<Utc>,
    pub state: SandboxState,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub envd_version: String,
    pub metadata: BTreeMap<String, String>,
    /// Present only in `GET /sandboxes/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(
        default,
        rename = "allowInternetAccess",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Present only in `GET /sandboxes/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
    /// While paused: what the pause kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<PauseMode>,
    /// Kiln extension: the isolation backend the sandbox runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// Body of `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxTimeoutRequest {
    /// New time to live in seconds, counted from now (at most the server's
    /// maximum). `0` ends the sandbox now: its on-timeout action (kill, or
    /// pause) runs before the answer.
    #[schema(minimum = 0)]
    pub timeout: i64,
}

/// Body of `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxRefreshRequest {
    /// Seconds to keep the sandbox alive from now (default: the server's
    /// default timeout; at most the server's maximum). Never shortens its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub duration: Option<i64>,
}

/// Body of `POST /sandboxes/{id}/connect`, `/v2/sandboxes/{id}/connect` and
/// `/sandboxes/{id}/resume`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectSandbox {
    /// Seconds to keep the sandbox alive from now (at most the server's
    /// maximum); extends, never shortens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub timeout: Option<i64>,
    /// Resume only: pause again (instead of kill) when the timeout expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// For a paused sandbox: restore its memory (true, the default) or boot
    /// it anew on its kept filesystem (false, E2B's `on_resume: reboot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

impl ConnectSandbox {
    /// Whether the caller asked for a reboot rather than a restore.
    pub fn reboot(&self) -> bool {
        self.memory == Some(false)
    }
}

/// One resource-use sample of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    pub timestamp: DateTime<Utc>,
    pub timestamp_unix: i64,
    pub cpu_count: u32,
    /// CPU use in percent of `cpuCount` CPUs since the previous sample (or
    /// since creation).
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// Body of `GET /sandboxes/metrics`: the latest sample of each sandbox
/// asked about that the caller has, by sandbox id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxesWithMetrics {
    pub sandboxes: BTreeMap<String, SandboxMetric>,
}

/// State of a template's build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TemplateBuildStatus {
    Building,
    Waiting,
    Ready,
    Error,
}

/// Who made a template; Kiln has no user accounts, so always null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeamUser {
    pub id: String,
    pub email: Option<String>,
}

/// Answer of `GET /templates/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateAliasResponse {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Whether every team may use it (Kiln's built-in templates), or only
    /// its team (a snapshot).
    pub public: bool,
}

/// One build of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuild {
    /// A UUID.
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: TemplateBuildStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub envd_version: String,
}

/// Answer of `GET /templates/{templateID}`: the template (as the listing
/// shows it) and its builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateWithBuilds {
    #[serde(flatten)]
    pub template: Template,
    pub builds: Vec<TemplateBuild>,
}

/// A template sandboxes can be created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its latest build (a UUID).
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub public: bool,
    pub aliases: Vec<String>,
    pub names: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Always null in Kiln (no user accounts).
    pub created_by: Option<TeamUser>,
    /// When the caller's team last started a sandbox from it.
    pub last_spawned_at: Option<DateTime<Utc>>,
    /// How many sandboxes the caller's team started from it.
    pub spawn_count: u64,
    pub build_count: u64,
    pub envd_version: String,
    /// `ready` for every template Kiln lists.
    pub build_status: TemplateBuildStatus,
    /// Whether it is one of the server's own templates (true for the
    /// catalog's, false for a team's snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
}

/// Body of `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotRequest {
    /// A name for the snapshot; one that is taken gets the new content
    /// under its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keep memory (sandboxes started from it go on where the source was)
    /// or only the filesystem (they boot). Default: memory where the
    /// sandbox's runtime keeps it, else the filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A snapshot: `Sandbox.create(snapshotID)` starts sandboxes from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// `<id>:default`.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// `<team>/<name>:default` when named.
    pub names: Vec<String>,
    /// Kiln extension: the sandbox it was taken of.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Kiln extension: `memory` or `filesystem`.
    pub mode: String,
    /// Kiln extension: bytes it holds on disk beyond the template.
    pub size_bytes: u64,
    /// Kiln extension: SHA-256 of its content.
    pub content_hash: String,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /sandboxes/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxForkRequest {
    /// Time to live of each copy in seconds (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub timeout: Option<i64>,
    /// How many copies, 1 to 100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub count: Option<u32>,
}

/// One copy of a fork: exactly one of `sandbox` and `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxForkResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sandbox_reads_what_the_python_sdk_sends() {
        let body = r#"{"templateID":"base","timeout":60,"autoPause":false,
            "autoPauseMemory":true,"metadata":{"k":"v"},"envVars":{"A":"1"},
            "allow_internet_access":false,"network":{"allowPublicTraffic":false}}"#;
        let n: NewSandbox = serde_json::from_str(body).unwrap();
        assert_eq!(n.template_id, "base");
        assert_eq!(n.timeout, Some(60));
        assert_eq!(n.allow_internet_access, Some(false));
        assert_eq!(n.metadata.unwrap()["k"], "v");
        assert_eq!(n.env_vars.unwrap()["A"], "1");
        assert_eq!(n.network.unwrap().allow_public_traffic, Some(false));
    }

    #[test]
    fn sandbox_detail_uses_e2b_field_names() {
        let d = SandboxDetail {
            template_id: "base".into(),
            sandbox_id: "abc".into(),
            client_id: "kiln".into(),
            alias: None,
            started_at: DateTime::from_timestamp(0, 0).unwrap(),
            end_at: DateTime::from_timestamp(300, 0).unwrap(),
            state: SandboxState::Running,
            cpu_count: 2,
            memory_mb: 1024,
            disk_size_mb: 4096,
            envd_version: "0.5.7".into(),
            metadata: BTreeMap::new(),
            envd_access_token: None,
            allow_internet_access: None,
            domain: None,
            lifecycle: None,
            pause_mode: None,
            runtime: Some("gvisor".into()),
        };
        let v = serde_json::to_value(&d).unwrap();
        for key in [
            "templateID",
            "sandboxID",
            "clientID",
            "startedAt",
            "endAt",
            "state",
            "cpuCount",
            "memoryMB",
            "diskSizeMB",
            "envdVersion",
            "metadata",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["state"], "running");
        assert_eq!(v["startedAt"], "1970-01-01T00:00:00Z");
    }
}
