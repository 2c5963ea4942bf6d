//! The core against the fake runtime: lifecycle, isolation, listing, timers,
//! recovery after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kiln_core::store::{SqliteStore, Store};
use kiln_core::templates::{TemplateCatalog, TemplateInfo};
use kiln_core::{Core, CoreConfig, Runtimes};
use kiln_core::{CoreError, CreateSandbox, ListFilter, NoAgent, Order, SandboxState, Team};
use kiln_runtime::fake::{FakeRuntime, FakeState};
use kiln_runtime::{
    Capabilities, EgressPolicy, Found, Paused, ResumeMode, Runtime, RuntimeError, RuntimeEvent,
    RuntimeKind, SandboxHandle, SandboxSpec, SandboxStats, StateMode, TemplateRef,
};

fn catalog() -> Arc<TemplateCatalog> {
    let c = TemplateCatalog::new();
    c.add(TemplateInfo {
        template: TemplateRef {
            id: "base-v1".into(),
            rootfs: "/nonexistent".into(),
        },
        aliases: vec!["base".into()],
        vcpus: 2,
        memory_mib: 1024,
        disk_mib: 4096,
        created_at: Utc::now(),
        runtime: None,
        start: None,
    });
    Arc::new(c)
}

fn core_with(store: Arc<dyn Store>, runtime: Arc<dyn Runtime>) -> Core {
    Core::new(
        CoreConfig {
            max_timeout_secs: 3600,
            ..CoreConfig::default()
        },
        store,
        Runtimes::single(runtime, Arc::new(NoAgent)),
        catalog(),
    )
}

fn setup() -> (Core, Arc<FakeRuntime>, Arc<SqliteStore>) {
    let rt = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    (core_with(store.clone(), rt.clone()), rt, store)
}

/// Polls `cond` for up to 10 s (timers fire late on a loaded machine).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn team(id: &str) -> Team {
    Team { id: id.into() }
}

fn req() -> CreateSandbox {
    CreateSandbox {
        template: "base".into(),
        internet: true,
        ..CreateSandbox::default()
    }
}

#[tokio::test]
async fn create_get_kill() {
    let (core, rt, store) = setup();
    let t = team("a");
    let rec = core.create(&t, req()).await.unwrap();
    assert_eq!(rec.state, SandboxState::Running);
    assert_eq!(rec.template_id, "base-v1");
    assert_eq!(rec.alias.as_deref(), Some("base"));
    assert_eq!(rt.state(&rec.id), Some(FakeState::Running));
    let secs = (rec.end_at - rec.started_at).num_seconds();
    assert!((299..=301).contains(&secs), "default timeout, got {secs}");
    assert_eq!(core.get(&t, &rec.id).unwrap().id, rec.id);
    let route = core.route(&rec.id).unwrap();
    assert!(!route.gone.is_gone());
    let waiting = tokio::spawn(route.gone.clone().wait());

    core.kill(&t, &rec.id).await.unwrap();
    // Whoever holds a route learns the sandbox is gone (the proxy ends
    // its streams on this).
    assert!(route.gone.is_gone());
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the gone signal fired")
        .unwrap();
    assert_eq!(rt.count(), 0);
    assert!(matches!(core.get(&t, &rec.id), Err(CoreError::NotFound(_))));
    assert!(matches!(
        core.kill(&t, &rec.id).await,
        Err(CoreError::NotFound(_))
    ));
    assert!(core.route(&rec.id).is_none());
    let stored = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(stored.state, SandboxState::Killed);
    assert!(stored.killed_at.is_some());
}

#[tokio::test]
async fn bad_requests_leave_nothing_behind() {
    let (core, rt, store) = setup();
    let t = team("a");
    let unknown = core
        .create(
            &t,
            CreateSandbox {
                template: "nope".into(),
                ..req()
            },
        )
        .await;
    assert!(matches!(unknown, Err(CoreError::NotFound(m)) if m.contains("nope")));
    for timeout in [-1, 0, 3601] {
        let r = core
            .create(
                &t,
                CreateSandbox {
                    timeout_secs: Some(timeout),
                    ..req()
                },
            )
            .await;
        assert!(matches!(r, Err(CoreError::InvalidArgument(_))), "{timeout}");
    }
    let bad_env = core
        .create(
            &t,
            CreateSandbox {
                env_vars: BTreeMap::from([("A=B".into(), "x".into())]),
                ..req()
            },
        )
        .await;
    assert!(matches!(bad_env, Err(CoreError::InvalidArgument(_))));
    let nul_value = core
        .create(
            &t,
            CreateSandbox {
                env_vars: BTreeMap::from([("A".into(), "x\0y".into())]),
                ..req()
            },
        )
        .await;
    match nul_value {
        Err(CoreError::InvalidArgument(m)) => assert!(m.contains("value"), "{m}"),
        other => panic!("a NUL in a value was accepted: {other:?}"),
    }

    rt.fail_next_create("no space left");
    assert!(matches!(
        core.create(&t, req()).await,
        Err(CoreError::Runtime(_))
    ));

    assert_eq!(rt.count(), 0);
    let live = store
        .list_sandboxes(None, &[SandboxState::Creating, SandboxState::Running])
        .await
        .unwrap();
    assert!(live.is_empty(), "{live:?}");
    assert!(core
        .list(&t, &ListFilter::default())
        .unwrap()
        .page
        .items
        .is_empty());
}

#[tokio::test]
async fn teams_do_not_see_each_other() {
    let (core, rt, _) = setup();
    let rec = core.create(&team("a"), req()).await.unwrap();
    let b = team("b");
    assert!(matches!(core.get(&b, &rec.id), Err(CoreError::NotFound(_))));
    assert!(matches!(
        core.kill(&b, &rec.id).await,
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        core.set_timeout(&b, &rec.id, 60).await,
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        core.connect(&b, &rec.id, None, ResumeMode::Restore).await,
        Err(CoreError::NotFound(_))
    ));
    assert!(core
        .list(&b, &ListFilter::default())
        .unwrap()
        .page
        .items
        .is_empty());
    assert_eq!(rt.count(), 1);
}

#[tokio::test]
async fn list_filters_by_metadata_and_state_and_pages() {
    let (core, _, _) = setup();
    let t = team("a");
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = core
            .create(
                &t,
                CreateSandbox {
                    metadata: BTreeMap::from([
                        ("n".into(), i.to_string()),
                        ("even".into(), (i % 2 == 0).to_string()),
                    ]),
                    ..req()
                },
            )
            .await
            .unwrap();
        ids.push(r.id);
    }
    core.create(&team("other"), req()).await.unwrap();

    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: Some(2),
        order: Order::OldestFirst,
        ..ListFilter::default()
    };
    loop {
        let page = core.list(&t, &filter).unwrap().page;
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next_token {
            Some(tok) => filter.next_token = Some(tok),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every sandbox once, in creation order");

    let mut newest = Vec::new();
    let mut filter = ListFilter {
        limit: Some(2),
        ..ListFilter::default()
    };
    loop {
        let page = core.list(&t, &filter).unwrap().page;
        newest.extend(page.items.into_iter().map(|r| r.id));
        match page.next_token {
            Some(tok) => filter.next_token = Some(tok),
            None => break,
        }
    }
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(newest, reversed, "newest first, every sandbox once");

    let even = core
        .list(
            &t,
            &ListFilter {
                metadata: BTreeMap::from([("even".into(), "true".into())]),
                ..ListFilter::default()
            },
        )
        .unwrap()
        .page;
    assert_eq!(even.items.len(), 3);

    core.pause(&t, &ids[1], StateMode::Memory).await.unwrap();
    let paused = core
        .list(
            &t,
            &ListFilter {
                states: vec![SandboxState::Paused],
                ..ListFilter::default()
            },
        )
        .unwrap()
        .page;
    assert_eq!(paused.items.len(), 1);
    assert_eq!(paused.items[0].id, ids[1]);

    let bad = core.list(
        &t,
        &ListFilter {
            next_token: Some("garbage".into()),
            ..ListFilter::default()
        },
    );
    assert!(matches!(bad, Err(CoreError::InvalidArgument(_))));
}

#[tokio::test]
async fn timeout_kills_and_set_timeout_extends() {
    let (core, rt, store) = setup();
    let t = team("a");
    let short = core
        .create(
            &t,
            CreateSandbox {
                timeout_secs: Some(1),
                ..req()
            },
        )
        .await
        .unwrap();
    let extended = core
        .create(
            &t,
            CreateSandbox {
                timeout_secs: Some(1),
                ..req()
            },
        )
        .await
        .unwrap();
    core.set_timeout(&t, &extended.id, 30).await.unwrap();
    eventually("the expired sandbox is killed", || {
        rt.state(&short.id).is_none()
    })
    .await;
    assert_eq!(
        store.get_sandbox(&short.id).await.unwrap().unwrap().state,
        SandboxState::Killed
    );
    assert_eq!(rt.state(&extended.id), Some(FakeState::Running));
    let end = core.get(&t, &extended.id).unwrap().end_at;
    assert!((end - Utc::now()).num_seconds() >= 27);

    // Shortening works too.
    core.set_timeout(&t, &extended.id, 1).await.unwrap();
    eventually("the shortened sandbox is killed", || {
        rt.state(&extended.id).is_none()
    })
    .await;
}

#[tokio::test]
async fn auto_pause_pauses_on_timeout_and_connect_resumes() {
    let (core, rt, _) = setup();
    let t = team("a");
    let rec = core
        .create(
            &t,
            CreateSandbox {
                timeout_secs: Some(1),
                auto_pause: true,
                auto_pause_memory: true,
                ..req()
            },
        )
        .await
        .unwrap();
    eventually("the sandbox is paused", || {
        rt.state(&rec.id) == Some(FakeState::Paused(StateMode::Memory))
    })
    .await;
    assert_eq!(core.get(&t, &rec.id).unwrap().state, SandboxState::Paused);
    assert!(
        core.route(&rec.id).is_none(),
        "a paused sandbox is not routable"
    );

    let (resumed, was_paused) = core
        .connect(&t, &rec.id, Some(60), ResumeMode::Restore)
        .await
        .unwrap();
    assert!(was_paused);
    assert_eq!(resumed.state, SandboxState::Running);
    assert_eq!(rt.state(&rec.id), Some(FakeState::Running));
    let (_, was_paused) = core
        .connect(&t, &rec.id, Some(60), ResumeMode::Restore)
        .await
        .unwrap();
    assert!(!was_paused);
    assert!(matches!(
        core.resume(&t, &rec.id, None, None, ResumeMode::Restore)
            .await,
        Err(CoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn crashed_sandbox_is_marked_killed() {
    let (core, rt, store) = setup();
    let t = team("a");
    core.start().await.unwrap();
    let rec = core.create(&t, req()).await.unwrap();
    rt.crash(&rec.id, true);
    eventually("the crashed sandbox is gone", || {
        core.get(&t, &rec.id).is_err()
    })
    .await;
    assert_eq!(
        store.get_sandbox(&rec.id).await.unwrap().unwrap().state,
        SandboxState::Killed
    );
}

#[tokio::test]
async fn restart_reattaches_running_and_cleans_up_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let t = team("a");
    let (kept, lost) = {
        let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
        let core = core_with(store, rt.clone());
        core.start().await.unwrap();
        let kept = core.create(&t, req()).await.unwrap();
        let lost = core.create(&t, req()).await.unwrap();
        (kept, lost)
        // kilnd "crashes": the core is dropped, the runtime keeps its sandboxes.
    };
    rt.kill(&lost.id).await.unwrap(); // died while kilnd was down
    let orphan = SandboxSpec {
        id: "orphan0000000000000".into(),
        template: TemplateRef {
            id: "base-v1".into(),
            rootfs: "/nonexistent".into(),
        },
        vcpus: 1,
        memory_mib: 64,
        disk_mib: 64,
        env: BTreeMap::new(),
        egress: EgressPolicy::internet(false),
    };
    rt.create(&orphan).await.unwrap();

    let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
    let core = core_with(store.clone(), rt.clone());
    let report = core.start().await.unwrap();
    assert_eq!(report.reattached, 1);
    assert_eq!(report.cleaned, 1);
    assert_eq!(report.orphans_killed, 1);
    assert_eq!(core.get(&t, &kept.id).unwrap().end_at, kept.end_at_ms());
    assert!(core.route(&kept.id).is_some());
    assert!(core.get(&t, &lost.id).is_err());
    assert_eq!(
        store.get_sandbox(&lost.id).await.unwrap().unwrap().state,
        SandboxState::Killed
    );
    assert_eq!(rt.state(&orphan.id), None);
    // The re-attached sandbox's timer works.
    core.set_timeout(&t, &kept.id, 1).await.unwrap();
    eventually("the re-attached sandbox times out", || rt.count() == 0).await;
}

trait EndAtMs {
    fn end_at_ms(&self) -> chrono::DateTime<Utc>;
}

impl EndAtMs for kiln_core::SandboxRecord {
    /// The store keeps millisecond precision.
    fn end_at_ms(&self) -> chrono::DateTime<Utc> {
        chrono::DateTime::from_timestamp_millis(self.end_at.timestamp_millis()).unwrap()
    }
}

/// Something a test runs before each create of a [`Hooked`] runtime.
#[async_trait::async_trait]
trait BeforeCreate: Send + Sync + 'static {
    async fn before_create(&self);
}

/// The fake runtime, with a hook before each create.
struct Hooked<H> {
    inner: FakeRuntime,
    hook: H,
}

#[async_trait::async_trait]
impl<H: BeforeCreate> Runtime for Hooked<H> {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.hook.before_create().await;
        self.inner.create(spec).await
    }
    async fn pause(&self, id: &str, mode: StateMode) -> Result<Paused, RuntimeError> {
        self.inner.pause(id, mode).await
    }
    async fn resume(
        &self,
        spec: &SandboxSpec,
        mode: ResumeMode,
    ) -> Result<SandboxHandle, RuntimeError> {
        self.inner.resume(spec, mode).await
    }
    async fn set_egress(&self, id: &str, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        self.inner.set_egress(id, policy).await
    }
    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.kill(id).await
    }
    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        self.inner.stats(id).await
    }
    async fn list(&self) -> Result<Vec<Found>, RuntimeError> {
        self.inner.list().await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.inner.subscribe()
    }
}

/// Creates only finish once `n` of them are in flight at once: if the core
/// serialised creates, they would never finish.
#[async_trait::async_trait]
impl BeforeCreate for tokio::sync::Barrier {
    async fn before_create(&self) {
        self.wait().await;
    }
}

/// Creates wait until the test opens the gate.
#[async_trait::async_trait]
impl BeforeCreate for tokio::sync::Semaphore {
    async fn before_create(&self) {
        let _permit = self.acquire().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_run_in_parallel() {
    const N: usize = 8;
    let rt = Arc::new(Hooked {
        inner: FakeRuntime::new(),
        hook: tokio::sync::Barrier::new(N),
    });
    let core = core_with(Arc::new(SqliteStore::in_memory().unwrap()), rt.clone());
    let t = team("a");
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (core, t) = (core.clone(), t.clone());
            tokio::spawn(async move { core.create(&t, req()).await })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(10), async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap().unwrap());
        }
        out
    })
    .await
    .expect("creates serialised: the barrier was never reached by all of them");
    assert_eq!(all.len(), N);
    assert_eq!(rt.inner.count(), N);
}

#[tokio::test]
async fn a_caller_that_goes_away_does_not_leave_a_half_created_sandbox() {
    let rt = Arc::new(Hooked {
        inner: FakeRuntime::new(),
        hook: tokio::sync::Semaphore::new(0),
    });
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let core = core_with(store.clone(), rt.clone());
    let t = team("a");
    let caller = {
        let (core, t) = (core.clone(), t.clone());
        tokio::spawn(async move { core.create(&t, req()).await })
    };
    eventually_async(|| async {
        !store
            .list_sandboxes(None, &[SandboxState::Creating])
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    caller.abort(); // the HTTP client disconnected
    rt.hook.add_permits(1);
    eventually("the create finished anyway", || {
        core.list(&t, &ListFilter::default())
            .unwrap()
            .page
            .items
            .len()
            == 1
    })
    .await;
    assert!(store
        .list_sandboxes(None, &[SandboxState::Creating])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(rt.inner.count(), 1);
}

async fn eventually_async<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

/// An agent whose template start command never gets ready.
struct FailingStart;

#[async_trait::async_trait]
impl kiln_core::AgentClient for FailingStart {
    async fn init(
        &self,
        _h: &kiln_runtime::SandboxHandle,
        _i: &kiln_core::AgentInit,
    ) -> Result<(), String> {
        Ok(())
    }

    async fn start(
        &self,
        _h: &kiln_runtime::SandboxHandle,
        token: &str,
        start: &kiln_core::templates::StartCommand,
    ) -> Result<(), String> {
        assert!(!token.is_empty());
        Err(format!("{} exited (exit status 1)", start.argv[0]))
    }
}

#[tokio::test]
async fn a_failing_start_command_fails_the_create_and_leaves_nothing() {
    let rt = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let templates = catalog();
    templates.add(TemplateInfo {
        template: TemplateRef {
            id: "ci-v1".into(),
            rootfs: "/nonexistent".into(),
        },
        aliases: vec!["code-interpreter".into()],
        vcpus: 2,
        memory_mib: 1024,
        disk_mib: 4096,
        created_at: Utc::now(),
        runtime: None,
        start: Some(kiln_core::templates::StartCommand {
            argv: vec!["/usr/local/bin/interp".into()],
            user: "user".into(),
            cwd: "/home/user".into(),
            env: vec![],
            ready_port: 49999,
            ready_path: "/health".into(),
            ready_timeout: Duration::from_secs(1),
            warm: None,
        }),
    });
    let core = Core::new(
        CoreConfig::default(),
        store.clone(),
        Runtimes::single(rt.clone(), Arc::new(FailingStart)),
        templates,
    );
    let t = team("a");
    let err = core
        .create(
            &t,
            CreateSandbox {
                template: "code-interpreter".into(),
                ..req()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::StartCommand(_)), "{err:?}");
    assert!(err.to_string().contains("/usr/local/bin/interp exited"));
    assert_eq!(rt.count(), 0);
    let page = core.list(&t, &ListFilter::default()).unwrap().page;
    assert!(page.items.is_empty());
    // A template without a start command is unaffected.
    let rec = core.create(&t, req()).await.unwrap();
    assert_eq!(rt.count(), 1);
    core.kill(&t, &rec.id).await.unwrap();
}

#[tokio::test]
async fn pause_modes_follow_the_table_and_a_filesystem_resume_boots_anew() {
    let (core, rt, store) = setup();
    let t = team("a");
    let rec = core.create(&t, req()).await.unwrap();
    core.pause(&t, &rec.id, StateMode::Filesystem)
        .await
        .unwrap();
    assert_eq!(
        rt.state(&rec.id),
        Some(FakeState::Paused(StateMode::Filesystem))
    );
    let stored = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(stored.state, SandboxState::Paused);
    assert_eq!(stored.pause_mode, Some(StateMode::Filesystem));
    // Pausing twice is a conflict, so is resuming a running one.
    assert!(matches!(
        core.pause(&t, &rec.id, StateMode::Memory).await,
        Err(CoreError::Conflict(m)) if m.contains("already paused")
    ));
    let resumed = core
        .resume(&t, &rec.id, Some(60), None, ResumeMode::Restore)
        .await
        .unwrap();
    assert_eq!(resumed.state, SandboxState::Running);
    assert_eq!(resumed.pause_mode, None);
    assert_eq!(rt.boots(&rec.id), Some(2), "a filesystem resume boots anew");
    assert!(matches!(
        core.resume(&t, &rec.id, None, None, ResumeMode::Restore).await,
        Err(CoreError::Conflict(m)) if m.contains("not paused")
    ));
    // A memory pause and resume does not boot; a reboot does.
    core.pause(&t, &rec.id, StateMode::Memory).await.unwrap();
    core.resume(&t, &rec.id, None, None, ResumeMode::Restore)
        .await
        .unwrap();
    assert_eq!(rt.boots(&rec.id), Some(2));
    core.pause(&t, &rec.id, StateMode::Memory).await.unwrap();
    core.resume(&t, &rec.id, None, None, ResumeMode::Reboot)
        .await
        .unwrap();
    assert_eq!(rt.boots(&rec.id), Some(3));
    // A failing runtime pause leaves it running, as before.
    rt.fail_next("pause", "disk on fire");
    assert!(core.pause(&t, &rec.id, StateMode::Memory).await.is_err());
    assert_eq!(core.get(&t, &rec.id).unwrap().state, SandboxState::Running);
    assert!(core.route(&rec.id).is_some());
    // A killed paused sandbox is gone from the runtime too.
    core.pause(&t, &rec.id, StateMode::Filesystem)
        .await
        .unwrap();
    core.kill(&t, &rec.id).await.unwrap();
    assert_eq!(rt.count(), 0);
}

#[tokio::test]
async fn auto_pause_without_keep_memory_keeps_the_filesystem() {
    let (core, rt, _) = setup();
    let t = team("a");
    let rec = core
        .create(
            &t,
            CreateSandbox {
                timeout_secs: Some(1),
                auto_pause: true,
                auto_pause_memory: false,
                ..req()
            },
        )
        .await
        .unwrap();
    eventually("the sandbox is paused", || {
        rt.state(&rec.id) == Some(FakeState::Paused(StateMode::Filesystem))
    })
    .await;
}

#[tokio::test]
async fn unknown_or_missing_runtimes_are_refused_with_the_reason() {
    let rt = Arc::new(FakeRuntime::new());
    let mut runtimes = Runtimes::single(rt.clone(), Arc::new(NoAgent));
    runtimes.mark_unavailable(RuntimeKind::Gvisor, "runsc is not installed");
    let core = Core::new(
        CoreConfig::default(),
        Arc::new(SqliteStore::in_memory().unwrap()),
        runtimes,
        catalog(),
    );
    let t = team("a");
    let asked = |runtime| CreateSandbox {
        runtime: Some(runtime),
        ..req()
    };
    let err = core
        .create(&t, asked(RuntimeKind::Gvisor))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidArgument(m) if m.contains("gvisor") && m.contains("runsc is not installed")),
        "{err:?}"
    );
    let err = core
        .create(&t, asked(RuntimeKind::Microvm))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidArgument(m) if m.contains("microvm") && m.contains("fake")),
        "{err:?}"
    );
    let rec = core.create(&t, asked(RuntimeKind::Fake)).await.unwrap();
    assert_eq!(rec.runtime, RuntimeKind::Fake);
    assert_eq!(rt.count(), 1);
}

#[tokio::test]
async fn restart_reconciles_the_store_with_what_the_host_holds() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let t = team("a");
    let (on_disk, in_memory, pause_missed, resume_missed) = {
        let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
        let core = core_with(store, rt.clone());
        core.start().await.unwrap();
        let on_disk = core.create(&t, req()).await.unwrap();
        core.pause(&t, &on_disk.id, StateMode::Filesystem)
            .await
            .unwrap();
        let in_memory = core.create(&t, req()).await.unwrap();
        core.pause(&t, &in_memory.id, StateMode::Memory)
            .await
            .unwrap();
        let pause_missed = core.create(&t, req()).await.unwrap();
        let resume_missed = core.create(&t, req()).await.unwrap();
        core.pause(&t, &resume_missed.id, StateMode::Filesystem)
            .await
            .unwrap();
        (on_disk, in_memory, pause_missed, resume_missed)
        // kilnd dies here.
    };
    // kilnd died after the runtime paused one and resumed another but
    // before the store said so.
    rt.pause(&pause_missed.id, StateMode::Filesystem)
        .await
        .unwrap();
    let spec = rt.spec(&resume_missed.id).unwrap();
    rt.resume(&spec, ResumeMode::Restore).await.unwrap();
    // Then the host rebooted: what was only in memory is gone.
    rt.reboot();

    let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
    let core = core_with(store.clone(), rt.clone());
    let report = core.start().await.unwrap();
    assert_eq!(report.paused, 2, "{report:?}");
    assert_eq!(report.cleaned, 2, "{report:?}");
    // The filesystem pause survived and resumes.
    assert_eq!(
        core.get(&t, &on_disk.id).unwrap().state,
        SandboxState::Paused
    );
    core.resume(&t, &on_disk.id, None, None, ResumeMode::Restore)
        .await
        .unwrap();
    // The pause the store missed is a pause.
    let p = store.get_sandbox(&pause_missed.id).await.unwrap().unwrap();
    assert_eq!(p.state, SandboxState::Paused);
    assert_eq!(p.pause_mode, Some(StateMode::Filesystem));
    // The memory pause was lost with the reboot, and says so.
    let lost = store.get_sandbox(&in_memory.id).await.unwrap().unwrap();
    assert_eq!(lost.state, SandboxState::Killed);
    assert!(
        lost.end_reason
            .as_deref()
            .is_some_and(|r| r.contains("memory")),
        "{:?}",
        lost.end_reason
    );
    assert!(core.get(&t, &in_memory.id).is_err());
    // The resumed one ran only in memory: gone with the reboot too.
    let r = store.get_sandbox(&resume_missed.id).await.unwrap().unwrap();
    assert_eq!(r.state, SandboxState::Killed);
    assert!(r.end_reason.is_some());
}

#[tokio::test]
async fn a_resume_the_store_missed_is_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let t = team("a");
    let rec = {
        let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
        let core = core_with(store, rt.clone());
        core.start().await.unwrap();
        let rec = core.create(&t, req()).await.unwrap();
        core.pause(&t, &rec.id, StateMode::Memory).await.unwrap();
        rec
    };
    rt.resume(&rt.spec(&rec.id).unwrap(), ResumeMode::Restore)
        .await
        .unwrap();
    let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
    let core = core_with(store.clone(), rt.clone());
    let report = core.start().await.unwrap();
    assert_eq!(report.reattached, 1, "{report:?}");
    assert_eq!(core.get(&t, &rec.id).unwrap().state, SandboxState::Running);
    assert!(core.route(&rec.id).is_some());
    let stored = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(stored.state, SandboxState::Running);
    assert_eq!(stored.pause_mode, None);
}

#[tokio::test]
async fn snapshots_start_sandboxes_and_names_keep_their_id() {
    let (core, rt, _) = setup();
    let t = team("a");
    let src = core.create(&t, req()).await.unwrap();
    let snap = core
        .create_snapshot(&t, &src.id, Some("mine".into()), None)
        .await
        .unwrap();
    assert_eq!(snap.state, kiln_core::SnapshotState::Ready);
    assert_eq!(snap.mode, StateMode::Memory, "the fake keeps memory");
    assert_eq!(snap.tagged_id(), format!("{}:default", snap.id));
    // Any number of sandboxes, by id, tagged id or name; independent.
    let mut made = Vec::new();
    for name in [
        snap.id.clone(),
        snap.tagged_id(),
        "mine".into(),
        "a/mine:default".into(),
    ] {
        let rec = core
            .create(
                &t,
                CreateSandbox {
                    template: name.clone(),
                    ..req()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rec.template_id, "base-v1");
        assert_eq!(rec.alias.as_deref(), Some(name.as_str()));
        made.push(rec.id);
    }
    assert_eq!(rt.count(), 5);
    // Another team sees no such template.
    let other = core
        .create(
            &team("b"),
            CreateSandbox {
                template: snap.id.clone(),
                ..req()
            },
        )
        .await;
    assert!(matches!(other, Err(CoreError::NotFound(_))), "{other:?}");
    // A tag other than default is not Kiln's.
    let tagged = core
        .create(
            &t,
            CreateSandbox {
                template: format!("{}:v2", snap.id),
                ..req()
            },
        )
        .await;
    assert!(matches!(tagged, Err(CoreError::NotFound(_))));

    // The same name again: same id, new content, old content deleted.
    let before = rt.snapshot_ids();
    let again = core
        .create_snapshot(&t, &src.id, Some("mine".into()), Some(true))
        .await
        .unwrap();
    assert_eq!(again.id, snap.id);
    assert_ne!(again.build_id, snap.build_id);
    assert_eq!(rt.snapshot_ids(), vec![again.build_id.clone()]);
    assert_eq!(before, vec![snap.build_id.clone()]);

    let page = core
        .list_snapshots(&t, &kiln_core::SnapshotFilter::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let by_sandbox = kiln_core::SnapshotFilter {
        sandbox_id: Some(made[0].clone()),
        ..Default::default()
    };
    assert!(core
        .list_snapshots(&t, &by_sandbox)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(core.delete_snapshot(&t, "mine").await.unwrap());
    assert!(!core.delete_snapshot(&t, "mine").await.unwrap());
    assert!(rt.snapshot_ids().is_empty());
    // The sandboxes made from it live on.
    assert_eq!(rt.count(), 5);
    let gone = core
        .create(
            &t,
            CreateSandbox {
                template: snap.id.clone(),
                ..req()
            },
        )
        .await;
    assert!(matches!(gone, Err(CoreError::NotFound(_))));
    // Bad names are refused.
    assert!(matches!(
        core.create_snapshot(&t, &src.id, Some("no/slash".into()), None)
            .await,
        Err(CoreError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn fork_makes_independent_copies_and_checks_its_count() {
    let (core, rt, store) = setup();
    let t = team("a");
    let mut r = req();
    r.metadata.insert("k".into(), "v".into());
    let src = core.create(&t, r).await.unwrap();
    let forks = core.fork(&t, &src.id, Some(3), None).await.unwrap();
    assert_eq!(forks.len(), 3);
    let ids: Vec<_> = forks
        .iter()
        .map(|f| f.as_ref().unwrap().id.clone())
        .collect();
    for f in &forks {
        let f = f.as_ref().unwrap();
        assert_ne!(f.id, src.id);
        assert_eq!(f.metadata["k"], "v");
        assert_ne!(f.envd_access_token, src.envd_access_token);
        let secs = (f.end_at - Utc::now()).num_seconds();
        assert!((10..=15).contains(&secs), "default fork timeout: {secs}");
    }
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3
    );
    assert_eq!(rt.count(), 4, "the source and three copies");
    assert!(rt.snapshot_ids().is_empty(), "the fork's snapshot is gone");
    assert!(store.list_snapshots(None).await.unwrap().is_empty());
    core.kill(&t, &ids[0]).await.unwrap();
    assert_eq!(rt.state(&ids[1]), Some(FakeState::Running));
    for bad in [0, 101] {
        assert!(matches!(
            core.fork(&t, &src.id, Some(bad), None).await,
            Err(CoreError::InvalidArgument(_))
        ));
    }
    core.pause(&t, &src.id, StateMode::Memory).await.unwrap();
    assert!(matches!(
        core.fork(&t, &src.id, Some(1), None).await,
        Err(CoreError::Conflict(_))
    ));
    // One copy failing does not fail the others.
    core.resume(&t, &src.id, None, None, ResumeMode::Restore)
        .await
        .unwrap();
    rt.fail_next("restore", "no room");
    let forks = core.fork(&t, &src.id, Some(2), None).await.unwrap();
    assert_eq!(forks.iter().filter(|f| f.is_err()).count(), 1);
    assert_eq!(forks.iter().filter(|f| f.is_ok()).count(), 1);
}

#[tokio::test]
async fn restart_settles_snapshots_a_crash_interrupted() {
    use kiln_core::{SnapshotRecord, SnapshotState};
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let t = team("a");
    let src = {
        let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
        let core = core_with(store.clone(), rt.clone());
        core.start().await.unwrap();
        let src = core.create(&t, req()).await.unwrap();
        let rec = |id: &str, build: &str, internal: bool| SnapshotRecord {
            id: id.into(),
            team_id: "a".into(),
            name: None,
            source_sandbox_id: src.id.clone(),
            runtime: RuntimeKind::Fake,
            template_id: "base-v1".into(),
            mode: StateMode::Memory,
            vcpus: 2,
            memory_mib: 1024,
            disk_mib: 4096,
            build_id: build.into(),
            state: SnapshotState::Creating,
            size_bytes: 0,
            content_hash: String::new(),
            created_at: Utc::now(),
            internal,
            agent_token: None,
        };
        // kilnd died: after the runtime saved one; before it saved another;
        // during a fork; and after a replacement's content was saved but
        // before the record pointed to it.
        rt.snapshot(&src.id, "b-done", StateMode::Memory)
            .await
            .unwrap();
        store
            .insert_snapshot(&rec("snapdone", "b-done", false))
            .await
            .unwrap();
        store
            .insert_snapshot(&rec("snaphalf", "b-half", false))
            .await
            .unwrap();
        rt.snapshot(&src.id, "b-fork", StateMode::Memory)
            .await
            .unwrap();
        store
            .insert_snapshot(&rec("snapfork", "b-fork", true))
            .await
            .unwrap();
        rt.snapshot(&src.id, "b-orphan", StateMode::Memory)
            .await
            .unwrap();
        src
    };
    let store = Arc::new(SqliteStore::open_in(dir.path()).unwrap());
    let core = core_with(store.clone(), rt.clone());
    let report = core.start().await.unwrap();
    // Completed, dropped, the fork's record and its content, the orphan.
    assert_eq!(report.snapshots_settled, 5, "{report:?}");
    let left = store.list_snapshots(None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, "snapdone");
    assert_eq!(left[0].state, SnapshotState::Ready);
    assert_eq!(left[0].size_bytes, 4096);
    assert_eq!(rt.snapshot_ids(), vec!["b-done".to_string()]);
    // And it starts sandboxes.
    core.create(
        &t,
        CreateSandbox {
            template: "snapdone".into(),
            ..req()
        },
    )
    .await
    .unwrap();
    assert!(core.get(&t, &src.id).is_ok());
}

#[tokio::test]
async fn traffic_resumes_a_paused_sandbox_only_with_auto_resume() {
    let (core, rt, _) = setup();
    let t = team("a");
    let waking = core
        .create(
            &t,
            CreateSandbox {
                auto_resume: true,
                ..req()
            },
        )
        .await
        .unwrap();
    let sleeping = core.create(&t, req()).await.unwrap();
    for id in [&waking.id, &sleeping.id] {
        core.pause(&t, id, StateMode::Memory).await.unwrap();
    }
    assert!(core.route_or_resume(&sleeping.id).await.is_none());
    assert_eq!(
        rt.state(&sleeping.id),
        Some(FakeState::Paused(StateMode::Memory))
    );
    // Two requests at once: both get through, one resume happens.
    let (a, b) = tokio::join!(
        core.route_or_resume(&waking.id),
        core.route_or_resume(&waking.id)
    );
    assert!(a.is_some() && b.is_some());
    assert_eq!(rt.state(&waking.id), Some(FakeState::Running));
    assert_eq!(
        core.get(&t, &waking.id).unwrap().state,
        SandboxState::Running
    );
    assert!(core.route_or_resume("nosuchsandbox").await.is_none());
}

#[tokio::test]
async fn list_is_newest_first_and_filters_by_time_and_template() {
    let (core, _, _) = setup();
    let t = team("a");
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(core.create(&t, req()).await.unwrap());
        // Distinct start times (microseconds apart at least).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let list = |f: ListFilter| core.list(&t, &f).unwrap();
    let ids_of =
        |l: kiln_core::SandboxList| l.page.items.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let newest: Vec<String> = ids.iter().rev().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids_of(list(ListFilter::default())),
        newest,
        "newest first by default"
    );

    // Paging goes on in the order asked for across running and paused
    // sandboxes alike.
    core.pause(&t, &ids[2].id, StateMode::Memory).await.unwrap();
    for (order, want) in [
        (Order::NewestFirst, newest.clone()),
        (
            Order::OldestFirst,
            ids.iter().map(|r| r.id.clone()).collect(),
        ),
    ] {
        let mut f = ListFilter {
            limit: Some(1),
            order,
            ..ListFilter::default()
        };
        let mut seen = Vec::new();
        loop {
            let l = list(f.clone());
            assert_eq!(l.total_running, Some(3), "before paging, paused ones apart");
            seen.extend(l.page.items.into_iter().map(|r| r.id));
            match l.page.next_token {
                Some(tok) => f.next_token = Some(tok),
                None => break,
            }
        }
        assert_eq!(seen, want, "{order:?}");
    }
    let paused_only = list(ListFilter {
        states: vec![SandboxState::Paused],
        ..ListFilter::default()
    });
    assert_eq!(paused_only.total_running, None);

    // startedAfter / startedBefore are inclusive bounds.
    let after = list(ListFilter {
        started_after: Some(ids[1].started_at),
        ..ListFilter::default()
    });
    assert_eq!(ids_of(after), newest[..3]);
    let before = list(ListFilter {
        started_before: Some(ids[1].started_at),
        ..ListFilter::default()
    });
    assert_eq!(ids_of(before), newest[2..]);
    let between = list(ListFilter {
        started_after: Some(ids[1].started_at),
        started_before: Some(ids[2].started_at),
        ..ListFilter::default()
    });
    assert_eq!(ids_of(between), newest[1..3]);
    assert!(matches!(
        core.list(
            &t,
            &ListFilter {
                started_after: Some(ids[2].started_at),
                started_before: Some(ids[1].started_at),
                ..ListFilter::default()
            }
        ),
        Err(CoreError::InvalidArgument(_))
    ));

    // By template id or alias; an unknown one matches nothing; tags are refused.
    for name in ["base", "base-v1"] {
        let l = list(ListFilter {
            template: Some(name.into()),
            ..ListFilter::default()
        });
        assert_eq!(l.page.items.len(), 4, "{name}");
    }
    let none = list(ListFilter {
        template: Some("other".into()),
        ..ListFilter::default()
    });
    assert!(none.page.items.is_empty());
    assert_eq!(none.total_running, Some(0));
    assert!(matches!(
        core.list(
            &t,
            &ListFilter {
                template: Some("base:v2".into()),
                ..ListFilter::default()
            }
        ),
        Err(CoreError::InvalidArgument(m)) if m.contains("tag")
    ));
}

#[tokio::test]
async fn a_zero_timeout_ends_the_sandbox_now_with_its_timeout_action() {
    let (core, rt, store) = setup();
    let t = team("a");
    let killed = core.create(&t, req()).await.unwrap();
    core.set_timeout(&t, &killed.id, 0).await.unwrap();
    assert_eq!(rt.state(&killed.id), None, "killed before the answer");
    assert_eq!(
        store.get_sandbox(&killed.id).await.unwrap().unwrap().state,
        SandboxState::Killed
    );
    assert!(matches!(
        core.set_timeout(&t, &killed.id, 0).await,
        Err(CoreError::NotFound(_))
    ));

    for (keep_memory, mode) in [(true, StateMode::Memory), (false, StateMode::Filesystem)] {
        let rec = core
            .create(
                &t,
                CreateSandbox {
                    auto_pause: true,
                    auto_pause_memory: keep_memory,
                    ..req()
                },
            )
            .await
            .unwrap();
        core.set_timeout(&t, &rec.id, 0).await.unwrap();
        assert_eq!(rt.state(&rec.id), Some(FakeState::Paused(mode)));
        assert_eq!(core.get(&t, &rec.id).unwrap().state, SandboxState::Paused);
        // Paused: a zero timeout only records the deadline.
        core.set_timeout(&t, &rec.id, 0).await.unwrap();
        assert_eq!(rt.state(&rec.id), Some(FakeState::Paused(mode)));
    }

    let live = core.create(&t, req()).await.unwrap();
    for bad in [-1, 3601] {
        assert!(matches!(
            core.set_timeout(&t, &live.id, bad).await,
            Err(CoreError::InvalidArgument(m)) if m.contains("between 0")
        ));
    }
    assert_eq!(rt.state(&live.id), Some(FakeState::Running));
}

#[tokio::test]
async fn metrics_keep_a_history_and_answer_ranges() {
    let (core, _, _) = setup();
    let t = team("a");
    let a = core.create(&t, req()).await.unwrap();
    let b = core.create(&t, req()).await.unwrap();
    let other = core.create(&team("b"), req()).await.unwrap();

    // A sandbox not sampled yet is sampled on the first request.
    let first = core.metrics(&t, &a.id, None, None).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].cpu_count, 2);
    assert_eq!(first[0].mem_total, 1024 * 1024 * 1024);
    for _ in 0..3 {
        core.sample_metrics().await;
    }
    let all = core.metrics(&t, &a.id, None, None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at), "oldest first");
    let t0 = all[0].at.timestamp();
    assert_eq!(
        core.metrics(&t, &a.id, Some(t0), Some(t0 + 3600))
            .await
            .unwrap()
            .len(),
        4
    );
    assert!(core
        .metrics(&t, &a.id, Some(t0 - 100), Some(t0 - 1))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        core.metrics(&t, &a.id, Some(t0 + 1), Some(t0)).await,
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        core.metrics(&team("b"), &a.id, None, None).await,
        Err(CoreError::NotFound(_))
    ));

    // A paused sandbox keeps its history and gets no new samples.
    core.pause(&t, &b.id, StateMode::Memory).await.unwrap();
    let before = core.metrics(&t, &b.id, None, None).await.unwrap().len();
    core.sample_metrics().await;
    assert_eq!(
        core.metrics(&t, &b.id, None, None).await.unwrap().len(),
        before
    );

    // Several at once: the team's own, latest sample each; others left out.
    let ids = vec![
        a.id.clone(),
        format!("{}-6532622b", b.id),
        other.id.clone(),
        "nosuchsandbox".into(),
    ];
    let many = core.metrics_of(&t, &ids).await.unwrap();
    let got: Vec<&str> = many.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, [a.id.as_str(), b.id.as_str()]);
    let latest = core.metrics(&t, &a.id, None, None).await.unwrap();
    assert_eq!(many[0].1, *latest.last().unwrap());
    let too_many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    assert!(matches!(
        core.metrics_of(&t, &too_many).await,
        Err(CoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        core.metrics_of(&t, &["Bad-Id".into()]).await,
        Err(CoreError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn templates_are_found_by_id_alias_or_own_snapshot_and_counted() {
    let (core, _, _) = setup();
    let t = team("a");
    for name in ["base", "base-v1", "base:default"] {
        let found = core.find_template(&t, name).await.unwrap().unwrap();
        assert_eq!(found.id(), "base-v1", "{name}");
        assert!(found.public());
    }
    assert!(core.find_template(&t, "base:v2").await.unwrap().is_none());
    assert!(core.find_template(&t, "nope").await.unwrap().is_none());

    let rec = core.create(&t, req()).await.unwrap();
    let snap = core
        .create_snapshot(&t, &rec.id, Some("mine".into()), None)
        .await
        .unwrap();
    let found = core.find_template(&t, "mine").await.unwrap().unwrap();
    assert_eq!(found.id(), snap.tagged_id());
    assert!(!found.public());
    assert!(
        core.find_template(&team("b"), "mine")
            .await
            .unwrap()
            .is_none(),
        "another team's snapshot does not exist for the caller"
    );

    core.create(&t, req()).await.unwrap();
    let usage = core.template_usage(&t).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].template_id, "base-v1");
    assert_eq!(usage[0].spawn_count, 2);
    assert!(core.template_usage(&team("b")).await.unwrap().is_empty());
}

/// Records the agent calls a warm pool makes.
#[derive(Default)]
struct RecordingAgent {
    calls: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl kiln_core::AgentClient for RecordingAgent {
    async fn init(
        &self,
        h: &kiln_runtime::SandboxHandle,
        init: &kiln_core::AgentInit,
    ) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!(
            "init {} {} prev={}",
            h.id,
            init.access_token,
            init.previous_token.as_deref().unwrap_or("-")
        ));
        Ok(())
    }
    async fn start(
        &self,
        h: &kiln_runtime::SandboxHandle,
        _token: &str,
        _start: &kiln_core::templates::StartCommand,
    ) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("start {}", h.id));
        Ok(())
    }
    async fn warm(
        &self,
        h: &kiln_runtime::SandboxHandle,
        _token: &str,
        req: &kiln_core::templates::WarmRequest,
    ) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("warm {} {}", h.id, req.body));
        Ok(())
    }
}

#[tokio::test]
async fn warm_sandboxes_are_handed_over_with_new_tokens_and_refilled() {
    let rt = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let templates = catalog();
    templates.add(TemplateInfo {
        template: TemplateRef {
            id: "ci-v1".into(),
            rootfs: "/nonexistent".into(),
        },
        aliases: vec!["code-interpreter".into()],
        vcpus: 2,
        memory_mib: 1024,
        disk_mib: 4096,
        created_at: Utc::now(),
        runtime: None,
        start: Some(kiln_core::templates::StartCommand {
            argv: vec!["/usr/local/bin/interp".into()],
            user: "user".into(),
            cwd: "/home/user".into(),
            env: vec![],
            ready_port: 49999,
            ready_path: "/health".into(),
            ready_timeout: Duration::from_secs(1),
            warm: Some(kiln_core::templates::WarmRequest {
                port: 49999,
                path: "/execute".into(),
                body: "{\"code\":\"1\"}".into(),
            }),
        }),
    });
    let agent = Arc::new(RecordingAgent::default());
    let core = Core::new(
        CoreConfig {
            warm_pools: vec![kiln_core::WarmPool {
                template: "code-interpreter".to_string(),
                runtime: None,
                size: 2,
            }],
            ..CoreConfig::default()
        },
        store.clone(),
        Runtimes::single(rt.clone(), agent.clone()),
        templates,
    );
    core.start().await.unwrap();
    eventually("the pool is full", || rt.count() == 2).await;
    let t = team("a");
    assert!(
        core.list(&t, &ListFilter::default())
            .unwrap()
            .page
            .items
            .is_empty(),
        "the pool is no team's"
    );
    let warm_ids: Vec<String> = agent
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| {
            c.strip_prefix("warm ")
                .map(|r| r.split(' ').next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(warm_ids.len(), 2, "{:?}", agent.calls.lock().unwrap());

    let mut r = CreateSandbox {
        template: "code-interpreter".into(),
        timeout_secs: Some(60),
        ..req()
    };
    r.metadata.insert("who".into(), "me".into());
    r.env_vars.insert("K".into(), "V".into());
    let rec = core.create(&t, r).await.unwrap();
    assert!(
        warm_ids.contains(&rec.id),
        "{} is not one of the warm {warm_ids:?}",
        rec.id
    );
    assert_eq!(rec.team_id, "a");
    assert_eq!(rec.metadata["who"], "me");
    assert_eq!(rec.env_vars["K"], "V");
    assert!((55..=61).contains(&(rec.end_at - Utc::now()).num_seconds()));
    // The agent got the new token, authenticated with the pool's.
    let calls = agent.calls.lock().unwrap().clone();
    let handed = calls
        .iter()
        .rev()
        .find(|c| c.starts_with(&format!("init {} {}", rec.id, rec.envd_access_token)))
        .unwrap_or_else(|| panic!("no init with the new token: {calls:?}"));
    assert!(!handed.ends_with("prev=-"), "{handed}");
    assert_eq!(core.get(&t, &rec.id).unwrap().id, rec.id);
    let stored = store.get_sandbox(&rec.id).await.unwrap().unwrap();
    assert_eq!(stored.team_id, "a");
    assert_eq!(stored.envd_access_token, rec.envd_access_token);
    assert_eq!(stored.metadata["who"], "me");
    // The pool refills; a cold create of another template is unaffected.
    eventually("the pool refilled", || rt.count() == 3).await;
    core.create(&t, req()).await.unwrap();
    assert_eq!(
        core.list(&t, &ListFilter::default())
            .unwrap()
            .page
            .items
            .len(),
        2
    );
    // A request the pool cannot serve (another runtime) is created cold.
    let cold = core
        .create(
            &t,
            CreateSandbox {
                template: "code-interpreter".into(),
                runtime: Some(RuntimeKind::Gvisor),
                ..req()
            },
        )
        .await;
    assert!(
        matches!(cold, Err(CoreError::InvalidArgument(_))),
        "{cold:?}"
    );
}

#[tokio::test]
async fn team_limits_refuse_then_make_room_and_spare_other_teams() {
    use kiln_core::limits::{AdmissionConfig, Amounts, TeamLimits};
    let rt = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let host = Amounts {
        sandboxes: u64::MAX,
        vcpus: 100,
        memory_mib: 5 * 1024,
        disk_mib: 1 << 30,
    };
    let core = Core::new(
        CoreConfig {
            admission: AdmissionConfig {
                team_default: Amounts {
                    sandboxes: 10,
                    ..host
                },
                host,
                host_note: "test host".into(),
            },
            ..CoreConfig::default()
        },
        store.clone(),
        Runtimes::single(rt.clone(), Arc::new(NoAgent)),
        catalog(),
    );
    kiln_core::limits::set_team_limits(
        store.as_ref(),
        "a",
        &TeamLimits {
            sandboxes: Some(2),
            ..TeamLimits::default()
        },
    )
    .await
    .unwrap();
    let a = team("a");
    let one = core.create(&a, req()).await.unwrap();
    core.create(&a, req()).await.unwrap();
    let e = core.create(&a, req()).await.unwrap_err();
    assert!(matches!(e, CoreError::LimitExceeded(_)), "{e}");
    assert!(
        e.to_string().contains("limit of 2 concurrent sandboxes"),
        "{e}"
    );
    assert_eq!(rt.count(), 2, "nothing is started for a refused create");
    // Another team is not held to team a's limit; the host's memory
    // (5 GiB of 1 GiB sandboxes) is what stops it.
    let b = team("b");
    for _ in 0..3 {
        core.create(&b, req()).await.unwrap();
    }
    let e = core.create(&b, req()).await.unwrap_err();
    assert!(
        e.to_string().starts_with("host: limit of 5120 MiB memory"),
        "{e}"
    );
    // Killing one of team a's makes room for it again.
    core.kill(&a, &one.id).await.unwrap();
    core.create(&a, req()).await.unwrap();
    // A bad team name is a clear error.
    let e =
        kiln_core::limits::set_team_limits(store.as_ref(), "no such/team", &TeamLimits::default())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("invalid team name"), "{e}");
}

#[tokio::test]
async fn a_copy_restored_with_memory_gets_its_token_through_the_sources() {
    // The copy is the source's agent, token and all: its own token is set
    // by an /init authenticated with the source's; a copy booted from a
    // filesystem snapshot is a fresh agent and needs none.
    let rt = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let agent = Arc::new(RecordingAgent::default());
    let core = Core::new(
        CoreConfig::default(),
        store.clone(),
        Runtimes::single(rt.clone(), agent.clone()),
        catalog(),
    );
    core.start().await.unwrap();
    let t = team("a");
    let src = core.create(&t, req()).await.unwrap();
    let init_of = |id: &str| {
        agent
            .calls
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.starts_with(&format!("init {id} ")))
            .cloned()
            .unwrap_or_else(|| panic!("no init of {id}"))
    };
    for (memory, prev) in [(true, src.envd_access_token.as_str()), (false, "-")] {
        let snap = core
            .create_snapshot(&t, &src.id, None, Some(memory))
            .await
            .unwrap();
        let stored = store.get_snapshot(&snap.id).await.unwrap().unwrap();
        assert_eq!(
            stored.agent_token.is_some(),
            memory,
            "the store keeps the token a memory snapshot's agent holds"
        );
        let copy = core
            .create(
                &t,
                CreateSandbox {
                    template: snap.id.clone(),
                    ..req()
                },
            )
            .await
            .unwrap();
        assert_ne!(copy.envd_access_token, src.envd_access_token);
        assert_eq!(
            init_of(&copy.id),
            format!("init {} {} prev={prev}", copy.id, copy.envd_access_token)
        );
    }
    // Forks too (the fake keeps memory in snapshots).
    let forks = core.fork(&t, &src.id, Some(2), None).await.unwrap();
    for f in forks {
        let f = f.unwrap();
        assert_eq!(
            init_of(&f.id),
            format!(
                "init {} {} prev={}",
                f.id, f.envd_access_token, src.envd_access_token
            )
        );
    }
}
