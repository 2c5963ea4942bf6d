//! `set_timeout`, `refresh`, and what happens when a deadline passes
//! (kill, or pause when the sandbox auto-pauses).

use chrono::{DateTime, Utc};
use kiln_runtime::StateMode;

use super::transitions::{check, Op};
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::sandbox::{SandboxState, Team};

impl Core {
    /// Sets the sandbox to end `secs` seconds from now (may shorten its life).
    /// `0` ends it now: its on-timeout action (kill, or pause) has run when
    /// this returns, as when a timer expires.
    pub async fn set_timeout(&self, team: &Team, id: &str, secs: i64) -> Result<(), CoreError> {
        let max = self.inner.config.max_timeout_secs;
        if !(0..=max).contains(&secs) {
            return Err(CoreError::InvalidArgument(format!(
                "timeout must be between 0 (end now) and {max} seconds, got {secs}"
            )));
        }
        if secs == 0 {
            return self.expire_now(team, id).await;
        }
        let live = self.owned(team, id)?;
        check(Op::SetTimeout, id, live.state())?;
        self.persist_end(&live, Self::deadline(secs)).await
    }

    async fn expire_now(&self, team: &Team, id: &str) -> Result<(), CoreError> {
        let live = self.owned(team, id)?;
        let (core, id) = (self.clone(), id.to_owned());
        self.detached(async move {
            let end = {
                let _guard = live.op.lock().await;
                check(Op::SetTimeout, &id, live.state())?;
                let end = Utc::now();
                core.persist_end(&live, end).await?;
                end
            };
            // A paused sandbox only records the deadline (it does not count
            // while paused); a running one expires now. Should its timer get
            // there first, this finds the deadline handled and does nothing.
            core.expire(&id, end).await;
            Ok(())
        })
        .await
    }

    /// Keeps the sandbox alive at least `secs` more seconds (default timeout
    /// when `None`); never shortens its life.
    pub async fn refresh(&self, team: &Team, id: &str, secs: Option<i64>) -> Result<(), CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        check(Op::Refresh, id, live.state())?;
        self.extend(&live, secs).await
    }

    pub(crate) async fn extend(&self, live: &Live, secs: i64) -> Result<(), CoreError> {
        let end = Self::deadline(secs);
        if end > lock(&live.record).end_at {
            self.persist_end(live, end).await?;
        }
        Ok(())
    }

    pub(crate) async fn persist_end(
        &self,
        live: &Live,
        end: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        live.set_end(end);
        self.inner.store.update_sandbox(&live.record()).await?;
        Ok(())
    }

    /// Called by a sandbox's timer when its deadline `end` passed.
    pub(crate) async fn expire(&self, id: &str, end: DateTime<Utc>) {
        let Some(live) = self.live_entry(id) else {
            return;
        };
        let _guard = live.op.lock().await;
        let rec = live.record();
        if check(Op::Expire, id, rec.state).is_err() || rec.end_at != end {
            return; // paused, killed, or the deadline moved meanwhile
        }
        if rec.team_id == super::warm::POOL_TEAM {
            return; // a warm sandbox waits for its user, not a deadline
        }
        if !rec.auto_pause {
            self.finish_kill(&live, Some("its timeout expired")).await;
            tracing::info!(sandbox = %id, "sandbox timed out and was killed");
            return;
        }
        // Keep memory if asked and the runtime can; else the filesystem.
        let caps = match self.backend_of(&rec) {
            Ok(b) => b.runtime.capabilities(),
            Err(_) => Default::default(),
        };
        let mode = if rec.auto_pause_memory && caps.pause_memory || !caps.pause_filesystem {
            StateMode::Memory
        } else {
            StateMode::Filesystem
        };
        let mut paused = self.pause_locked(&live, mode).await;
        if let Err(e) = &paused {
            if mode == StateMode::Memory && caps.pause_filesystem {
                // Its memory could not be kept (gVisor refuses to save the
                // TCP sockets a sandbox holds): its files can.
                tracing::warn!(sandbox = %id, error = %e, "auto-pause with memory failed; pausing with the filesystem");
                paused = self.pause_locked(&live, StateMode::Filesystem).await;
            }
        }
        if let Err(e) = paused {
            tracing::error!(sandbox = %id, error = %e, "auto-pause failed; killing the sandbox");
            self.finish_kill(&live, Some("its timeout expired and pausing it failed"))
                .await;
        }
        debug_assert!(matches!(
            live.state(),
            SandboxState::Paused | SandboxState::Killed
        ));
    }
}
