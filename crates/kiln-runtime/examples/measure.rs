//! Rough figures for the container runtime, beside bubblewrap measured in
//! the same run. Not a benchmark harness (that is kiln-bench's job).
//!
//! ```sh
//! cargo build --release -p kiln-runtime --bins --examples
//! sudo target/release/examples/measure [N]   # default 100
//! ```
//! Uses the base template from `$KILN_DATA_DIR` (default /var/lib/kiln;
//! built if missing) and the real agent if `KILN_AGENT_BIN` names it
//! (answering = `GET /health` → 204), else `kiln-runtime-checker` as a
//! stand-in (answering = `ping` → `pong`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_runtime::container::{ContainerConfig, ContainerRuntime, DEFAULT_UID_BASE};
use kiln_runtime::{Runtime, SandboxSpec, TemplateRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

async fn ping(ip: std::net::IpAddr, real_agent: bool) {
    let mut s = tokio::net::TcpStream::connect((ip, kiln_runtime::AGENT_PORT))
        .await
        .unwrap();
    let mut out = String::new();
    if real_agent {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    } else {
        s.write_all(b"ping\n").await.unwrap();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "pong");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(100);
    let bin_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let data =
        std::path::PathBuf::from(std::env::var("KILN_DATA_DIR").unwrap_or("/var/lib/kiln".into()));
    let tpl = kiln_template::ensure_base(&data, DEFAULT_UID_BASE, &kiln_template::NoProgress)
        .expect("base template");
    let real_agent = std::env::var_os("KILN_AGENT_BIN");
    let agent = real_agent
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin_dir.join("kiln-runtime-checker"));
    println!("agent: {}", agent.display());
    let real_agent = real_agent.is_some();
    let mut cfg = ContainerConfig::new(data.join("measure"), agent, bin_dir.join("kiln-spawn"));
    cfg.tag = "m0".into();
    cfg.net = kiln_runtime::container::NetConfig::new("m0");
    cfg.net.subnet = std::net::Ipv4Addr::new(10, 199, 0, 0);
    cfg.net.pool_size = 8;
    cfg.disk_pool = 8;
    cfg.disk_pool_sizes_mib = vec![1024];
    let rt = ContainerRuntime::new(cfg).await.expect("runtime");
    // Sandboxes of an interrupted earlier run were re-attached: end them.
    for h in rt.list().await.unwrap() {
        rt.kill(h.id()).await.unwrap();
    }
    let spec = |id: String| SandboxSpec {
        id,
        template: TemplateRef {
            id: tpl.id.clone(),
            rootfs: tpl.rootfs.clone(),
        },
        vcpus: 1,
        memory_mib: 512,
        disk_mib: 1024,
        env: BTreeMap::new(),
        egress: kiln_runtime::EgressPolicy::internet(true),
    };

    // Sequential creates; the pools refill between them as a server's would.
    let (mut ready, mut answering, mut kill) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let h = rt.create(&spec(format!("m-{i}"))).await.unwrap();
        ready.push(t0.elapsed());
        ping(h.ip, real_agent).await;
        answering.push(t0.elapsed());
        let t1 = Instant::now();
        rt.kill(&h.id).await.unwrap();
        kill.push(t1.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "container: create -> ready byte     p50 {:>8.2?}  p99 {:>8.2?}  (n={n})",
        pct(&mut ready, 0.5),
        pct(&mut ready, 0.99)
    );
    println!(
        "container: create -> agent answers  p50 {:>8.2?}  p99 {:>8.2?}",
        pct(&mut answering, 0.5),
        pct(&mut answering, 0.99)
    );
    println!(
        "container: kill                     p50 {:>8.2?}  p99 {:>8.2?}",
        pct(&mut kill, 0.5),
        pct(&mut kill, 0.99)
    );

    // Host memory per idle sandbox.
    let idle = n;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = meminfo_kib("MemAvailable:");
    let slab_before = meminfo_kib("Slab:");
    let mut ids = Vec::new();
    for i in 0..idle {
        let h = rt.create(&spec(format!("idle-{i}"))).await.unwrap();
        ids.push(h.id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = meminfo_kib("MemAvailable:");
    let slab_after = meminfo_kib("Slab:");
    let mut cg = 0u64;
    for id in &ids {
        cg += rt.stats(id).await.unwrap().memory_used_bytes;
    }
    println!(
        "container: idle sandbox memory (n={idle}): host MemAvailable drop {} KiB each, kernel slab {} KiB each, charged to the sandbox's cgroup {} KiB each (other processes on the machine add noise to MemAvailable)",
        (before.saturating_sub(after)) / idle as u64,
        (slab_after.saturating_sub(slab_before)) / idle as u64,
        cg / 1024 / idle as u64
    );
    for id in &ids {
        rt.kill(id).await.unwrap();
    }
    rt.shutdown().await.unwrap();

    // bubblewrap, same machine, same run.
    let mut bw = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let st = std::process::Command::new("bwrap")
            .args(["--unshare-all", "--ro-bind", "/", "/", "true"])
            .status()
            .expect("bwrap (apt-get install bubblewrap)");
        assert!(st.success());
        bw.push(t0.elapsed());
    }
    println!(
        "bwrap --unshare-all --ro-bind / / true:  p50 {:>8.2?}  p99 {:>8.2?}  (n={n})",
        pct(&mut bw, 0.5),
        pct(&mut bw, 0.99)
    );
}
