//! [`Core`]: the typed operations kilnd's handlers call, and the state
//! machine they drive (see [`SandboxState`]).
//!
//! Concurrency: each live sandbox has its own async lock serialising the
//! operations on it (create, kill, pause, resume); the map of live sandboxes
//! is locked only to insert, remove or clone an entry, never across an await.
//! Concurrent creates therefore run in parallel up to the runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use kiln_runtime::{Runtime, SandboxHandle, SandboxSpec, SandboxStats};
use tokio::sync::watch;

use crate::agent::{AgentClient, AgentInit};
use crate::error::CoreError;
use crate::ids::{is_sandbox_id, new_sandbox_id, random_hex};
use crate::keys;
use crate::sandbox::{CreateSandbox, ListFilter, Page, SandboxRecord, SandboxState, Team};
use crate::store::Store;
use crate::templates::{TemplateCatalog, TemplateInfo};
use crate::{recovery, timers};

/// Settings of the core (filled from kilnd's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Timeout of a sandbox created without one, in seconds.
    pub default_timeout_secs: i64,
    /// Largest timeout a caller may ask for, in seconds.
    pub max_timeout_secs: i64,
    /// The envd version the agent implements (reported to the SDKs).
    pub envd_version: String,
    /// `clientID` reported for every sandbox (the node's name).
    pub client_id: String,
    /// Domain reported to the SDKs for `<port>-<id>.<domain>` routing.
    pub domain: Option<String>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            envd_version: "0.5.7".into(),
            client_id: "kiln".into(),
            domain: None,
        }
    }
}

/// How the proxy reaches a running sandbox.
#[derive(Debug, Clone)]
pub struct Route {
    pub ip: IpAddr,
    pub agent_port: u16,
    /// Needed for ports other than the agent's; `None` if traffic is public.
    pub traffic_access_token: Option<String>,
    /// Fires when the sandbox is gone (killed, timed out, died).
    pub gone: Gone,
}

/// Resolves once a sandbox is gone. A killed sandbox's network namespace
/// goes with it, so a connection into it never sees a FIN or a reset: the
/// proxy waits on this to end the requests and streams it holds open.
#[derive(Debug, Clone)]
pub struct Gone(watch::Receiver<bool>);

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

/// One resource-use sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub at: DateTime<Utc>,
    pub stats: SandboxStats,
    /// Percent of the sandbox's CPUs used since the previous sample.
    pub cpu_used_pct: f64,
}

/// A sandbox that exists (creating, running or paused).
pub(crate) struct Live {
    pub(crate) record: Mutex<SandboxRecord>,
    pub(crate) handle: Mutex<Option<SandboxHandle>>,
    /// The sandbox's deadline; its timer task watches it.
    pub(crate) end_tx: watch::Sender<DateTime<Utc>>,
    /// Serialises lifecycle operations on this sandbox.
    pub(crate) op: tokio::sync::Mutex<()>,
    last_cpu: Mutex<Option<(u64, Instant)>>,
    /// Set once the sandbox is gone; see [`Gone`].
    gone_tx: watch::Sender<bool>,
}

impl Live {
    pub(crate) fn new(record: SandboxRecord, handle: Option<SandboxHandle>) -> Arc<Self> {
        let (end_tx, _) = watch::channel(record.end_at);
        Arc::new(Self {
            record: Mutex::new(record),
            handle: Mutex::new(handle),
            end_tx,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
            gone_tx: watch::channel(false).0,
        })
    }

    pub(crate) fn record(&self) -> SandboxRecord {
        lock(&self.record).clone()
    }

    pub(crate) fn set_end(&self, end: DateTime<Utc>) {
        lock(&self.record).end_at = end;
        self.end_tx.send_replace(end);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Inner {
    pub(crate) config: CoreConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) agent: Arc<dyn AgentClient>,
    pub(crate) templates: Arc<TemplateCatalog>,
    pub(crate) live: RwLock<HashMap<String, Arc<Live>>>,
}

/// The sandbox service. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub(crate) inner: Arc<Inner>,
}

const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY: usize = 256;
const MAX_METADATA_VALUE: usize = 1024;

impl Core {
    pub fn new(
        config: CoreConfig,
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        agent: Arc<dyn AgentClient>,
        templates: Arc<TemplateCatalog>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                runtime,
                agent,
                templates,
                live: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Re-attaches sandboxes left running by a previous kilnd (cleaning up
    /// those that cannot be), then starts watching the runtime's events.
    /// Call once, before serving.
    pub async fn start(&self) -> Result<recovery::RecoveryReport, CoreError> {
        let report = recovery::recover(self).await?;
        timers::watch_runtime_events(self);
        Ok(report)
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn runtime_name(&self) -> &'static str {
        self.inner.runtime.name()
    }

    /// The team of an API key.
    pub fn authenticate(&self, api_key: Option<&str>) -> Result<Team, CoreError> {
        keys::authenticate(self.inner.store.as_ref(), api_key)
    }

    pub fn templates(&self) -> Vec<TemplateInfo> {
        self.inner.templates.list()
    }

    fn live_entry(&self, id: &str) -> Option<Arc<Live>> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The live entry of `id` if it belongs to `team` (else not found: other
    /// teams' sandboxes do not exist for the caller).
    fn owned(&self, team: &Team, id: &str) -> Result<Arc<Live>, CoreError> {
        if !is_sandbox_id(id) {
            return Err(CoreError::sandbox_not_found(id));
        }
        let live = self
            .live_entry(id)
            .ok_or_else(|| CoreError::sandbox_not_found(id))?;
        let rec = lock(&live.record);
        if rec.team_id != team.id || !rec.state.is_live() {
            return Err(CoreError::sandbox_not_found(id));
        }
        drop(rec);
        Ok(live)
    }

    pub(crate) fn insert_live(&self, live: Arc<Live>) {
        let id = lock(&live.record).id.clone();
        self.inner
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, live);
    }

    fn remove_live(&self, id: &str) {
        self.inner
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn validate_timeout(&self, secs: i64) -> Result<i64, CoreError> {
        let max = self.inner.config.max_timeout_secs;
        if !(1..=max).contains(&secs) {
            return Err(CoreError::InvalidArgument(format!(
                "timeout must be between 1 and {max} seconds, got {secs}"
            )));
        }
        Ok(secs)
    }

    fn deadline(secs: i64) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(secs)
    }

    /// Runs a lifecycle operation to its end even if the caller stops
    /// waiting (an HTTP client that disconnects must not leave a sandbox
    /// half-created or half-killed).
    async fn detached<T: Send + 'static>(
        &self,
        op: impl std::future::Future<Output = Result<T, CoreError>> + Send + 'static,
    ) -> Result<T, CoreError> {
        tokio::spawn(op).await.unwrap_or_else(|e| {
            Err(CoreError::Runtime(kiln_runtime::RuntimeError::Other(
                format!("a lifecycle task failed: {e}"),
            )))
        })
    }

    /// Creates and starts a sandbox. On any failure nothing is left behind:
    /// the runtime's sandbox is killed and the record marked killed.
    pub async fn create(
        &self,
        team: &Team,
        req: CreateSandbox,
    ) -> Result<SandboxRecord, CoreError> {
        let (core, team) = (self.clone(), team.clone());
        self.detached(async move { core.create_inner(&team, req).await })
            .await
    }

    async fn create_inner(
        &self,
        team: &Team,
        req: CreateSandbox,
    ) -> Result<SandboxRecord, CoreError> {
        let timeout = self.validate_timeout(
            req.timeout_secs
                .unwrap_or(self.inner.config.default_timeout_secs),
        )?;
        validate_metadata(&req.metadata)?;
        validate_env(&req.env_vars)?;
        let template =
            self.inner.templates.resolve(&req.template).ok_or_else(|| {
                CoreError::NotFound(format!("template {:?} not found", req.template))
            })?;

        let now = Utc::now();
        let record = SandboxRecord {
            id: new_sandbox_id(),
            team_id: team.id.clone(),
            template_id: template.template.id.clone(),
            alias: (req.template != template.template.id).then(|| req.template.clone()),
            state: SandboxState::Creating,
            started_at: now,
            end_at: now + Duration::seconds(timeout),
            killed_at: None,
            vcpus: template.vcpus,
            memory_mib: template.memory_mib,
            disk_mib: template.disk_mib,
            metadata: req.metadata,
            env_vars: req.env_vars,
            envd_access_token: random_hex(32),
            traffic_access_token: req.private_traffic.then(|| random_hex(32)),
            auto_pause: req.auto_pause,
            internet: req.internet,
            envd_version: self.inner.config.envd_version.clone(),
        };
        self.inner.store.insert_sandbox(&record)?;
        let live = Live::new(record.clone(), None);
        let guard = live.op.lock().await;
        self.insert_live(live.clone());

        let spec = SandboxSpec {
            id: record.id.clone(),
            template: template.template.clone(),
            vcpus: record.vcpus,
            memory_mib: record.memory_mib,
            disk_mib: record.disk_mib,
            env: record.env_vars.clone(),
            internet: record.internet,
        };
        let started = async {
            let handle = self.inner.runtime.create(&spec).await?;
            *lock(&live.handle) = Some(handle.clone());
            self.init_agent(&handle, &record).await?;
            if let Some(start) = &template.start {
                self.inner
                    .agent
                    .start(&handle, &record.envd_access_token, start)
                    .await
                    .map_err(CoreError::StartCommand)?;
            }
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(e) = started {
            tracing::error!(sandbox = %record.id, error = %e, "creating a sandbox failed");
            self.finish_kill(&live).await;
            return Err(e);
        }

        let record = {
            let mut rec = lock(&live.record);
            rec.state = SandboxState::Running;
            // The timeout counts from when the sandbox is usable.
            rec.end_at = Self::deadline(timeout);
            rec.clone()
        };
        live.end_tx.send_replace(record.end_at);
        if let Err(e) = self.inner.store.update_sandbox(&record) {
            self.finish_kill(&live).await;
            return Err(e.into());
        }
        drop(guard);
        timers::spawn_timer(self, &live);
        tracing::info!(sandbox = %record.id, template = %record.template_id, team = %team.id, "sandbox created");
        Ok(record)
    }

    async fn init_agent(
        &self,
        handle: &SandboxHandle,
        rec: &SandboxRecord,
    ) -> Result<(), CoreError> {
        let init = AgentInit {
            env_vars: rec.env_vars.clone(),
            access_token: rec.envd_access_token.clone(),
            timestamp: Utc::now(),
            default_user: "user".into(),
            default_workdir: "/home/user".into(),
        };
        self.inner
            .agent
            .init(handle, &init)
            .await
            .map_err(CoreError::Agent)
    }

    /// Kills the runtime's sandbox, forgets the live entry, records the kill.
    /// The caller holds `live.op`.
    async fn finish_kill(&self, live: &Live) {
        let id = lock(&live.record).id.clone();
        if let Err(e) = self.inner.runtime.kill(&id).await {
            tracing::error!(sandbox = %id, error = %e, "runtime failed to kill a sandbox");
        }
        self.remove_live(&id);
        live.gone_tx.send_replace(true);
        let rec = {
            let mut rec = lock(&live.record);
            rec.state = SandboxState::Killed;
            rec.killed_at = Some(Utc::now());
            rec.clone()
        };
        if let Err(e) = self.inner.store.update_sandbox(&rec) {
            tracing::error!(sandbox = %id, error = %e, "recording a kill failed");
        }
    }

    /// The sandbox as its team sees it.
    pub fn get(&self, team: &Team, id: &str) -> Result<SandboxRecord, CoreError> {
        Ok(self.owned(team, id)?.record())
    }

    /// The team's sandboxes (running and paused unless `filter.states` says
    /// otherwise), oldest first, one page at a time.
    pub fn list(&self, team: &Team, filter: &ListFilter) -> Result<Page<SandboxRecord>, CoreError> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(CoreError::InvalidArgument(format!(
                "limit must be between 1 and 1000, got {limit}"
            )));
        }
        let states = if filter.states.is_empty() {
            vec![SandboxState::Running, SandboxState::Paused]
        } else {
            filter.states.clone()
        };
        if states.iter().any(|s| !s.is_live()) {
            return Err(CoreError::InvalidArgument(
                "state must be running or paused".into(),
            ));
        }
        let after = filter.next_token.as_deref().map(decode_token).transpose()?;
        let mut all: Vec<SandboxRecord> = self
            .inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.record())
            .filter(|r| r.team_id == team.id && states.contains(&r.state))
            .filter(|r| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| r.metadata.get(k) == Some(v))
            })
            .collect();
        let key = |r: &SandboxRecord| (r.started_at.timestamp_micros(), r.id.clone());
        all.sort_by_key(key);
        if filter.newest_first {
            all.reverse();
        }
        let start = match after {
            Some(after) if filter.newest_first => all.partition_point(|r| key(r) >= after),
            Some(after) => all.partition_point(|r| key(r) <= after),
            None => 0,
        };
        let rest = &all[start..];
        let items: Vec<SandboxRecord> = rest.iter().take(limit).cloned().collect();
        let next_token = (rest.len() > limit)
            .then(|| items.last().map(encode_token))
            .flatten();
        Ok(Page { items, next_token })
    }

    /// Kills a sandbox now.
    pub async fn kill(&self, team: &Team, id: &str) -> Result<(), CoreError> {
        let live = self.owned(team, id)?;
        let (core, id) = (self.clone(), id.to_owned());
        self.detached(async move { core.kill_owned(&live, &id).await })
            .await
    }

    async fn kill_owned(&self, live: &Live, id: &str) -> Result<(), CoreError> {
        let _guard = live.op.lock().await;
        if !lock(&live.record).state.is_live() {
            return Err(CoreError::sandbox_not_found(id));
        }
        self.finish_kill(live).await;
        tracing::info!(sandbox = %id, "sandbox killed");
        Ok(())
    }

    /// Sets the sandbox to end `secs` seconds from now (may shorten its life).
    pub fn set_timeout(&self, team: &Team, id: &str, secs: i64) -> Result<(), CoreError> {
        let secs = self.validate_timeout(secs)?;
        let live = self.owned(team, id)?;
        self.persist_end(&live, Self::deadline(secs))
    }

    /// Keeps the sandbox alive at least `secs` more seconds (default timeout
    /// when `None`); never shortens its life.
    pub fn refresh(&self, team: &Team, id: &str, secs: Option<i64>) -> Result<(), CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        self.extend(&live, secs)
    }

    fn extend(&self, live: &Live, secs: i64) -> Result<(), CoreError> {
        let end = Self::deadline(secs);
        if end > lock(&live.record).end_at {
            self.persist_end(live, end)?;
        }
        Ok(())
    }

    fn persist_end(&self, live: &Live, end: DateTime<Utc>) -> Result<(), CoreError> {
        live.set_end(end);
        self.inner.store.update_sandbox(&live.record())?;
        Ok(())
    }

    /// Connects to a sandbox: extends a running one, resumes a paused one.
    /// Returns the record and whether it was resumed.
    pub async fn connect(
        &self,
        team: &Team,
        id: &str,
        secs: Option<i64>,
    ) -> Result<(SandboxRecord, bool), CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        let _guard = live.op.lock().await;
        let state = lock(&live.record).state;
        match state {
            SandboxState::Running => {}
            SandboxState::Paused => {
                drop(_guard);
                let rec = self.resume(team, id, Some(secs), None).await?;
                return Ok((rec, true));
            }
            _ => return Err(CoreError::sandbox_not_found(id)),
        }
        self.extend(&live, secs)?;
        Ok((live.record(), false))
    }

    /// Freezes every process of the sandbox; its timeout stops counting.
    pub async fn pause(&self, team: &Team, id: &str) -> Result<(), CoreError> {
        let live = self.owned(team, id)?;
        let core = self.clone();
        self.detached(async move {
            let _guard = live.op.lock().await;
            core.pause_locked(&live).await
        })
        .await
    }

    pub(crate) async fn pause_locked(&self, live: &Live) -> Result<(), CoreError> {
        let id = lock(&live.record).id.clone();
        let state = lock(&live.record).state;
        match state {
            SandboxState::Running => {}
            SandboxState::Paused => {
                return Err(CoreError::Conflict(format!(
                    "sandbox {id} is already paused"
                )))
            }
            _ => return Err(CoreError::sandbox_not_found(&id)),
        }
        self.inner.runtime.freeze(&id).await?;
        lock(&live.record).state = SandboxState::Paused;
        self.inner.store.update_sandbox(&live.record())?;
        tracing::info!(sandbox = %id, "sandbox paused");
        Ok(())
    }

    /// Thaws a paused sandbox, re-initialises its agent and restarts its timeout.
    pub async fn resume(
        &self,
        team: &Team,
        id: &str,
        secs: Option<i64>,
        auto_pause: Option<bool>,
    ) -> Result<SandboxRecord, CoreError> {
        let secs = self.validate_timeout(secs.unwrap_or(self.inner.config.default_timeout_secs))?;
        let live = self.owned(team, id)?;
        let (core, id) = (self.clone(), id.to_owned());
        self.detached(async move { core.resume_owned(live, &id, secs, auto_pause).await })
            .await
    }

    async fn resume_owned(
        &self,
        live: Arc<Live>,
        id: &str,
        secs: i64,
        auto_pause: Option<bool>,
    ) -> Result<SandboxRecord, CoreError> {
        let _guard = live.op.lock().await;
        let state = lock(&live.record).state;
        match state {
            SandboxState::Paused => {}
            SandboxState::Running => {
                return Err(CoreError::Conflict(format!(
                    "sandbox {id} is already running"
                )))
            }
            _ => return Err(CoreError::sandbox_not_found(id)),
        }
        self.inner.runtime.thaw(id).await?;
        let handle = lock(&live.handle).clone();
        if let Some(handle) = handle {
            if let Err(e) = self.init_agent(&handle, &live.record()).await {
                tracing::error!(sandbox = %id, error = %e, "agent did not re-initialise after resume");
            }
        }
        {
            let mut rec = lock(&live.record);
            rec.state = SandboxState::Running;
            if let Some(p) = auto_pause {
                rec.auto_pause = p;
            }
        }
        self.persist_end(&live, Self::deadline(secs))?;
        tracing::info!(sandbox = %id, "sandbox resumed");
        Ok(live.record())
    }

    /// A resource-use sample, from the runtime's cgroup counters.
    pub async fn metrics(&self, team: &Team, id: &str) -> Result<Metrics, CoreError> {
        let live = self.owned(team, id)?;
        let stats = self.inner.runtime.stats(id).await?;
        let now = Instant::now();
        let started = live.record().started_at;
        let (prev_usec, elapsed) = match lock(&live.last_cpu).replace((stats.cpu_usage_usec, now)) {
            Some((usec, at)) => (usec, now.duration_since(at)),
            None => (0, (Utc::now() - started).to_std().unwrap_or_default()),
        };
        let wall_usec = elapsed.as_micros() as f64 * f64::from(stats.cpu_count.max(1));
        let cpu_used_pct = if wall_usec > 0.0 {
            (stats.cpu_usage_usec.saturating_sub(prev_usec) as f64 / wall_usec * 100.0)
                .clamp(0.0, 100.0)
        } else {
            0.0
        };
        Ok(Metrics {
            at: Utc::now(),
            stats,
            cpu_used_pct,
        })
    }

    /// How the proxy reaches sandbox `id`; not found unless it is running.
    pub fn route(&self, id: &str) -> Option<Route> {
        let live = self.live_entry(id)?;
        let rec = lock(&live.record);
        if rec.state != SandboxState::Running {
            return None;
        }
        let handle = lock(&live.handle).clone()?;
        Some(Route {
            ip: handle.ip,
            agent_port: handle.agent_port,
            traffic_access_token: rec.traffic_access_token.clone(),
            gone: Gone(live.gone_tx.subscribe()),
        })
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

    /// Called by a sandbox's timer when its deadline `end` passed.
    pub(crate) async fn expire(&self, id: &str, end: DateTime<Utc>) {
        let Some(live) = self.live_entry(id) else {
            return;
        };
        let _guard = live.op.lock().await;
        let (state, current_end, auto_pause) = {
            let r = lock(&live.record);
            (r.state, r.end_at, r.auto_pause)
        };
        if state != SandboxState::Running || current_end != end {
            return; // paused, killed, or the deadline moved meanwhile
        }
        if auto_pause {
            if let Err(e) = self.pause_locked(&live).await {
                tracing::error!(sandbox = %id, error = %e, "auto-pause failed; killing the sandbox");
                self.finish_kill(&live).await;
            }
        } else {
            self.finish_kill(&live).await;
            tracing::info!(sandbox = %id, "sandbox timed out and was killed");
        }
    }

    /// The runtime reports that the sandbox ended on its own.
    pub(crate) async fn exited(&self, id: &str) {
        let Some(live) = self.live_entry(id) else {
            return;
        };
        let _guard = live.op.lock().await;
        if lock(&live.record).state.is_live() {
            tracing::info!(sandbox = %id, "sandbox exited on its own");
            self.finish_kill(&live).await;
        }
    }
}

fn validate_metadata(m: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(CoreError::InvalidArgument(format!(
            "metadata may have at most {MAX_METADATA_ENTRIES} entries"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE {
            return Err(CoreError::InvalidArgument(format!(
                "metadata keys must be 1-{MAX_METADATA_KEY} bytes and values at most \
                 {MAX_METADATA_VALUE} bytes (key {k:?})"
            )));
        }
    }
    Ok(())
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "invalid environment variable name {k:?}: it must be non-empty, without '=' or NUL"
            )));
        }
        if v.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "the value of environment variable {k:?} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// Page tokens are `<started_at micros>.<id>`: opaque to callers, stable
/// across kilnd restarts.
fn encode_token(r: &SandboxRecord) -> String {
    format!("{}.{}", r.started_at.timestamp_micros(), r.id)
}

fn decode_token(token: &str) -> Result<(i64, String), CoreError> {
    let bad = || CoreError::InvalidArgument(format!("invalid next token {token:?}"));
    let (t, id) = token.split_once('.').ok_or_else(bad)?;
    let t = t.parse().map_err(|_| bad())?;
    if !is_sandbox_id(id) {
        return Err(bad());
    }
    Ok((t, id.to_owned()))
}
