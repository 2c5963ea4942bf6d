//! Warm sandboxes of templates with a start command (the code interpreter):
//! created ahead of time, their start command ready and warmed up (the
//! default kernel started, its imports done), owned by no team. A create
//! of such a template takes one and hands it over — new tokens, the
//! caller's team, metadata, env and timeout — instead of booting and
//! starting a kernel, which is what makes `Sandbox.create()` → first
//! `run_code` fast. The pool refills in the background, one at a time.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::create::Source;
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::ids::random_hex;
use crate::sandbox::{CreateSandbox, SandboxRecord, SandboxState, Team};
use crate::templates::TemplateInfo;

/// The team warm sandboxes belong to until they are handed over. Not a
/// valid team name (`.`), so no API key can ever act for it.
pub(crate) const POOL_TEAM: &str = ".warm-pool";

/// Pause between refill attempts after a failure.
const RETRY: Duration = Duration::from_secs(5);
/// Longest a clean stop waits for warm sandboxes being made.
const STOP_WAIT: Duration = Duration::from_secs(30);

impl Core {
    /// How many warm sandboxes `template` keeps.
    fn pool_size(&self, template: &TemplateInfo) -> usize {
        let sizes = &self.inner.config.warm_pools;
        sizes
            .get(&template.template.id)
            .or_else(|| template.aliases.iter().find_map(|a| sizes.get(a)))
            .copied()
            .unwrap_or(0)
    }

    /// Adopts warm sandboxes a previous run left (they were re-attached as
    /// live sandboxes of the pool's team) and starts filling every pool.
    /// Called once, after recovery.
    pub(crate) fn start_pools(&self) {
        let live: Vec<Arc<Live>> = self
            .inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|l| lock(&l.record).team_id == POOL_TEAM)
            .cloned()
            .collect();
        for l in live {
            let rec = l.record();
            match self.inner.templates.resolve(&rec.template_id) {
                Some(t) if rec.state == SandboxState::Running && self.pool_size(&t) > 0 => {
                    // Not stopped yet: this runs once, at start.
                    let _ = self.pool_push(&t.template.id, l);
                }
                _ => {
                    // Paused, or of a template no longer pooled: not of use.
                    let core = self.clone();
                    tokio::spawn(async move {
                        let _g = l.op.lock().await;
                        core.finish_kill(&l, Some("a warm sandbox no pool wants"))
                            .await;
                    });
                }
            }
        }
        for t in self.inner.templates.list() {
            if self.pool_size(&t) > 0 {
                self.refill_pool(&t);
            }
        }
    }

    /// At a clean stop: makes no more warm sandboxes and kills those the
    /// pools hold. Nobody can be handed one while kilnd is down, and each
    /// holds a running kernel's memory; the next start makes them anew.
    /// (A kilnd that dies without stopping leaves them; its next start
    /// adopts them.)
    pub async fn stop_pools(&self) {
        self.inner
            .pools_stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let pooled: Vec<Arc<Live>> = lock(&self.inner.pools)
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for live in pooled {
            let _g = live.op.lock().await;
            self.finish_kill(
                &live,
                Some("kilnd stopped; warm sandboxes are made anew at its next start"),
            )
            .await;
        }
        // A sandbox being made warm right now would be cut off half made
        // when kilnd exits (made by the runtime, never pooled or killed):
        // wait for those refills, which see the flag and kill what they
        // made (a cold code-interpreter sandbox takes a few seconds).
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while !lock(&self.inner.refilling).is_empty() {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "warm sandboxes were still being made at stop; the next start adopts them"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pools_stopped(&self) -> bool {
        self.inner
            .pools_stopped
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pools `live`, or gives it back once the pools are stopped (checked
    /// under the pools' lock, which `stop_pools` drains after setting the
    /// flag: a sandbox is either drained or given back, never left).
    fn pool_push(&self, template_id: &str, live: Arc<Live>) -> Result<(), Arc<Live>> {
        let mut pools = lock(&self.inner.pools);
        if self.pools_stopped() {
            return Err(live);
        }
        pools.entry(template_id.to_owned()).or_default().push(live);
        Ok(())
    }

    fn pool_pop(&self, template_id: &str) -> Option<Arc<Live>> {
        lock(&self.inner.pools).get_mut(template_id)?.pop()
    }

    fn pool_len(&self, template_id: &str) -> usize {
        lock(&self.inner.pools).get(template_id).map_or(0, Vec::len)
    }

    /// Tops the template's pool up, in the background, one refill per
    /// template at a time.
    pub(crate) fn refill_pool(&self, template: &TemplateInfo) {
        let size = self.pool_size(template);
        let id = template.template.id.clone();
        if size == 0 || !lock(&self.inner.refilling).insert(id.clone()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let template = template.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let core = Core { inner };
                if core.pools_stopped() || core.pool_len(&id) >= size {
                    lock(&core.inner.refilling).remove(&id);
                    return;
                }
                if let Err(e) = core.make_warm(&template).await {
                    tracing::warn!(template = %template.template.id, error = %e, "making a warm sandbox failed");
                    let until = tokio::time::Instant::now() + RETRY;
                    while !core.pools_stopped() && tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    async fn make_warm(&self, template: &TemplateInfo) -> Result<(), CoreError> {
        let pool = Team {
            id: POOL_TEAM.into(),
        };
        let req = CreateSandbox {
            template: template.template.id.clone(),
            timeout_secs: Some(self.inner.config.max_timeout_secs),
            internet: true,
            auto_pause_memory: true,
            ..CreateSandbox::default()
        };
        let rec = self
            .create_from(&pool, req, Source::Template(template.clone()))
            .await?;
        let live = self
            .live_entry(&rec.id)
            .ok_or_else(|| CoreError::sandbox_not_found(&rec.id))?;
        let handle = lock(&live.handle).clone();
        if let (Some(warm), Some(handle)) = (
            template.start.as_ref().and_then(|s| s.warm.as_ref()),
            handle,
        ) {
            let agent = &self.backend_of(&rec)?.agent;
            if let Err(e) = agent.warm(&handle, &rec.envd_access_token, warm).await {
                // Still a working sandbox, only not warmed.
                tracing::warn!(sandbox = %rec.id, error = %e, "warming a sandbox up failed");
            }
        }
        if let Err(live) = self.pool_push(&template.template.id, live) {
            let _g = live.op.lock().await;
            self.finish_kill(&live, Some("kilnd stopped while it was being made warm"))
                .await;
            return Ok(());
        }
        tracing::debug!(sandbox = %rec.id, template = %template.template.id, "warm sandbox ready");
        Ok(())
    }

    /// Hands a warm sandbox of `template` to `team` as `req` asks, if the
    /// pool has one and the request fits what warm sandboxes are (the
    /// template's runtime and resources, no egress lists). `None`: create
    /// cold.
    pub(crate) async fn take_warm(
        &self,
        team: &Team,
        req: &CreateSandbox,
        template: &TemplateInfo,
        timeout: i64,
    ) -> Option<SandboxRecord> {
        if self.pool_size(template) == 0
            || !req.allow_out.is_empty()
            || !req.deny_out.is_empty()
            || req.runtime.is_some_and(|r| {
                r != template
                    .runtime
                    .unwrap_or(self.inner.runtimes.default_kind())
            })
        {
            return None;
        }
        loop {
            let live = self.pool_pop(&template.template.id)?;
            self.refill_pool(template);
            match self.hand_over(&live, team, req, timeout).await {
                Ok(rec) => return Some(rec),
                Err(e) => {
                    tracing::warn!(sandbox = %live.id(), error = %e, "a warm sandbox could not be handed over; trying the next");
                    let _g = live.op.lock().await;
                    self.finish_kill(&live, Some("its hand-over from the warm pool failed"))
                        .await;
                }
            }
        }
    }

    async fn hand_over(
        &self,
        live: &Arc<Live>,
        team: &Team,
        req: &CreateSandbox,
        timeout: i64,
    ) -> Result<SandboxRecord, CoreError> {
        let _guard = live.op.lock().await;
        let old = live.record();
        if old.state != SandboxState::Running || old.team_id != POOL_TEAM {
            return Err(CoreError::Conflict(format!(
                "warm sandbox {} is {}",
                old.id, old.state
            )));
        }
        let handle = lock(&live.handle)
            .clone()
            .ok_or_else(|| CoreError::sandbox_not_found(&old.id))?;
        let now = Utc::now();
        let rec = SandboxRecord {
            team_id: team.id.clone(),
            alias: (req.template != old.template_id).then(|| req.template.clone()),
            started_at: now,
            end_at: Self::deadline(timeout),
            metadata: req.metadata.clone(),
            env_vars: req.env_vars.clone(),
            envd_access_token: random_hex(32),
            traffic_access_token: req.private_traffic.then(|| random_hex(32)),
            auto_pause: req.auto_pause,
            auto_pause_memory: req.auto_pause_memory,
            auto_resume: req.auto_resume,
            internet: req.internet,
            ..old.clone()
        };
        let backend = self.backend_of(&rec)?;
        self.init_agent_replacing(&handle, &rec, Some(old.envd_access_token.clone()))
            .await?;
        if !rec.internet {
            backend.runtime.set_egress(&rec.id, &rec.egress()).await?;
        }
        self.inner.store.reassign_sandbox(&rec).await?;
        *lock(&live.record) = rec.clone();
        live.end_tx.send_replace(rec.end_at);
        tracing::info!(sandbox = %rec.id, template = %rec.template_id, team = %team.id, "warm sandbox handed over");
        Ok(rec)
    }
}
