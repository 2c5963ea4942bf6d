//! The real agent (crates/kiln-agent) as a sandbox's init: the runtime's
//! half of their contract (exec as PID 1 after pivot_root, KILN_READY_FD,
//! served on the sandbox's address). Needs the static agent binary in
//! `KILN_AGENT_BIN` (scripts/lib.sh's `kiln_build_agent` sets it); skipped
//! without it.

mod common;

use std::net::SocketAddr;

use common::*;
use kiln_runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_answers_in_a_sandbox() {
    if !is_root() {
        return;
    }
    let Ok(agent) = std::env::var("KILN_AGENT_BIN") else {
        eprintln!("skipped: KILN_AGENT_BIN is not set (build the static agent first)");
        return;
    };
    let mut cfg = config(8);
    cfg.agent_bin = agent.into();
    let t = TestRuntime::new(cfg).await;
    let rt = &t.rt;
    let mut s = spec("agent-1");
    s.env.insert("KILN_TEST_VAR".into(), "42".into());
    let h = rt.create(&s).await.expect("the agent reports ready");
    let addr = SocketAddr::new(h.ip, h.agent_port);
    let health = http_get(addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 204"), "{health}");
    let envs = http_get(addr, "/envs").await;
    assert!(envs.starts_with("HTTP/1.1 200"), "{envs}");
    rt.kill("agent-1").await.unwrap();
    t.finish().await;
}
