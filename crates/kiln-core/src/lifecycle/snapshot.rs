//! Snapshots: take (the source goes on as it was), list, find, delete.
//!
//! The record is written as `creating` before the runtime saves anything
//! and as `ready` once the runtime says the state is durable, so a crash
//! in between is settled at the next start against what the runtime holds
//! (see `recovery.rs`). A name already taken keeps its id and gets the new
//! content; the old content is deleted only once the record points to the
//! new one.

use chrono::Utc;
use kiln_runtime::{Capabilities, StateMode};

use super::transitions::{check, Op};
use super::{Core, Live};
use crate::error::CoreError;
use crate::ids::random_hex;
use crate::sandbox::{Page, Team};
use crate::snapshots::{SnapshotRecord, SnapshotState};

/// Input of [`Core::list_snapshots`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Only snapshots of this sandbox.
    pub sandbox_id: Option<String>,
    /// Only the snapshot with this id or name (maybe tagged).
    pub name: Option<String>,
    /// Page size (1..=1000; default 100).
    pub limit: Option<usize>,
    pub next_token: Option<String>,
}

const MAX_NAME: usize = 128;

fn validate_name(name: &str) -> Result<(), CoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "invalid snapshot name {name:?}: use 1-{MAX_NAME} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The mode a snapshot is taken in: what was asked for, if the runtime
/// can; with nothing asked, memory where the runtime keeps it, else the
/// filesystem.
pub(crate) fn snapshot_mode(
    caps: &Capabilities,
    runtime: kiln_runtime::RuntimeKind,
    memory: Option<bool>,
) -> Result<StateMode, CoreError> {
    let refuse = |what: &str| {
        CoreError::InvalidArgument(format!(
            "the {runtime} runtime cannot take {what} snapshots"
        ))
    };
    match memory {
        Some(true) if caps.snapshot_memory => Ok(StateMode::Memory),
        Some(true) => Err(refuse("memory")),
        Some(false) if caps.snapshot_filesystem => Ok(StateMode::Filesystem),
        Some(false) => Err(refuse("filesystem")),
        None if caps.snapshot_memory => Ok(StateMode::Memory),
        None if caps.snapshot_filesystem => Ok(StateMode::Filesystem),
        None => Err(refuse("any")),
    }
}

impl Core {
    /// Takes a snapshot of a running or paused sandbox.
    pub async fn create_snapshot(
        &self,
        team: &Team,
        id: &str,
        name: Option<String>,
        memory: Option<bool>,
    ) -> Result<SnapshotRecord, CoreError> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let live = self.owned(team, id)?;
        let (core, team) = (self.clone(), team.clone());
        self.detached(async move {
            let _guard = live.op.lock().await;
            core.snapshot_locked(&team, &live, name, memory, false)
                .await
        })
        .await
    }

    /// Takes a snapshot; the caller holds `live.op`.
    pub(crate) async fn snapshot_locked(
        &self,
        team: &Team,
        live: &Live,
        name: Option<String>,
        memory: Option<bool>,
        internal: bool,
    ) -> Result<SnapshotRecord, CoreError> {
        let rec = live.record();
        check(Op::Snapshot, &rec.id, rec.state)?;
        let runtime = &self.backend_of(&rec)?.runtime;
        let mode = snapshot_mode(&runtime.capabilities(), rec.runtime, memory)?;
        let existing = match &name {
            Some(n) => self
                .inner
                .store
                .list_snapshots(Some(&team.id))
                .await?
                .into_iter()
                .find(|s| s.name.as_deref() == Some(n.as_str())),
            None => None,
        };
        if let Some(e) = &existing {
            if e.runtime != rec.runtime {
                return Err(CoreError::Conflict(format!(
                    "snapshot name {:?} is taken by a snapshot of the {} runtime",
                    name.as_deref().unwrap_or_default(),
                    e.runtime
                )));
            }
        }
        let mut snap = SnapshotRecord {
            id: existing
                .as_ref()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| format!("snap{}", random_hex(10))),
            team_id: team.id.clone(),
            name,
            source_sandbox_id: rec.id.clone(),
            runtime: rec.runtime,
            template_id: rec.template_id.clone(),
            mode,
            vcpus: rec.vcpus,
            memory_mib: rec.memory_mib,
            disk_mib: rec.disk_mib,
            build_id: format!("b{}", random_hex(10)),
            state: SnapshotState::Creating,
            size_bytes: 0,
            content_hash: String::new(),
            created_at: Utc::now(),
            internal,
            agent_token: None,
        };
        if existing.is_none() {
            self.inner.store.insert_snapshot(&snap).await?;
        }
        let info = match runtime.snapshot(&rec.id, &snap.build_id, mode).await {
            Ok(info) => info,
            Err(e) => {
                if existing.is_none() {
                    if let Err(e2) = self.inner.store.delete_snapshot(&snap.id).await {
                        tracing::error!(snapshot = %snap.id, error = %e2, "forgetting a failed snapshot failed");
                    }
                }
                return Err(e.into());
            }
        };
        snap.state = SnapshotState::Ready;
        snap.size_bytes = info.size_bytes;
        snap.content_hash = info.content_hash;
        snap.mode = info.mode;
        // A copy restored with memory is this agent: its new token is set
        // through the one it holds now.
        snap.agent_token = (info.mode == StateMode::Memory).then(|| rec.envd_access_token.clone());
        self.inner.store.update_snapshot(&snap).await?;
        if let Some(old) = existing {
            // The record points to the new content now: the old can go.
            if let Err(e) = runtime.delete_snapshot(&old.build_id).await {
                tracing::error!(snapshot = %snap.id, build = %old.build_id, error = %e, "deleting a replaced snapshot's content failed");
            }
        }
        tracing::info!(snapshot = %snap.id, sandbox = %rec.id, mode = %snap.mode, bytes = snap.size_bytes, "snapshot taken");
        Ok(snap)
    }

    /// The team's ready snapshot that `query` (id or name, maybe tagged) names.
    pub(crate) async fn find_snapshot(
        &self,
        team: &Team,
        query: &str,
    ) -> Result<Option<SnapshotRecord>, CoreError> {
        Ok(self
            .inner
            .store
            .list_snapshots(Some(&team.id))
            .await?
            .into_iter()
            .find(|s| s.state == SnapshotState::Ready && !s.internal && s.answers_to(query)))
    }

    /// The team's snapshots, newest first, one page at a time.
    pub async fn list_snapshots(
        &self,
        team: &Team,
        filter: &SnapshotFilter,
    ) -> Result<Page<SnapshotRecord>, CoreError> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(CoreError::InvalidArgument(format!(
                "limit must be between 1 and 1000, got {limit}"
            )));
        }
        let after = filter
            .next_token
            .as_deref()
            .map(|t| {
                let bad = || CoreError::InvalidArgument(format!("invalid next token {t:?}"));
                let (ms, id) = t.split_once('.').ok_or_else(bad)?;
                Ok::<_, CoreError>((ms.parse::<i64>().map_err(|_| bad())?, id.to_owned()))
            })
            .transpose()?;
        let mut all: Vec<SnapshotRecord> = self
            .inner
            .store
            .list_snapshots(Some(&team.id))
            .await?
            .into_iter()
            .filter(|s| s.state == SnapshotState::Ready && !s.internal)
            .filter(|s| {
                filter
                    .sandbox_id
                    .as_deref()
                    .is_none_or(|id| s.source_sandbox_id == id)
            })
            .filter(|s| filter.name.as_deref().is_none_or(|n| s.answers_to(n)))
            .collect();
        let key = |s: &SnapshotRecord| (s.created_at.timestamp_millis(), s.id.clone());
        all.sort_by_key(|s| std::cmp::Reverse(key(s)));
        let start = match &after {
            Some(after) => all.partition_point(|s| key(s) >= *after),
            None => 0,
        };
        let rest = &all[start..];
        let items: Vec<SnapshotRecord> = rest.iter().take(limit).cloned().collect();
        let next_token = (rest.len() > limit)
            .then(|| {
                items
                    .last()
                    .map(|s| format!("{}.{}", s.created_at.timestamp_millis(), s.id))
            })
            .flatten();
        Ok(Page { items, next_token })
    }

    /// Deletes one of the team's snapshots; false if it has none by that id
    /// or name. Sandboxes started from it are not affected.
    pub async fn delete_snapshot(&self, team: &Team, query: &str) -> Result<bool, CoreError> {
        let Some(snap) = self.find_snapshot(team, query).await? else {
            return Ok(false);
        };
        self.forget_snapshot(&snap).await?;
        Ok(true)
    }

    /// Removes the record, then the runtime's content (a crash in between
    /// leaves content no record names, which the next start deletes).
    pub(crate) async fn forget_snapshot(&self, snap: &SnapshotRecord) -> Result<(), CoreError> {
        self.inner.store.delete_snapshot(&snap.id).await?;
        match self.inner.runtimes.backend(snap.runtime) {
            Some(b) => {
                if let Err(e) = b.runtime.delete_snapshot(&snap.build_id).await {
                    tracing::error!(snapshot = %snap.id, error = %e, "deleting a snapshot's content failed");
                }
            }
            None => {
                tracing::warn!(snapshot = %snap.id, runtime = %snap.runtime, "the snapshot's runtime is not available: its content stays until it is")
            }
        }
        tracing::info!(snapshot = %snap.id, "snapshot deleted");
        Ok(())
    }
}
