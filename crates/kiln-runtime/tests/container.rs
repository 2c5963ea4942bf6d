//! The container runtime on the real kernel: lifecycle and isolation as
//! seen from inside a sandbox (the checker binary stands in for the agent).

mod common;

use std::time::Duration;

use common::*;
use kiln_runtime::{Runtime, RuntimeEvent};

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

    // Same id twice is refused.
    assert!(matches!(
        rt.create(&spec("life-1")).await,
        Err(kiln_runtime::RuntimeError::AlreadyExists(_))
    ));

    // Freeze stops it from answering; thaw brings it back.
    rt.freeze("life-1").await.unwrap();
    assert!(ask_timeout(h.ip, "ping", Duration::from_millis(500))
        .await
        .is_err());
    rt.thaw("life-1").await.unwrap();
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
