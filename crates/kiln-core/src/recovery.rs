//! What kilnd does at start with the sandboxes of its previous run.

use std::collections::HashMap;

use chrono::Utc;

use crate::error::CoreError;
use crate::lifecycle::{Core, Live};
use crate::sandbox::SandboxState;
use crate::timers;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Live in the store and found in the runtime: serving again.
    pub reattached: usize,
    /// Live in the store but gone from the runtime, or half-created, or
    /// expired while kilnd was down: killed and marked so.
    pub cleaned: usize,
    /// Found in the runtime with no live record: killed.
    pub orphans_killed: usize,
}

pub(crate) async fn recover(core: &Core) -> Result<RecoveryReport, CoreError> {
    let inner = &core.inner;
    let mut report = RecoveryReport::default();
    let mut in_runtime: HashMap<String, _> = inner
        .runtime
        .list()
        .await?
        .into_iter()
        .map(|h| (h.id.clone(), h))
        .collect();
    let records = inner.store.list_sandboxes(
        None,
        &[
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
        ],
    )?;
    let now = Utc::now();
    for mut rec in records {
        let handle = in_runtime.remove(&rec.id);
        let expired = rec.state == SandboxState::Running && rec.end_at <= now && !rec.auto_pause;
        match handle {
            Some(handle) if rec.state.is_live() && !expired => {
                let live = Live::new(rec, Some(handle));
                core.insert_live(live.clone());
                timers::spawn_timer(core, &live);
                report.reattached += 1;
            }
            _ => {
                if let Err(e) = inner.runtime.kill(&rec.id).await {
                    tracing::error!(sandbox = %rec.id, error = %e, "cleaning up a sandbox failed");
                }
                rec.state = SandboxState::Killed;
                rec.killed_at = Some(now);
                inner.store.update_sandbox(&rec)?;
                report.cleaned += 1;
            }
        }
    }
    for id in in_runtime.into_keys() {
        tracing::info!(sandbox = %id, "killing a sandbox kiln has no record of");
        if let Err(e) = inner.runtime.kill(&id).await {
            tracing::error!(sandbox = %id, error = %e, "killing an orphan sandbox failed");
        }
        report.orphans_killed += 1;
    }
    if report != RecoveryReport::default() {
        tracing::info!(
            reattached = report.reattached,
            cleaned = report.cleaned,
            orphans_killed = report.orphans_killed,
            "recovered sandboxes of the previous run"
        );
    }
    Ok(report)
}
