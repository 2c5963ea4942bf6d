//! [`Core`]: the typed operations kilnd's handlers call, and the state
//! machine they drive. One file per verb (`create.rs`, `kill.rs`,
//! `pause.rs`, `resume.rs`, `snapshot.rs`, `fork.rs`, `timeout.rs`,
//! `list.rs`, `metrics.rs`, `route.rs`); which verb is legal in which state is the one table in
//! `transitions.rs`.
//!
//! Concurrency: each live sandbox has its own async lock serialising the
//! operations on it (create, kill, pause, resume); the map of live sandboxes
//! is locked only to insert, remove or clone an entry, never across an await.
//! Concurrent creates therefore run in parallel up to the runtime.

mod create;
mod fork;
mod kill;
mod list;
mod metrics;
mod pause;
mod resume;
mod route;
mod snapshot;
mod timeout;
pub mod transitions;
mod validate;
mod warm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Duration, Utc};
use kiln_runtime::{SandboxHandle, SandboxSpec};
use tokio::sync::watch;

pub use crate::history::Metrics;
pub use create::FoundTemplate;
pub use fork::{DEFAULT_FORK_TIMEOUT, MAX_FORK_COUNT};
pub use metrics::MAX_METRICS_SANDBOXES;
pub use route::{Gone, Route};
pub use snapshot::SnapshotFilter;
pub use validate::{MAX_ENV_TOTAL_BYTES, MAX_ENV_VARS, MAX_ENV_VAR_BYTES};

use crate::agent::AgentInit;
use crate::error::CoreError;
use crate::history::MetricsHistory;
use crate::ids::is_sandbox_id;
use crate::keys;
use crate::runtimes::{Backend, Runtimes};
use crate::sandbox::{SandboxRecord, SandboxState, Team};
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
    /// How often every running sandbox's resource use is sampled.
    pub metrics_interval: std::time::Duration,
    /// Warm sandboxes kept ahead of time, per template and runtime.
    pub warm_pools: Vec<WarmPool>,
    /// Per-team default limits and the host's capacity (`limits.rs`).
    pub admission: crate::limits::AdmissionConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            envd_version: "0.6.4".into(),
            client_id: "kiln".into(),
            domain: None,
            metrics_interval: std::time::Duration::from_secs(5),
            warm_pools: Default::default(),
            admission: Default::default(),
        }
    }
}

/// One pool of warm sandboxes (see `warm.rs`): `size` sandboxes of
/// `template` (id or alias) on `runtime` (`None`: the one a create of the
/// template gets when it names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPool {
    pub template: String,
    pub runtime: Option<kiln_runtime::RuntimeKind>,
    pub size: usize,
}

/// A sandbox that exists (creating, running or paused).
pub(crate) struct Live {
    pub(crate) record: Mutex<SandboxRecord>,
    /// How to reach it while it runs.
    pub(crate) handle: Mutex<Option<SandboxHandle>>,
    /// The sandbox's deadline; its timer task watches it.
    pub(crate) end_tx: watch::Sender<DateTime<Utc>>,
    /// Serialises lifecycle operations on this sandbox.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// Resource-use samples (see `metrics.rs`).
    pub(crate) metrics: Mutex<MetricsHistory>,
    /// Set once the sandbox's running incarnation is gone (killed, or
    /// paused: a resumed sandbox may have another address and network
    /// stack, so nothing made to the old one may be reused); a resume
    /// starts a new one. See [`Gone`].
    gone_tx: Mutex<watch::Sender<bool>>,
}

impl Live {
    /// Ends the running incarnation's [`Gone`] and starts a new one (a
    /// pause: what was made to it, pooled connections among them, goes).
    pub(crate) fn end_incarnation(&self) {
        let old = std::mem::replace(&mut *lock(&self.gone_tx), watch::channel(false).0);
        old.send_replace(true);
    }

    pub(crate) fn new(record: SandboxRecord, handle: Option<SandboxHandle>) -> Arc<Self> {
        let (end_tx, _) = watch::channel(record.end_at);
        Arc::new(Self {
            record: Mutex::new(record),
            handle: Mutex::new(handle),
            end_tx,
            op: tokio::sync::Mutex::new(()),
            metrics: Mutex::new(MetricsHistory::default()),
            gone_tx: Mutex::new(watch::channel(false).0),
        })
    }

    pub(crate) fn record(&self) -> SandboxRecord {
        lock(&self.record).clone()
    }

    pub(crate) fn id(&self) -> String {
        lock(&self.record).id.clone()
    }

    pub(crate) fn state(&self) -> SandboxState {
        lock(&self.record).state
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
    pub(crate) runtimes: Runtimes,
    pub(crate) templates: Arc<TemplateCatalog>,
    pub(crate) live: RwLock<HashMap<String, Arc<Live>>>,
    /// Warm sandboxes per template id and runtime (see `warm.rs`).
    pub(crate) pools: Mutex<HashMap<warm::PoolKey, Vec<Arc<Live>>>>,
    /// Pools being refilled.
    pub(crate) refilling: Mutex<std::collections::HashSet<warm::PoolKey>>,
    /// Set by [`Core::stop_pools`]: no more warm sandboxes are made.
    pub(crate) pools_stopped: std::sync::atomic::AtomicBool,
    /// Admissions between their check and their sandbox's entry in `live`.
    pub(crate) pending: Arc<Mutex<crate::limits::Pending>>,
}

/// The sandbox service. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub(crate) inner: Arc<Inner>,
}

impl Core {
    pub fn new(
        config: CoreConfig,
        store: Arc<dyn Store>,
        runtimes: Runtimes,
        templates: Arc<TemplateCatalog>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                runtimes,
                templates,
                live: RwLock::new(HashMap::new()),
                pools: Mutex::new(HashMap::new()),
                refilling: Mutex::new(Default::default()),
                pools_stopped: Default::default(),
                pending: Default::default(),
            }),
        }
    }

    /// Re-attaches sandboxes left running or paused by a previous kilnd
    /// (cleaning up those that cannot be), then starts watching the
    /// runtimes' events. Call once, before serving.
    pub async fn start(&self) -> Result<recovery::RecoveryReport, CoreError> {
        // Subscribed first: a sandbox that ends while recovery runs is
        // ended after it (its event waits in the channel meanwhile).
        let events = timers::subscribe_runtime_events(self);
        let report = recovery::recover(self).await?;
        timers::watch_runtime_events(self, events);
        self.start_pools();
        timers::spawn_metrics_sampler(self);
        Ok(report)
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The runtimes this core drives.
    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.runtimes
    }

    /// The team of an API key.
    pub async fn authenticate(&self, api_key: Option<&str>) -> Result<Team, CoreError> {
        keys::authenticate(self.inner.store.as_ref(), api_key).await
    }

    pub fn templates(&self) -> Vec<TemplateInfo> {
        self.inner.templates.list()
    }

    pub(crate) fn live_entry(&self, id: &str) -> Option<Arc<Live>> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The live entry of `id` if it belongs to `team` (else not found: other
    /// teams' sandboxes do not exist for the caller).
    pub(crate) fn owned(&self, team: &Team, id: &str) -> Result<Arc<Live>, CoreError> {
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
        let id = live.id();
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

    /// The runtime (and agent client) of a sandbox's record.
    pub(crate) fn backend_of(&self, rec: &SandboxRecord) -> Result<&Backend, CoreError> {
        self.inner.runtimes.get(rec.runtime)
    }

    pub(crate) fn validate_timeout(&self, secs: i64) -> Result<i64, CoreError> {
        let max = self.inner.config.max_timeout_secs;
        if !(1..=max).contains(&secs) {
            return Err(CoreError::InvalidArgument(format!(
                "timeout must be between 1 and {max} seconds, got {secs}"
            )));
        }
        Ok(secs)
    }

    pub(crate) fn deadline(secs: i64) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(secs)
    }

    /// Runs a lifecycle operation to its end even if the caller stops
    /// waiting (an HTTP client that disconnects must not leave a sandbox
    /// half-created or half-killed).
    pub(crate) async fn detached<T: Send + 'static>(
        &self,
        op: impl std::future::Future<Output = Result<T, CoreError>> + Send + 'static,
    ) -> Result<T, CoreError> {
        tokio::spawn(op).await.unwrap_or_else(|e| {
            Err(CoreError::Runtime(kiln_runtime::RuntimeError::Other(
                format!("a lifecycle task failed: {e}"),
            )))
        })
    }

    /// What the runtime needs to start (or restart) the sandbox of `rec`.
    pub(crate) fn spec_for(&self, rec: &SandboxRecord) -> Result<SandboxSpec, CoreError> {
        let template = self
            .inner
            .templates
            .resolve(&rec.template_id)
            .ok_or_else(|| {
                CoreError::NotFound(format!(
                    "template {:?} of sandbox {} not found",
                    rec.template_id, rec.id
                ))
            })?;
        Ok(SandboxSpec {
            id: rec.id.clone(),
            template: template.template,
            vcpus: rec.vcpus,
            memory_mib: rec.memory_mib,
            disk_mib: rec.disk_mib,
            env: rec.env_vars.clone(),
            egress: rec.egress(),
        })
    }

    /// Tells a started (or resumed) sandbox's agent its token, env and time.
    pub(crate) async fn init_agent(
        &self,
        handle: &SandboxHandle,
        rec: &SandboxRecord,
    ) -> Result<(), CoreError> {
        self.init_agent_replacing(handle, rec, None).await
    }

    /// `init_agent` for an agent that holds another token now (`previous`).
    pub(crate) async fn init_agent_replacing(
        &self,
        handle: &SandboxHandle,
        rec: &SandboxRecord,
        previous: Option<String>,
    ) -> Result<(), CoreError> {
        let init = AgentInit {
            env_vars: rec.env_vars.clone(),
            access_token: rec.envd_access_token.clone(),
            previous_token: previous,
            timestamp: Utc::now(),
            default_user: "user".into(),
            default_workdir: "/home/user".into(),
        };
        self.backend_of(rec)?
            .agent
            .init(handle, &init)
            .await
            .map_err(CoreError::Agent)
    }

    /// Starts the template's long-lived process (if it has one) in a
    /// sandbox that just booted, and waits for its ready check.
    pub(crate) async fn run_start_command(
        &self,
        handle: &SandboxHandle,
        rec: &SandboxRecord,
    ) -> Result<(), CoreError> {
        let Some(template) = self.inner.templates.resolve(&rec.template_id) else {
            return Ok(());
        };
        if let Some(start) = &template.start {
            self.backend_of(rec)?
                .agent
                .start(handle, &rec.envd_access_token, start)
                .await
                .map_err(CoreError::StartCommand)?;
        }
        Ok(())
    }

    /// Kills the runtime's sandbox, forgets the live entry, records the kill
    /// (with why, when nobody asked for it). The caller holds `live.op`.
    pub(crate) async fn finish_kill(&self, live: &Live, reason: Option<&str>) {
        let rec = live.record();
        // Gone for everyone before the runtime starts tearing it down: a
        // request arriving meanwhile (the SDK probes `/health` when its
        // command's stream is cut) must hear "not found", not reach a
        // half-killed sandbox and be told its port is closed.
        self.remove_live(&rec.id);
        lock(&live.gone_tx).send_replace(true);
        match self.inner.runtimes.backend(rec.runtime) {
            Some(b) => {
                if let Err(e) = b.runtime.kill(&rec.id).await {
                    tracing::error!(sandbox = %rec.id, error = %e, "runtime failed to kill a sandbox");
                }
            }
            None => tracing::error!(
                sandbox = %rec.id,
                runtime = %rec.runtime,
                "the sandbox's runtime is not available: its host objects stay until it is"
            ),
        }
        let rec = {
            let mut rec = lock(&live.record);
            rec.state = SandboxState::Killed;
            rec.killed_at = Some(Utc::now());
            rec.pause_mode = None;
            rec.end_reason = reason.map(str::to_owned);
            rec.clone()
        };
        if let Err(e) = self.inner.store.update_sandbox(&rec).await {
            tracing::error!(sandbox = %rec.id, error = %e, "recording a kill failed");
        }
    }
}
