//! `fork`: `count` new sandboxes from one snapshot of a running sandbox,
//! which goes on as it was. With memory where the runtime keeps it (the
//! copies' processes run on from where the source's were), else from its
//! filesystem (the copies boot). Each copy succeeds or fails on its own.

use futures_util::future::join_all;

use super::create::Source;
use super::transitions::{check, Op};
use super::Core;
use crate::error::CoreError;
use crate::sandbox::{CreateSandbox, SandboxRecord, Team};

/// The most copies one fork makes (E2B's limit).
pub const MAX_FORK_COUNT: u32 = 100;
/// A copy's timeout when the request gives none, in seconds (E2B's).
pub const DEFAULT_FORK_TIMEOUT: i64 = 15;

impl Core {
    pub async fn fork(
        &self,
        team: &Team,
        id: &str,
        count: Option<u32>,
        timeout_secs: Option<i64>,
    ) -> Result<Vec<Result<SandboxRecord, CoreError>>, CoreError> {
        let count = count.unwrap_or(1);
        if !(1..=MAX_FORK_COUNT).contains(&count) {
            return Err(CoreError::InvalidArgument(format!(
                "count must be between 1 and {MAX_FORK_COUNT}, got {count}"
            )));
        }
        let timeout = self.validate_timeout(timeout_secs.unwrap_or(DEFAULT_FORK_TIMEOUT))?;
        let live = self.owned(team, id)?;
        let (core, team) = (self.clone(), team.clone());
        self.detached(async move {
            let (source, snap) = {
                let _guard = live.op.lock().await;
                let rec = live.record();
                check(Op::Fork, &rec.id, rec.state)?;
                let caps = core.backend_of(&rec)?.runtime.capabilities();
                if !caps.fork {
                    return Err(CoreError::InvalidArgument(format!(
                        "the {} runtime cannot fork sandboxes",
                        rec.runtime
                    )));
                }
                let snap = core
                    .snapshot_locked(&team, &live, None, None, true)
                    .await?;
                (rec, snap)
            };
            let template = core.inner.templates.resolve(&snap.template_id).ok_or_else(|| {
                CoreError::NotFound(format!("template {:?} is gone", snap.template_id))
            });
            let results = match template {
                Ok(template) => {
                    let from = Source::Snapshot(Box::new(snap.clone()), template);
                    let req = CreateSandbox {
                        template: source.template_id.clone(),
                        timeout_secs: Some(timeout),
                        auto_pause: source.auto_pause,
                        auto_pause_memory: source.auto_pause_memory,
                        auto_resume: source.auto_resume,
                        internet: source.internet,
                        private_traffic: source.traffic_access_token.is_some(),
                        metadata: source.metadata.clone(),
                        env_vars: source.env_vars.clone(),
                        allow_out: source.allow_out.clone(),
                        deny_out: source.deny_out.clone(),
                        runtime: Some(source.runtime),
                    };
                    join_all(
                        (0..count).map(|_| core.create_from(&team, req.clone(), from.clone())),
                    )
                    .await
                }
                Err(e) => vec![Err(e)],
            };
            // The copies hold what they need of it; the snapshot itself goes.
            if let Err(e) = core.forget_snapshot(&snap).await {
                tracing::error!(snapshot = %snap.id, error = %e, "removing a fork's snapshot failed");
            }
            let ok = results.iter().filter(|r| r.is_ok()).count();
            tracing::info!(sandbox = %source.id, count, ok, "sandbox forked");
            Ok(results)
        })
        .await
    }
}
