//! Shared by the container runtime's integration tests: a tiny busybox
//! rootfs, one runtime per test with its own tag, data directory and subnet,
//! and a guard that kills whatever a test leaves, even when it panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kiln_runtime::container::{ContainerConfig, ContainerRuntime, NetConfig, DEFAULT_UID_BASE};
use kiln_runtime::{EgressPolicy, Runtime, SandboxSpec, TemplateRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CHECKER: &str = env!("CARGO_BIN_EXE_kiln-runtime-checker");
pub const SPAWN: &str = env!("CARGO_BIN_EXE_kiln-spawn");

/// These tests need root (namespaces, cgroups, mounts, nftables).
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: the container runtime's tests need root");
    }
    root
}

fn tmp_base() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-runtime")
}

/// A root filesystem with busybox, the glibc the checker needs, and
/// `/host-owned`, a file owned by real root (not mapped inside).
pub fn tiny_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let root = tmp_base().join("tiny-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "bin",
            "sbin",
            "etc",
            "proc",
            "dev",
            "sys",
            "tmp",
            "root",
            "mnt",
            "usr/local/bin",
            "lib64",
            "lib/x86_64-linux-gnu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "ls", "cat", "echo", "dd", "id", "ps", "sleep", "mkdir", "rm", "touch", "wc",
            "head", "df", "hostname", "whoami", "stat", "true",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // The checker's shared libraries, at the same paths.
        let ldd = std::process::Command::new("ldd")
            .arg(CHECKER)
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from);
            if let Some(p) = path {
                let dst = root.join(p.strip_prefix("/").unwrap());
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(&p, &dst).unwrap();
            }
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(root.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        std::fs::write(root.join("usr/local/bin/kiln-agent"), "").unwrap();
        kiln_template::shift_ownership(&root, DEFAULT_UID_BASE).unwrap();
        std::fs::write(root.join("host-owned"), "host secret\n").unwrap();
        assert_eq!(std::fs::metadata(root.join("host-owned")).unwrap().uid(), 0);
        root
    })
}

pub fn template() -> TemplateRef {
    TemplateRef {
        id: "tiny".into(),
        rootfs: tiny_rootfs().to_path_buf(),
    }
}

pub fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        template: template(),
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 64,
        env: BTreeMap::new(),
        egress: EgressPolicy::internet(true),
    }
}

/// Runtime config for a test: tag `t<n>`, subnet 10.(200+n).0.0/16.
pub fn config(n: u8) -> ContainerConfig {
    let tag = format!("t{n}");
    let data = tmp_base().join(&tag);
    let mut cfg = ContainerConfig::new(data, CHECKER.into(), SPAWN.into());
    cfg.tag = tag.clone();
    cfg.net = NetConfig::new(&tag);
    cfg.net.subnet = std::net::Ipv4Addr::new(10, 200 + n, 0, 0);
    cfg.net.pool_size = 2;
    cfg.warm_pool = 2;
    cfg.disk_pool = 2;
    cfg.disk_pool_sizes_mib = vec![64];
    cfg
}

/// A runtime that is torn down when dropped, also on panic: every sandbox
/// killed, the pool, bridge, firewall and layers' filesystem removed.
pub struct TestRuntime {
    pub rt: ContainerRuntime,
    done: bool,
}

impl TestRuntime {
    pub async fn new(cfg: ContainerConfig) -> Self {
        Self {
            rt: ContainerRuntime::new(cfg).await.expect("runtime starts"),
            done: false,
        }
    }

    /// Forgets the runtime without tearing it down, as a crashed kilnd
    /// would: its sandboxes keep running.
    pub fn abandon(mut self) -> ContainerRuntime {
        self.done = true;
        self.rt.clone()
    }

    pub async fn finish(mut self) {
        teardown(&self.rt).await;
        self.done = true;
    }
}

async fn teardown(rt: &ContainerRuntime) {
    for h in rt.list().await.unwrap() {
        rt.kill(h.id()).await.unwrap();
    }
    rt.shutdown().await.unwrap();
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let rt = self.rt.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(teardown(&rt))
        })
        .join();
    }
}

/// Sends one request line to the stand-in agent and returns its answer.
pub async fn ask(ip: IpAddr, line: &str) -> String {
    ask_timeout(ip, line, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{line:?} to {ip}: {e}"))
}

pub async fn ask_timeout(ip: IpAddr, line: &str, t: Duration) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(SocketAddr::new(ip, kiln_runtime::AGENT_PORT))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        // End with a reset, not a FIN: the sandbox's side (which closed
        // first) is then gone at once instead of waiting in FIN_WAIT2 or
        // TIME_WAIT, states gVisor's netstack cannot checkpoint.
        let _ = s.set_zero_linger();
        Ok(out)
    };
    tokio::time::timeout(t, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Host objects a runtime of tag `tag` could leave behind.
#[derive(Debug, PartialEq, Eq)]
pub struct HostCount {
    pub mounts: usize,
    pub netns: usize,
    pub veths: usize,
    pub cgroups: usize,
    pub sandbox_processes: usize,
}

pub fn host_count(tag: &str) -> HostCount {
    // Mounts a runtime could leak into the host's namespace: namespace
    // files, anything under a kiln path, loop devices, overlays. (iproute2
    // makes /run/netns itself a mount point once, for every user of
    // `ip netns`: not counted. Other processes' mounts are not counted, so
    // that work elsewhere on the machine does not disturb the count.)
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) != Some("/run/netns"))
        .filter(|l| l.contains("kiln") || l.contains("/dev/loop") || l.contains(" overlay "))
        .count();
    let (netns, veths) =
        kiln_net::count_host_objects(&format!("kiln-{tag}-"), &format!("kv{tag}-"));
    let mut cgroups = 0;
    for c in ["memory", "cpu", "pids", "freezer", ""] {
        let d = Path::new("/sys/fs/cgroup").join(c).join("kiln").join(tag);
        if let Ok(rd) = std::fs::read_dir(d) {
            cgroups += rd.flatten().filter(|e| e.path().is_dir()).count();
        }
    }
    let sandbox_processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path())
                .map(|m| {
                    (m.uid() >= DEFAULT_UID_BASE && m.uid() < DEFAULT_UID_BASE + 65536)
                        || kiln_runtime::host::uidrange::is_sandbox_uid(m.uid())
                })
                .unwrap_or(false)
        })
        .count();
    HostCount {
        mounts,
        netns,
        veths,
        cgroups,
        sandbox_processes,
    }
}
