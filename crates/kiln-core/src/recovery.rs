//! What kilnd does at start with the sandboxes of its previous run.
//!
//! The runtimes say what is on the host (running, or paused with what was
//! kept); the store says what Kiln promised. Where they disagree the host
//! wins, since a crash can fall between a runtime's change and the store's
//! record of it: a pause that finished on disk is a pause, a resume that
//! finished is a resume. A record whose sandbox is gone is marked killed,
//! with why; a sandbox no record claims is killed.

use std::collections::HashMap;

use chrono::Utc;
use kiln_runtime::{Found, RuntimeKind, SnapshotInfo, StateMode};

use crate::error::CoreError;
use crate::lifecycle::{Core, Live};
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::snapshots::SnapshotState;
use crate::timers;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Running in the store and found running: serving again.
    pub reattached: usize,
    /// Paused in the store (or found paused) and kept paused.
    pub paused: usize,
    /// Live in the store but gone from the runtime, or half-created, or
    /// expired while kilnd was down: killed and marked so.
    pub cleaned: usize,
    /// Found in a runtime with no live record: killed.
    pub orphans_killed: usize,
    /// Snapshots whose taking a crash interrupted, settled either way, plus
    /// a fork's leftover snapshots and content no record names: removed or
    /// completed.
    pub snapshots_settled: usize,
}

pub(crate) async fn recover(core: &Core) -> Result<RecoveryReport, CoreError> {
    let inner = &core.inner;
    let mut report = RecoveryReport::default();
    let mut found: HashMap<String, (RuntimeKind, Found)> = HashMap::new();
    for backend in inner.runtimes.backends() {
        let kind = backend.runtime.kind();
        for f in backend.runtime.list().await? {
            found.insert(f.id().to_owned(), (kind, f));
        }
    }
    let records = inner
        .store
        .list_sandboxes(
            None,
            &[
                SandboxState::Creating,
                SandboxState::Running,
                SandboxState::Paused,
            ],
        )
        .await?;
    let now = Utc::now();
    for mut rec in records {
        let on_host = match found.remove(&rec.id) {
            Some((kind, f)) if kind == rec.runtime => Some(f),
            Some((kind, _)) => {
                // Not where the record says: not ours to trust.
                kill_orphan(core, kind, &rec.id).await;
                None
            }
            None => None,
        };
        if inner.runtimes.backend(rec.runtime).is_none() {
            if rec.state == SandboxState::Paused {
                // Its state may be safe on disk: keep it for a start that
                // has its runtime again (resume answers why not meanwhile).
                tracing::warn!(sandbox = %rec.id, runtime = %rec.runtime, "a paused sandbox's runtime is not available; it stays paused");
                core.insert_live(Live::new(rec, None));
                report.paused += 1;
            } else {
                let why = format!(
                    "its runtime {} was not available when kilnd started",
                    rec.runtime
                );
                mark_killed(core, &mut rec, &why).await?;
                report.cleaned += 1;
            }
            continue;
        }
        match (rec.state, on_host) {
            (SandboxState::Running, Some(Found::Running(handle))) => {
                if rec.end_at <= now && !rec.auto_pause {
                    kill_found(core, &rec).await;
                    mark_killed(core, &mut rec, "its timeout expired while kilnd was down").await?;
                    report.cleaned += 1;
                    continue;
                }
                // An expired auto-pausing one is paused by its timer at once.
                let live = Live::new(rec, Some(handle));
                core.insert_live(live.clone());
                timers::spawn_timer(core, &live);
                report.reattached += 1;
            }
            (SandboxState::Running | SandboxState::Paused, Some(Found::Paused { mode, .. })) => {
                if rec.state != SandboxState::Paused || rec.pause_mode != Some(mode) {
                    // The pause finished on the host; the store missed it.
                    rec.state = SandboxState::Paused;
                    rec.pause_mode = Some(mode);
                    inner.store.update_sandbox(&rec).await?;
                }
                let live = Live::new(rec, None);
                core.insert_live(live.clone());
                timers::spawn_timer(core, &live);
                report.paused += 1;
            }
            (SandboxState::Paused, Some(Found::Running(handle))) => {
                // The resume finished on the host; the store missed it.
                rec.state = SandboxState::Running;
                rec.pause_mode = None;
                rec.end_at = crate::lifecycle::Core::deadline(inner.config.default_timeout_secs);
                inner.store.update_sandbox(&rec).await?;
                if let Err(e) = core.init_agent(&handle, &rec).await {
                    tracing::warn!(sandbox = %rec.id, error = %e, "the agent of a resumed sandbox did not take its init");
                }
                let live = Live::new(rec, Some(handle));
                core.insert_live(live.clone());
                timers::spawn_timer(core, &live);
                report.reattached += 1;
            }
            (SandboxState::Creating, on_host) => {
                if on_host.is_some() {
                    kill_found(core, &rec).await;
                }
                mark_killed(core, &mut rec, "kilnd stopped while creating it").await?;
                report.cleaned += 1;
            }
            (_, None) => {
                let why = lost_reason(core, &rec);
                mark_killed(core, &mut rec, &why).await?;
                report.cleaned += 1;
            }
            (SandboxState::Killed, _) => unreachable!("only live records are listed"),
        }
    }
    for (id, (kind, _)) in found {
        tracing::info!(sandbox = %id, runtime = %kind, "killing a sandbox kiln has no record of");
        kill_orphan(core, kind, &id).await;
        report.orphans_killed += 1;
    }
    report.snapshots_settled = reconcile_snapshots(core).await?;
    if report != RecoveryReport::default() {
        tracing::info!(
            reattached = report.reattached,
            paused = report.paused,
            cleaned = report.cleaned,
            orphans_killed = report.orphans_killed,
            snapshots_settled = report.snapshots_settled,
            "recovered sandboxes of the previous run"
        );
    }
    Ok(report)
}

/// Why a live record's sandbox is not on the host.
fn lost_reason(core: &Core, rec: &SandboxRecord) -> String {
    let durable = core
        .inner
        .runtimes
        .backend(rec.runtime)
        .is_some_and(|b| b.runtime.capabilities().durable_memory);
    match (rec.state, rec.pause_mode) {
        (SandboxState::Paused, Some(StateMode::Memory)) if !durable => format!(
            "it was paused with memory on the {} runtime, whose memory pause does not survive a \
             host restart, and the host restarted",
            rec.runtime
        ),
        _ => "it was gone from the host when kilnd started (the host restarted or it died)"
            .to_owned(),
    }
}

async fn kill_found(core: &Core, rec: &SandboxRecord) {
    kill_orphan(core, rec.runtime, &rec.id).await;
}

async fn kill_orphan(core: &Core, kind: RuntimeKind, id: &str) {
    if let Some(b) = core.inner.runtimes.backend(kind) {
        if let Err(e) = b.runtime.kill(id).await {
            tracing::error!(sandbox = %id, error = %e, "killing a leftover sandbox failed");
        }
    }
}

async fn mark_killed(core: &Core, rec: &mut SandboxRecord, why: &str) -> Result<(), CoreError> {
    tracing::info!(sandbox = %rec.id, reason = why, "sandbox of the previous run marked killed");
    rec.state = SandboxState::Killed;
    rec.killed_at = Some(Utc::now());
    rec.pause_mode = None;
    rec.end_reason = Some(why.to_owned());
    core.inner.store.update_sandbox(rec).await?;
    Ok(())
}

/// Makes the snapshot records and the runtimes' snapshots agree: a record
/// still `creating` is ready if its content is complete on disk, else
/// dropped; a fork's snapshot is dropped; a ready record whose content is
/// gone is dropped (and said); content no record names is deleted.
async fn reconcile_snapshots(core: &Core) -> Result<usize, CoreError> {
    let inner = &core.inner;
    let mut settled = 0;
    let records = inner.store.list_snapshots(None).await?;
    for backend in inner.runtimes.backends() {
        let kind = backend.runtime.kind();
        let on_disk: HashMap<String, SnapshotInfo> = backend
            .runtime
            .list_snapshots()
            .await?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut named = std::collections::HashSet::new();
        for mut rec in records.iter().filter(|r| r.runtime == kind).cloned() {
            let info = on_disk.get(&rec.build_id);
            match (rec.state, info) {
                _ if rec.internal => {
                    tracing::info!(snapshot = %rec.id, "removing a fork's snapshot left by the previous run");
                    inner.store.delete_snapshot(&rec.id).await?;
                    settled += 1;
                }
                (SnapshotState::Creating, Some(info)) => {
                    rec.state = SnapshotState::Ready;
                    rec.size_bytes = info.size_bytes;
                    rec.content_hash = info.content_hash.clone();
                    rec.mode = info.mode;
                    inner.store.update_snapshot(&rec).await?;
                    named.insert(rec.build_id.clone());
                    settled += 1;
                }
                (SnapshotState::Creating, None) => {
                    inner.store.delete_snapshot(&rec.id).await?;
                    settled += 1;
                }
                (SnapshotState::Ready, Some(_)) => {
                    named.insert(rec.build_id.clone());
                }
                (SnapshotState::Ready, None) => {
                    tracing::error!(snapshot = %rec.id, runtime = %kind, "a snapshot's content is gone from the host; forgetting it");
                    inner.store.delete_snapshot(&rec.id).await?;
                    settled += 1;
                }
            }
        }
        for build in on_disk.keys().filter(|b| !named.contains(*b)) {
            tracing::info!(build = %build, runtime = %kind, "deleting snapshot content no record names");
            if let Err(e) = backend.runtime.delete_snapshot(build).await {
                tracing::error!(build = %build, error = %e, "deleting leftover snapshot content failed");
            }
            settled += 1;
        }
    }
    Ok(settled)
}
