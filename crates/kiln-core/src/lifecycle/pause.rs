//! `pause`: with memory (processes stop where they are) or keeping only
//! the filesystem (processes end; resume boots anew). The timeout stops
//! counting while paused.

use kiln_runtime::StateMode;

use super::transitions::{check, Op};
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::sandbox::{SandboxState, Team};

impl Core {
    /// Pauses a running sandbox. Returns once the runtime reports the state
    /// kept (durably, where the runtime's pause is durable) and the store
    /// says so.
    pub async fn pause(&self, team: &Team, id: &str, mode: StateMode) -> Result<(), CoreError> {
        let live = self.owned(team, id)?;
        let core = self.clone();
        self.detached(async move {
            let _guard = live.op.lock().await;
            core.pause_locked(&live, mode).await
        })
        .await
    }

    pub(crate) async fn pause_locked(&self, live: &Live, mode: StateMode) -> Result<(), CoreError> {
        let rec = live.record();
        check(Op::Pause, &rec.id, rec.state)?;
        let runtime = &self.backend_of(&rec)?.runtime;
        let caps = runtime.capabilities();
        let can = match mode {
            StateMode::Memory => caps.pause_memory,
            StateMode::Filesystem => caps.pause_filesystem,
        };
        if !can {
            return Err(CoreError::InvalidArgument(format!(
                "the {} runtime cannot pause keeping {}",
                rec.runtime,
                match mode {
                    StateMode::Memory => "memory",
                    StateMode::Filesystem => "only the filesystem",
                }
            )));
        }
        let paused = runtime.pause(&rec.id, mode).await?;
        let rec = {
            let mut r = lock(&live.record);
            r.state = SandboxState::Paused;
            r.pause_mode = Some(paused.mode);
            r.clone()
        };
        if paused.mode == StateMode::Filesystem {
            // Its processes are gone; a resume boots it and says where.
            *lock(&live.handle) = None;
        }
        // Connections to it end (the proxy's pooled ones too): a resumed
        // sandbox may be at another address, and its old one another's.
        live.end_incarnation();
        self.inner.store.update_sandbox(&rec).await?;
        tracing::info!(sandbox = %rec.id, mode = %paused.mode, durable = paused.durable, "sandbox paused");
        Ok(())
    }
}
