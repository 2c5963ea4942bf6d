//! Persistent records: API keys and sandboxes.
//!
//! [`Store`] is what the core needs; [`sqlite::SqliteStore`] is the embedded
//! backend. Queries stay in portable SQL (no SQLite-only syntax, timestamps as
//! integer milliseconds, JSON as text) so a PostgreSQL backend can implement
//! the same trait with the same statements.

pub mod sqlite;

use chrono::{DateTime, Utc};

use crate::limits::TeamLimits;
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::snapshots::SnapshotRecord;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error in {context}")]
    Db {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path} or make it private (0600)")]
    Private {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
    #[error("a store task failed: {0}")]
    Task(String),
}

/// An API key as stored: only its hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub team_id: String,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// The first characters of the key, for people to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One template's use by a team's sandboxes (E2B's `spawnCount` and
/// `lastSpawnedAt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateUsage {
    pub template_id: String,
    pub spawn_count: u64,
    pub last_spawned_at: DateTime<Utc>,
}

/// The persistence the core needs, backend-neutral and async (the SQLite
/// backend runs its short queries on the blocking pool; a PostgreSQL one
/// would await its client). Callers hold no lock across these calls.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// The unrevoked key with this hash.
    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError>;
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes the key with this id; false if there is no such unrevoked key.
    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    async fn insert_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError>;
    /// Overwrites the mutable fields (state, end_at, killed_at, auto_pause,
    /// egress, pause_mode, end_reason).
    async fn update_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError>;
    /// Overwrites every field but the id (a warm sandbox handed to a team).
    async fn reassign_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), StoreError>;
    async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;
    /// Sandboxes in any of `states` (of one team, or of all with `None`),
    /// oldest first, ties broken by id.
    async fn list_sandboxes(
        &self,
        team_id: Option<&str>,
        states: &[SandboxState],
    ) -> Result<Vec<SandboxRecord>, StoreError>;

    /// How often each template was used by one team's sandboxes (created
    /// ever, whatever their state now), and when last.
    async fn template_usage(&self, team_id: &str) -> Result<Vec<TemplateUsage>, StoreError>;

    async fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StoreError>;
    /// Overwrites the mutable fields (mode, build_id, state, size_bytes,
    /// content_hash, created_at).
    async fn update_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StoreError>;
    async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError>;
    /// Snapshots of one team (or of all with `None`), oldest first, ties
    /// broken by id.
    async fn list_snapshots(
        &self,
        team_id: Option<&str>,
    ) -> Result<Vec<SnapshotRecord>, StoreError>;
    /// Deletes the record; false if there was none.
    async fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError>;

    /// The limits set for a team (`None`: it has the defaults).
    async fn team_limits(&self, team_id: &str) -> Result<Option<TeamLimits>, StoreError>;
    /// Sets a team's limits; all `None` goes back to the defaults.
    async fn set_team_limits(&self, team_id: &str, limits: &TeamLimits) -> Result<(), StoreError>;
    /// Every team with limits of its own, by name.
    async fn list_team_limits(&self) -> Result<Vec<(String, TeamLimits)>, StoreError>;
}
