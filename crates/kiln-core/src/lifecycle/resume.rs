//! `resume` and `connect`: a paused sandbox runs again (from memory, or
//! booted anew on its kept filesystem); connecting to a running one only
//! extends it.

use kiln_runtime::{ResumeMode, StateMode};

use super::transitions::{check, Op};
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::limits::Amounts;
use crate::sandbox::{SandboxRecord, SandboxState, Team};
use std::sync::Arc;

impl Core {
    /// Connects to a sandbox: extends a running one, resumes a paused one.
    /// Returns the record and whether it was resumed.
    pub async fn connect(
        &self,
        team: &Team,
        id: &str,
        secs: Option<i64>,
        mode: ResumeMode,
    ) -> Result<(SandboxRecord, bool), CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        let guard = live.op.lock().await;
        let state = live.state();
        check(Op::Connect, id, state)?;
        if state == SandboxState::Paused {
            drop(guard);
            let rec = self.resume(team, id, Some(secs), None, mode).await?;
            return Ok((rec, true));
        }
        self.extend(&live, secs).await?;
        Ok((live.record(), false))
    }

    /// Resumes a paused sandbox, re-initialises its agent and restarts its timeout.
    pub async fn resume(
        &self,
        team: &Team,
        id: &str,
        secs: Option<i64>,
        auto_pause: Option<bool>,
        mode: ResumeMode,
    ) -> Result<SandboxRecord, CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        let core = self.clone();
        self.detached(async move { core.resume_owned(live, secs, auto_pause, mode).await })
            .await
    }

    async fn resume_owned(
        &self,
        live: Arc<Live>,
        secs: i64,
        auto_pause: Option<bool>,
        mode: ResumeMode,
    ) -> Result<SandboxRecord, CoreError> {
        let _guard = live.op.lock().await;
        let rec = live.record();
        check(Op::Resume, &rec.id, rec.state)?;
        // Running again takes its vCPUs, memory and a concurrent slot back
        // (a paused sandbox holds its disk, and its memory if kept).
        let (full, held) = (Amounts::of(&rec), Amounts::held_by(&rec));
        let want = Amounts {
            sandboxes: full.sandboxes.saturating_sub(held.sandboxes),
            vcpus: full.vcpus.saturating_sub(held.vcpus),
            memory_mib: full.memory_mib.saturating_sub(held.memory_mib),
            disk_mib: full.disk_mib.saturating_sub(held.disk_mib),
        };
        let team = Team {
            id: rec.team_id.clone(),
        };
        let _reservation = self.admit(&team, want).await?;
        let spec = self.spec_for(&rec)?;
        let handle = self.backend_of(&rec)?.runtime.resume(&spec, mode).await?;
        *lock(&live.handle) = Some(handle.clone());
        let booted = rec.pause_mode == Some(StateMode::Filesystem) || mode == ResumeMode::Reboot;
        let ready = async {
            self.init_agent(&handle, &rec).await?;
            if booted {
                // A cold boot: the template's start command runs again.
                self.run_start_command(&handle, &rec).await?;
            }
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(e) = ready {
            if booted {
                // Running, but not usable: pause it again so that its
                // filesystem is kept and the caller can try once more.
                tracing::error!(sandbox = %rec.id, error = %e, "a resumed sandbox did not start; pausing it again");
                let runtime = &self.backend_of(&rec)?.runtime;
                if let Err(e2) = runtime.pause(&rec.id, StateMode::Filesystem).await {
                    tracing::error!(sandbox = %rec.id, error = %e2, "pausing it again failed; killing it");
                    self.finish_kill(&live, Some("it did not start again after a resume"))
                        .await;
                }
                *lock(&live.handle) = None;
                return Err(e);
            }
            tracing::error!(sandbox = %rec.id, error = %e, "agent did not re-initialise after resume");
        }
        {
            let mut r = lock(&live.record);
            r.state = SandboxState::Running;
            r.pause_mode = None;
            if let Some(p) = auto_pause {
                r.auto_pause = p;
            }
        }
        self.persist_end(&live, Self::deadline(secs)).await?;
        tracing::info!(sandbox = %rec.id, booted, "sandbox resumed");
        Ok(live.record())
    }
}
