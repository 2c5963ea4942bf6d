//! Warm sandboxes: created ahead of time, owned by no team, per template
//! and runtime (`CoreConfig::warm_pools`). A template with a start command
//! (the code interpreter) gets its sandboxes with the command ready and
//! warmed up (the default kernel started, its imports done); a runtime
//! whose start is slow (gVisor's runsc) gets booted sandboxes of the base
//! template. A create that a pool can serve takes one and hands it over —
//! new tokens, the caller's team, metadata, env and timeout — instead of
//! booting (and starting a kernel), which is what makes `Sandbox.create()`
//! → first command or `run_code` fast. Each pool refills in the
//! background, one at a time.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use kiln_runtime::RuntimeKind;

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

/// A pool: the template's id and the runtime its sandboxes run on.
pub(crate) type PoolKey = (String, RuntimeKind);

impl Core {
    /// The runtime a create of `template` gets when it names none.
    fn runtime_for(&self, template: &TemplateInfo) -> RuntimeKind {
        template
            .runtime
            .unwrap_or(self.inner.runtimes.default_kind())
    }

    /// How many warm sandboxes of `template` on `runtime` to keep.
    fn pool_size(&self, template: &TemplateInfo, runtime: RuntimeKind) -> usize {
        self.inner
            .config
            .warm_pools
            .iter()
            .filter(|p| {
                (p.template == template.template.id || template.aliases.contains(&p.template))
                    && p.runtime.unwrap_or(self.runtime_for(template)) == runtime
            })
            .map(|p| p.size)
            .sum()
    }

    /// Every pool with a size, as its template and runtime (a runtime this
    /// kilnd does not serve has none).
    fn configured_pools(&self) -> Vec<(TemplateInfo, RuntimeKind)> {
        let mut out: Vec<(TemplateInfo, RuntimeKind)> = Vec::new();
        for p in &self.inner.config.warm_pools {
            let Some(t) = self.inner.templates.resolve(&p.template) else {
                tracing::warn!(template = %p.template, "a warm pool's template is not in the catalog");
                continue;
            };
            let runtime = p.runtime.unwrap_or(self.runtime_for(&t));
            if p.size == 0 || self.inner.runtimes.backend(runtime).is_none() {
                continue;
            }
            if !out
                .iter()
                .any(|(o, r)| o.template.id == t.template.id && *r == runtime)
            {
                out.push((t, runtime));
            }
        }
        out
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
                Some(t)
                    if rec.state == SandboxState::Running
                        && self.pool_size(&t, rec.runtime) > 0 =>
                {
                    // Not stopped yet: this runs once, at start.
                    let _ = self.pool_push(&(t.template.id.clone(), rec.runtime), l);
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
        for (t, runtime) in self.configured_pools() {
            self.refill_pool(&t, runtime);
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
        // All at once: a gVisor sandbox's kill waits on runsc.
        futures_util::future::join_all(pooled.iter().map(|live| async move {
            let _g = live.op.lock().await;
            self.finish_kill(
                live,
                Some("kilnd stopped; warm sandboxes are made anew at its next start"),
            )
            .await;
        }))
        .await;
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
    fn pool_push(&self, key: &PoolKey, live: Arc<Live>) -> Result<(), Arc<Live>> {
        let mut pools = lock(&self.inner.pools);
        if self.pools_stopped() {
            return Err(live);
        }
        pools.entry(key.clone()).or_default().push(live);
        Ok(())
    }

    fn pool_pop(&self, key: &PoolKey) -> Option<Arc<Live>> {
        lock(&self.inner.pools).get_mut(key)?.pop()
    }

    fn pool_len(&self, key: &PoolKey) -> usize {
        lock(&self.inner.pools).get(key).map_or(0, Vec::len)
    }

    /// Tops the pool of the template on `runtime` up, in the background,
    /// one refill per pool at a time.
    pub(crate) fn refill_pool(&self, template: &TemplateInfo, runtime: RuntimeKind) {
        let size = self.pool_size(template, runtime);
        let id: PoolKey = (template.template.id.clone(), runtime);
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
                if let Err(e) = core.make_warm(&template, runtime).await {
                    tracing::warn!(template = %template.template.id, %runtime, error = %e, "making a warm sandbox failed");
                    let until = tokio::time::Instant::now() + RETRY;
                    while !core.pools_stopped() && tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    async fn make_warm(
        &self,
        template: &TemplateInfo,
        runtime: RuntimeKind,
    ) -> Result<(), CoreError> {
        let pool = Team {
            id: POOL_TEAM.into(),
        };
        let req = CreateSandbox {
            template: template.template.id.clone(),
            timeout_secs: Some(self.inner.config.max_timeout_secs),
            internet: true,
            auto_pause_memory: true,
            runtime: Some(runtime),
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
        if let Err(live) = self.pool_push(&(template.template.id.clone(), runtime), live) {
            let _g = live.op.lock().await;
            self.finish_kill(&live, Some("kilnd stopped while it was being made warm"))
                .await;
            return Ok(());
        }
        tracing::debug!(sandbox = %rec.id, template = %template.template.id, %runtime, "warm sandbox ready");
        Ok(())
    }

    /// Hands a warm sandbox of `template` to `team` as `req` asks, if the
    /// pool of the runtime the create gets has one and the request fits
    /// what warm sandboxes are (the template's resources, no egress
    /// lists). `None`: create cold.
    pub(crate) async fn take_warm(
        &self,
        team: &Team,
        req: &CreateSandbox,
        template: &TemplateInfo,
        timeout: i64,
    ) -> Option<SandboxRecord> {
        let runtime = req.runtime.unwrap_or(self.runtime_for(template));
        if self.pool_size(template, runtime) == 0
            || !req.allow_out.is_empty()
            || !req.deny_out.is_empty()
        {
            return None;
        }
        let key: PoolKey = (template.template.id.clone(), runtime);
        loop {
            let live = self.pool_pop(&key)?;
            self.refill_pool(template, runtime);
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
        // Its samples while pooled are nobody's: its metrics start now.
        *lock(&live.metrics) = Default::default();
        live.end_tx.send_replace(rec.end_at);
        tracing::info!(sandbox = %rec.id, template = %rec.template_id, team = %team.id, "warm sandbox handed over");
        Ok(rec)
    }
}
