//! `create`: a new sandbox from a template, on the runtime the request,
//! the template or the server names.

use chrono::{Duration, Utc};

use kiln_runtime::StateMode;

use super::transitions::{check, leads_to, Op};
use super::validate::{validate_env, validate_metadata};
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::ids::{new_sandbox_id, random_hex};
use crate::limits::{self, Amounts, Reservation};
use crate::sandbox::{CreateSandbox, SandboxRecord, SandboxState, Team};
use crate::snapshots::{strip_tag, SnapshotRecord};
use crate::store::TemplateUsage;
use crate::templates::TemplateInfo;
use crate::timers;

/// A template found by [`Core::find_template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundTemplate {
    /// One of the catalog's, which every team may use.
    Catalog(Box<TemplateInfo>),
    /// One of the caller's snapshots (E2B's snapshots are templates).
    Snapshot(Box<SnapshotRecord>),
}

impl FoundTemplate {
    /// Its id as the SDKs show it (a snapshot's is `<id>:default`).
    pub fn id(&self) -> String {
        match self {
            FoundTemplate::Catalog(t) => t.template.id.clone(),
            FoundTemplate::Snapshot(s) => s.tagged_id(),
        }
    }

    /// Whether every team may use it.
    pub fn public(&self) -> bool {
        matches!(self, FoundTemplate::Catalog(_))
    }
}

/// What a new sandbox starts from.
#[derive(Clone)]
pub(crate) enum Source {
    Template(TemplateInfo),
    /// A snapshot, and the template it was taken on top of.
    Snapshot(Box<SnapshotRecord>, TemplateInfo),
}

impl Source {
    fn template(&self) -> &TemplateInfo {
        match self {
            Source::Template(t) | Source::Snapshot(_, t) => t,
        }
    }
}

impl Core {
    /// Admits `want` more for `team` (a warm sandbox's create: for no team)
    /// against its limits and the host's, or says which limit it passes
    /// (see `limits.rs`).
    pub(crate) async fn admit(&self, team: &Team, want: Amounts) -> Result<Reservation, CoreError> {
        let config = &self.inner.config.admission;
        let limits = if team.id == super::warm::POOL_TEAM {
            None
        } else {
            let own = self
                .inner
                .store
                .team_limits(&team.id)
                .await?
                .unwrap_or_default();
            Some(own.over(&config.team_default))
        };
        let held: Vec<(String, Amounts)> = self
            .inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| {
                let r = lock(&l.record);
                (r.team_id.clone(), Amounts::held_by(&r))
            })
            .collect();
        limits::admit(
            &self.inner.pending,
            config,
            limits.map(|l| (team.id.as_str(), l)),
            want,
            held.into_iter(),
        )
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

    /// What `name` (an id or alias, maybe with E2B's `:default` tag) names
    /// for the team: a template of the catalog (public) or one of the
    /// team's snapshots (its own). Other teams' snapshots do not exist for
    /// the caller.
    pub async fn find_template(
        &self,
        team: &Team,
        name: &str,
    ) -> Result<Option<FoundTemplate>, CoreError> {
        let Some(untagged) = strip_tag(name) else {
            return Ok(None);
        };
        if let Some(t) = self.inner.templates.resolve(untagged) {
            return Ok(Some(FoundTemplate::Catalog(Box::new(t))));
        }
        Ok(self
            .find_snapshot(team, name)
            .await?
            .map(|s| FoundTemplate::Snapshot(Box::new(s))))
    }

    /// How often the team's sandboxes used each template, and when last.
    pub async fn template_usage(&self, team: &Team) -> Result<Vec<TemplateUsage>, CoreError> {
        Ok(self.inner.store.template_usage(&team.id).await?)
    }

    /// The template, or else the team's snapshot, that `name` names.
    pub(crate) async fn resolve_source(
        &self,
        team: &Team,
        name: &str,
    ) -> Result<Source, CoreError> {
        if let Some(t) = self.inner.templates.resolve(name) {
            return Ok(Source::Template(t));
        }
        let snapshot = self
            .find_snapshot(team, name)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("template {name:?} not found")))?;
        let template = self
            .inner
            .templates
            .resolve(&snapshot.template_id)
            .ok_or_else(|| {
                CoreError::NotFound(format!(
                    "template {:?} of snapshot {} is gone",
                    snapshot.template_id, snapshot.id
                ))
            })?;
        Ok(Source::Snapshot(Box::new(snapshot), template))
    }

    async fn create_inner(
        &self,
        team: &Team,
        req: CreateSandbox,
    ) -> Result<SandboxRecord, CoreError> {
        validate_metadata(&req.metadata)?;
        validate_env(&req.env_vars)?;
        let source = self.resolve_source(team, &req.template).await?;
        self.create_from(team, req, source).await
    }

    /// Creates a sandbox from a resolved source (a template, or a snapshot:
    /// a fork's copies come here).
    pub(crate) async fn create_from(
        &self,
        team: &Team,
        req: CreateSandbox,
        source: Source,
    ) -> Result<SandboxRecord, CoreError> {
        let timeout = self.validate_timeout(
            req.timeout_secs
                .unwrap_or(self.inner.config.default_timeout_secs),
        )?;
        let template = source.template().clone();
        let runtime = match &source {
            Source::Snapshot(snap, _) => {
                if let Some(asked) = req.runtime.filter(|r| *r != snap.runtime) {
                    return Err(CoreError::InvalidArgument(format!(
                        "snapshot {} was taken on the {} runtime; it cannot start on {asked}",
                        snap.id, snap.runtime
                    )));
                }
                snap.runtime
            }
            Source::Template(t) => req
                .runtime
                .or(t.runtime)
                .unwrap_or(self.inner.runtimes.default_kind()),
        };
        let (vcpus, memory_mib, disk_mib) = match &source {
            Source::Snapshot(s, _) => (s.vcpus, s.memory_mib, s.disk_mib),
            Source::Template(t) => (t.vcpus, t.memory_mib, t.disk_mib),
        };
        // Held until the sandbox is in the live map (or its create failed).
        let reservation = self
            .admit(team, Amounts::sized(vcpus, memory_mib, disk_mib))
            .await?;
        if let Source::Template(t) = &source {
            if team.id != super::warm::POOL_TEAM {
                if let Some(rec) = self.take_warm(team, &req, t, timeout).await {
                    return Ok(rec);
                }
            }
        }
        let backend = self.inner.runtimes.get(runtime)?;
        let caps = backend.runtime.capabilities();
        if (!req.allow_out.is_empty() || !req.deny_out.is_empty()) && !caps.egress_lists {
            return Err(CoreError::InvalidArgument(format!(
                "the {runtime} runtime does not enforce network allowOut/denyOut lists yet; \
                 use allow_internet_access to turn egress on or off"
            )));
        }

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
            vcpus,
            memory_mib,
            disk_mib,
            metadata: req.metadata,
            env_vars: req.env_vars,
            envd_access_token: random_hex(32),
            traffic_access_token: req.private_traffic.then(|| random_hex(32)),
            auto_pause: req.auto_pause,
            auto_pause_memory: req.auto_pause_memory,
            auto_resume: req.auto_resume,
            internet: req.internet,
            allow_out: req.allow_out,
            deny_out: req.deny_out,
            envd_version: self.inner.config.envd_version.clone(),
            runtime,
            pause_mode: None,
            end_reason: None,
        };
        self.inner.store.insert_sandbox(&record).await?;
        let live = Live::new(record.clone(), None);
        let guard = live.op.lock().await;
        self.insert_live(live.clone());
        drop(reservation);

        let started = async {
            let spec = self.spec_for(&record)?;
            let (handle, booted, held_token) = match &source {
                Source::Template(_) => (backend.runtime.create(&spec).await?, true, None),
                Source::Snapshot(snap, _) => (
                    backend.runtime.restore(&spec, &snap.build_id).await?,
                    snap.mode == StateMode::Filesystem,
                    snap.agent_token.clone(),
                ),
            };
            *lock(&live.handle) = Some(handle.clone());
            self.init_agent_replacing(&handle, &record, held_token)
                .await?;
            if booted {
                self.run_start_command(&handle, &record).await?;
            }
            Ok::<_, CoreError>(())
        }
        .await;
        if let Err(e) = started {
            tracing::error!(sandbox = %record.id, error = %e, "creating a sandbox failed");
            self.finish_kill(&live, Some("its creation failed")).await;
            return Err(e);
        }

        check(Op::Started, &record.id, live.state())?;
        debug_assert!(leads_to(
            Op::Started,
            SandboxState::Creating,
            SandboxState::Running
        ));
        let record = {
            let mut rec = lock(&live.record);
            rec.state = SandboxState::Running;
            // The timeout counts from when the sandbox is usable.
            rec.end_at = Self::deadline(timeout);
            rec.clone()
        };
        live.end_tx.send_replace(record.end_at);
        if let Err(e) = self.inner.store.update_sandbox(&record).await {
            self.finish_kill(&live, Some("recording its creation failed"))
                .await;
            return Err(e.into());
        }
        drop(guard);
        timers::spawn_timer(self, &live);
        tracing::info!(sandbox = %record.id, template = %record.template_id, runtime = %runtime, team = %team.id, "sandbox created");
        Ok(record)
    }
}
