//! The container runtime on the real kernel: lifecycle and isolation as
//! seen from inside a sandbox (the checker binary stands in for the agent).

mod common;

use std::time::Duration;

use common::*;
use kiln_runtime::{Found, ResumeMode, Runtime, RuntimeEvent, StateMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_and_isolation_from_inside() {
    if !is_root() {
        return;
    }
    let t = TestRuntime::new(config(1)).await;
    let rt = &t.rt;
    let h = rt.create(&spec("life-1")).await.expect("create");
    assert_eq!(ask(h.ip, "ping").await, "pong");

    let report = ask(h.ip, "checks life-1").await;
    println!("{report}");
    let failed: Vec<&str> = report.lines().filter(|l| !l.ends_with(" ok")).collect();
    assert!(failed.is_empty(), "isolation checks failed: {failed:?}");
    assert!(
        report.lines().count() >= 30,
        "too few checks ran:\n{report}"
    );

    // Seen from the host, the sandbox's root is an unprivileged uid of a
    // range of its own: another sandbox's root is another uid.
    let host_uid = |pid: u32| -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|u| u.parse().unwrap())
            .collect()
    };
    let uids = host_uid(h.pid.unwrap());
    assert!(
        uids.iter()
            .all(|u| *u == uids[0] && kiln_runtime::host::uidrange::is_sandbox_uid(*u)),
        "init runs as {uids:?} on the host"
    );
    let other = rt.create(&spec("life-2")).await.expect("create a second");
    let other_uids = host_uid(other.pid.unwrap());
    assert_ne!(
        other_uids[0], uids[0],
        "two sandboxes share a host uid range"
    );
    let report = ask(other.ip, "checks life-2").await;
    let failed: Vec<&str> = report.lines().filter(|l| !l.ends_with(" ok")).collect();
    assert!(
        failed.is_empty(),
        "isolation checks failed in the second sandbox: {failed:?}"
    );
    rt.kill("life-2").await.unwrap();
    // The init (the agent) has a little more CPU weight than one task of
    // the workload, where the host lets kiln-spawn lower a nice value.
    let pid = h.pid.unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let nice = stat.rsplit(')').next().unwrap().split_whitespace().nth(16);
    if has_cap(23) {
        assert_eq!(nice, Some("-5"), "init's nice value in {stat}");
    }

    // Same id twice is refused.
    assert!(matches!(
        rt.create(&spec("life-1")).await,
        Err(kiln_runtime::RuntimeError::AlreadyExists(_))
    ));

    // Freeze stops it from answering; thaw brings it back.
    rt.pause("life-1", StateMode::Memory).await.unwrap();
    assert!(matches!(
        rt.pause("life-1", StateMode::Memory).await,
        Err(kiln_runtime::RuntimeError::WrongState(_))
    ));
    assert_eq!(
        rt.list().await.unwrap(),
        vec![Found::Paused {
            id: "life-1".into(),
            mode: StateMode::Memory
        }]
    );
    assert!(ask_timeout(h.ip, "ping", Duration::from_millis(500))
        .await
        .is_err());
    assert_eq!(
        rt.resume(&spec("life-1"), ResumeMode::Restore)
            .await
            .unwrap(),
        h
    );
    assert_eq!(ask(h.ip, "ping").await, "pong");

    let st = rt.stats("life-1").await.unwrap();
    assert!(st.memory_used_bytes > 0 && st.memory_used_bytes < st.memory_limit_bytes);
    assert_eq!(st.memory_limit_bytes, 256 << 20);
    assert_eq!(st.disk_limit_bytes, 64 << 20);
    assert!(st.cpu_usage_usec > 0);

    assert_eq!(rt.list().await.unwrap().len(), 1);
    rt.kill("life-1").await.unwrap();
    rt.kill("life-1").await.unwrap(); // idempotent
    assert!(rt.list().await.unwrap().is_empty());
    assert!(ask_timeout(h.ip, "ping", Duration::from_millis(500))
        .await
        .is_err());
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exit_is_reported() {
    if !is_root() {
        return;
    }
    let t = TestRuntime::new(config(2)).await;
    let rt = &t.rt;
    let mut events = rt.subscribe();
    let h = rt.create(&spec("exit-1")).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(
        ev,
        RuntimeEvent::Exited {
            id: "exit-1".into(),
            oom_killed: false,
            exit_code: Some(128 + 9)
        }
    );
    rt.kill("exit-1").await.unwrap();
    t.finish().await;
}

#[test]
fn recovery_after_server_crash() {
    if !is_root() {
        return;
    }
    // A "server" that creates two sandboxes and crashes: its tokio runtime
    // ends without kill or shutdown.
    let (alive, dead) = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let rt = kiln_runtime::container::ContainerRuntime::new(config(6))
                    .await
                    .unwrap();
                let a = rt.create(&spec("rec-alive")).await.unwrap();
                let d = rt.create(&spec("rec-dead")).await.unwrap();
                (a, d)
            })
    })
    .join()
    .unwrap();
    // One sandbox dies while the server is down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead.pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The crashed run's cgroups: sandboxes' and warm helpers'.
    let crashed_cgroups: Vec<String> = std::fs::read_dir(cgroup_parent())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(crashed_cgroups.len() >= 2);

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let t = TestRuntime::new(config(6)).await;
            let rt = &t.rt;
            let list = rt.list().await.unwrap();
            assert_eq!(
                list,
                vec![Found::Running(alive.clone())],
                "only the live sandbox is re-attached"
            );
            assert_eq!(ask(alive.ip, "ping").await, "pong");
            // The dead one's cgroups and state are gone.
            let dir = config(6).data_dir.join("sandboxes");
            // (Warm helpers of the new run have directories there too.)
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| match n.strip_prefix(".warm-") {
                    Some(cg) => crashed_cgroups.iter().any(|c| c == cg),
                    None => true,
                })
                .collect();
            assert_eq!(left, vec!["rec-alive".to_string()]);
            for cg in &crashed_cgroups {
                let p = cgroup_parent().join(cg);
                let is_alive = rt
                    .cgroup_dirs("rec-alive")
                    .unwrap()
                    .iter()
                    .any(|d| d.ends_with(cg));
                assert!(is_alive || !p.exists(), "{p:?} of the crashed run was left");
            }
            // The re-attached sandbox works like any other.
            rt.pause("rec-alive", StateMode::Memory).await.unwrap();
            rt.resume(&spec("rec-alive"), ResumeMode::Restore)
                .await
                .unwrap();
            rt.kill("rec-alive").await.unwrap();
            assert!(ask_timeout(alive.ip, "ping", Duration::from_millis(300))
                .await
                .is_err());
            t.finish().await;
        });
}

fn cgroup_parent() -> std::path::PathBuf {
    let v1 = std::path::Path::new("/sys/fs/cgroup/pids/kiln/t6");
    if v1.exists() {
        v1.into()
    } else {
        "/sys/fs/cgroup/kiln/t6".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_frozen_kill() {
    if !is_root() {
        return;
    }
    let t = TestRuntime::new(config(9)).await;
    let rt = &t.rt;
    // More creates at once than the pools hold.
    let creates = (0..16).map(|i| {
        let rt = rt.clone();
        async move { rt.create(&spec(&format!("conc-{i}"))).await }
    });
    let handles: Vec<_> = futures_join_all(creates).await;
    let mut ips = std::collections::BTreeSet::new();
    for h in &handles {
        let h = h.as_ref().expect("create");
        assert_eq!(ask(h.ip, "ping").await, "pong");
        ips.insert(h.ip);
    }
    assert_eq!(ips.len(), 16, "addresses are unique");
    // A frozen sandbox can be killed.
    rt.pause("conc-0", StateMode::Memory).await.unwrap();
    rt.kill("conc-0").await.unwrap();
    for i in 1..16 {
        rt.kill(&format!("conc-{i}")).await.unwrap();
    }
    assert!(rt.list().await.unwrap().is_empty());
    t.finish().await;
}

/// join_all without a futures dependency: spawn each, await in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Whether this process holds a capability (by number) in its effective set.
fn has_cap(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << cap) != 0
}
