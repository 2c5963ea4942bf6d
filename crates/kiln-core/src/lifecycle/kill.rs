//! `kill`, and the end of a sandbox that ended on its own.

use super::transitions::{check, Op};
use super::{Core, Live};
use crate::error::CoreError;
use crate::sandbox::Team;

impl Core {
    /// Kills a sandbox now, running or paused (a paused one's saved state
    /// is deleted).
    pub async fn kill(&self, team: &Team, id: &str) -> Result<(), CoreError> {
        let live = self.owned(team, id)?;
        let (core, id) = (self.clone(), id.to_owned());
        self.detached(async move { core.kill_owned(&live, &id).await })
            .await
    }

    async fn kill_owned(&self, live: &Live, id: &str) -> Result<(), CoreError> {
        let _guard = live.op.lock().await;
        check(Op::Kill, id, live.state())?;
        self.finish_kill(live, None).await;
        tracing::info!(sandbox = %id, "sandbox killed");
        Ok(())
    }

    /// The runtime reports that the sandbox ended on its own.
    pub(crate) async fn exited(&self, id: &str, reason: &str) {
        let Some(live) = self.live_entry(id) else {
            return;
        };
        let _guard = live.op.lock().await;
        if check(Op::Exit, id, live.state()).is_ok() {
            tracing::info!(sandbox = %id, reason, "sandbox ended on its own");
            self.finish_kill(&live, Some(reason)).await;
        }
    }
}
