//! How the proxy reaches a running sandbox.

use std::net::IpAddr;

use tokio::sync::watch;

use super::{lock, Core};
use crate::error::CoreError;
use crate::sandbox::{SandboxState, Team};

/// How the proxy reaches a running sandbox.
#[derive(Debug, Clone)]
pub struct Route {
    pub ip: IpAddr,
    pub agent_port: u16,
    /// Needed for ports other than the agent's; `None` if traffic is public.
    pub traffic_access_token: Option<String>,
    /// The sandbox's template (what serves which port: the code
    /// interpreter's limits apply to its port in its template only).
    pub template_id: String,
    /// Fires when the sandbox is gone (killed, timed out, died) or paused.
    pub gone: Gone,
}

/// Resolves once a sandbox is gone. A killed sandbox's network namespace
/// goes with it, so a connection into it never sees a FIN or a reset: the
/// proxy waits on this to end the requests and streams it holds open.
#[derive(Debug, Clone)]
pub struct Gone(pub(crate) watch::Receiver<bool>);

impl Gone {
    /// Returns when the sandbox is gone (at once if it already is).
    pub async fn wait(mut self) {
        // An error means the live entry itself was dropped: gone too.
        let _ = self.0.wait_for(|gone| *gone).await;
    }

    pub fn is_gone(&self) -> bool {
        *self.0.borrow()
    }
}

impl Core {
    /// How the proxy reaches sandbox `id`; not found unless it is running.
    pub fn route(&self, id: &str) -> Option<Route> {
        let live = self.live_entry(id)?;
        let rec = lock(&live.record);
        if rec.state != SandboxState::Running {
            return None;
        }
        let handle = lock(&live.handle).clone()?;
        let gone = Gone(lock(&live.gone_tx).subscribe());
        Some(Route {
            ip: handle.ip,
            agent_port: handle.agent_port,
            traffic_access_token: rec.traffic_access_token.clone(),
            template_id: rec.template_id.clone(),
            gone,
        })
    }

    /// Like [`Core::route`], but a paused sandbox created with autoResume is
    /// resumed first (E2B's auto-resume: traffic wakes it), with the
    /// default timeout. `None` if it does not run afterwards.
    pub async fn route_or_resume(&self, id: &str) -> Option<Route> {
        if let Some(r) = self.route(id) {
            return Some(r);
        }
        let live = self.live_entry(id)?;
        let rec = live.record();
        if rec.state != SandboxState::Paused || !rec.auto_resume {
            return None;
        }
        let team = Team { id: rec.team_id };
        match self
            .resume(&team, id, None, None, kiln_runtime::ResumeMode::Restore)
            .await
        {
            // A concurrent request may have resumed it first.
            Ok(_) | Err(CoreError::Conflict(_)) => {}
            Err(e) => {
                tracing::error!(sandbox = %id, error = %e, "auto-resume failed");
                return None;
            }
        }
        tracing::info!(sandbox = %id, "sandbox auto-resumed by a request");
        self.route(id)
    }

    /// The running sandbox whose access token satisfies `matches` (used to
    /// route signed file URLs, which carry no sandbox id). Tokens stay in the
    /// core; the caller only learns the id.
    pub fn find_running_by_access_token(&self, matches: impl Fn(&str) -> bool) -> Option<String> {
        let live = self.inner.live.read().unwrap_or_else(|e| e.into_inner());
        live.values().find_map(|l| {
            let rec = lock(&l.record);
            (rec.state == SandboxState::Running && matches(&rec.envd_access_token))
                .then(|| rec.id.clone())
        })
    }
}
