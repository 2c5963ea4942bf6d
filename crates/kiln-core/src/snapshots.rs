//! Snapshot records: a sandbox's state kept under an id that new sandboxes
//! start from (`Sandbox.create(<snapshot id>)`), as E2B's snapshot templates.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use kiln_runtime::{RuntimeKind, StateMode};

/// Where a snapshot is in its life. A crash while one is `Creating` is
/// reconciled at the next start with what the runtime holds on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Creating,
    Ready,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Ready => "ready",
        }
    }
}

impl fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SnapshotState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "creating" => Ok(SnapshotState::Creating),
            "ready" => Ok(SnapshotState::Ready),
            other => Err(format!("unknown snapshot state {other:?}")),
        }
    }
}

/// Everything the store keeps about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The id users see (without E2B's `:default` tag).
    pub id: String,
    pub team_id: String,
    /// Unique per team; a new snapshot with a taken name replaces the old
    /// one's content under the same id.
    pub name: Option<String>,
    pub source_sandbox_id: String,
    pub runtime: RuntimeKind,
    /// The template the source sandbox started from (its root filesystem
    /// is the snapshot's lowest layer).
    pub template_id: String,
    pub mode: StateMode,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    /// The runtime's own id of the saved state (changes when a name's
    /// snapshot is replaced).
    pub build_id: String,
    pub state: SnapshotState,
    pub size_bytes: u64,
    pub content_hash: String,
    pub created_at: DateTime<Utc>,
    /// Taken by a fork and deleted after it: never listed.
    pub internal: bool,
    /// With memory: the access token the saved agent holds (its source
    /// sandbox's). A copy restored from it is the source's agent, token
    /// and all, so the copy's own token is set by an `/init`
    /// authenticated with this one.
    pub agent_token: Option<String>,
}

/// The tag E2B puts on snapshot ids (`<id>:default`).
pub const DEFAULT_TAG: &str = "default";

impl SnapshotRecord {
    /// The id as the SDKs show it: `<id>:default`.
    pub fn tagged_id(&self) -> String {
        format!("{}:{DEFAULT_TAG}", self.id)
    }

    /// E2B's `names`: `<team>/<name>:default`, when named.
    pub fn names(&self) -> Vec<String> {
        self.name
            .iter()
            .map(|n| format!("{}/{n}:{DEFAULT_TAG}", self.team_id))
            .collect()
    }

    /// Whether `query` (an id or name, maybe `team/`-qualified and tagged)
    /// names this snapshot.
    pub fn answers_to(&self, query: &str) -> bool {
        let Some(untagged) = strip_tag(query) else {
            return false;
        };
        if untagged == self.id {
            return true;
        }
        let name = untagged
            .strip_prefix(&format!("{}/", self.team_id))
            .unwrap_or(untagged);
        self.name.as_deref() == Some(name)
    }
}

/// `query` without a `:default` tag; `None` for any other tag (Kiln's
/// snapshots have only the default one).
pub fn strip_tag(query: &str) -> Option<&str> {
    match query.rsplit_once(':') {
        Some((base, DEFAULT_TAG)) => Some(base),
        Some(_) => None,
        None => Some(query),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_answer_with_or_without_the_default_tag() {
        let r = SnapshotRecord {
            id: "snapabc".into(),
            team_id: "t1".into(),
            name: Some("mine".into()),
            source_sandbox_id: "s".into(),
            runtime: RuntimeKind::Container,
            template_id: "base".into(),
            mode: StateMode::Filesystem,
            vcpus: 1,
            memory_mib: 256,
            disk_mib: 64,
            build_id: "b".into(),
            state: SnapshotState::Ready,
            size_bytes: 0,
            content_hash: String::new(),
            created_at: Utc::now(),
            internal: false,
            agent_token: None,
        };
        for q in [
            "snapabc",
            "snapabc:default",
            "mine",
            "mine:default",
            "t1/mine",
        ] {
            assert!(r.answers_to(q), "{q}");
        }
        for q in ["snapabc:v2", "other", "t2/mine", "mine:v1"] {
            assert!(!r.answers_to(q), "{q}");
        }
        assert_eq!(r.tagged_id(), "snapabc:default");
        assert_eq!(r.names(), vec!["t1/mine:default".to_string()]);
    }
}
