//! The gVisor runtime on the real kernel and Debian's runsc: create, exec
//! and files through the stand-in agent, kill leaving nothing behind,
//! limits, memory pause and resume (a process and its memory kept, across
//! a restart of the runtime), a memory snapshot restored twice into two
//! independent copies. Needs root and runsc; skipped (with a line saying
//! so) without them. Run under /tmp/kiln-e2e.lock.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ask, spec, CHECKER};
use kiln_runtime::gvisor::{GvisorConfig, GvisorRuntime, NetConfig};
use kiln_runtime::{Found, ResumeMode, Runtime, StateMode};

fn runsc() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the gVisor runtime's tests need root");
        return None;
    }
    let r = kiln_runtime::gvisor::runsc::find(None);
    if r.is_none() {
        eprintln!("skipped: runsc is not installed");
    }
    r
}

/// Runtime config for a test: tag `g<n>`, subnet 10.(230+n).0.0/16.
fn config(n: u8) -> GvisorConfig {
    let tag = format!("g{n}");
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kiln-gvisor")
        .join(&tag);
    let mut cfg = GvisorConfig::new(data, CHECKER.into(), runsc().unwrap());
    cfg.tag = tag.clone();
    cfg.net = NetConfig::new(&tag);
    cfg.net.subnet = std::net::Ipv4Addr::new(10, 230 + n, 0, 0);
    cfg.net.pool_size = 2;
    cfg.disk_pool = 1;
    cfg.disk_pool_sizes_mib = vec![64];
    cfg.ready_timeout = Duration::from_secs(30);
    cfg
}

/// Kills every sandbox of the runtime and releases the host, also when a
/// test panics.
struct Guard(Option<GvisorRuntime>);

impl Guard {
    async fn finish(mut self) {
        if let Some(rt) = self.0.take() {
            teardown(&rt).await;
        }
    }
}

async fn teardown(rt: &GvisorRuntime) {
    for f in rt.list().await.unwrap() {
        rt.kill(f.id()).await.unwrap();
    }
    rt.shutdown().await.unwrap();
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
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
}

/// A runtime on the test's directory with nothing of an earlier
/// (interrupted) run left: recovery re-attaches what still runs, and it
/// is killed here.
async fn started(cfg: GvisorConfig) -> GvisorRuntime {
    let rt = GvisorRuntime::new(cfg).await.expect("runtime starts");
    for f in rt.list().await.unwrap() {
        rt.kill(f.id()).await.unwrap();
    }
    for s in rt.list_snapshots().await.unwrap() {
        rt.delete_snapshot(&s.id).await.unwrap();
    }
    rt
}

async fn sh(ip: std::net::IpAddr, cmd: &str) -> String {
    let out = ask(ip, &format!("sh {cmd}")).await;
    out.split_once('\n')
        .map(|(_, o)| o.trim().to_owned())
        .unwrap_or_default()
}

/// What a runtime of data dir `data` and tag `tag` has on the host.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    mounts: usize,
    sandbox_dirs: usize,
    runsc_states: usize,
    cgroups: usize,
    processes: usize,
}

fn leftovers(data: &Path, tag: &str) -> Leftovers {
    let under = data.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ').nth(4).is_some_and(|m| {
                m.starts_with(&under)
                    || m.starts_with(&format!("{}/{tag}/", kiln_runtime::gvisor::MOUNTS_ROOT))
            })
        })
        .count();
    let count = |d: PathBuf| std::fs::read_dir(d).map(|rd| rd.count()).unwrap_or(0);
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).into_owned();
                    c.starts_with("runsc") && c.contains(&under)
                })
                .unwrap_or(false)
        })
        .count();
    Leftovers {
        mounts,
        sandbox_dirs: count(data.join("sandboxes")),
        runsc_states: count(data.join("runsc")),
        cgroups: cgroups_of(tag),
        processes,
    }
}

impl Leftovers {
    fn none() -> Self {
        Leftovers {
            mounts: 0,
            sandbox_dirs: 0,
            runsc_states: 0,
            cgroups: 0,
            processes: 0,
        }
    }
}

/// Sandbox cgroups of the tag (directories under `kiln/<tag>/` of the
/// memory controller, or of the v2 root).
fn cgroups_of(tag: &str) -> usize {
    let v1 = Path::new("/sys/fs/cgroup/memory/kiln").join(tag);
    let v2 = Path::new("/sys/fs/cgroup/kiln").join(tag);
    let d = if v1.exists() { v1 } else { v2 };
    std::fs::read_dir(d)
        .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_files_limits_and_kill_leave_nothing() {
    if runsc().is_none() {
        return;
    }
    let cfg = config(1);
    let data = cfg.data_dir.clone();
    let tag = cfg.tag.clone();
    let rt = started(cfg).await;
    let guard = Guard(Some(rt.clone()));
    let base = leftovers(&data, &tag);
    assert_eq!(base, Leftovers::none());

    let h = rt.create(&spec("gv-a")).await.unwrap();
    // Exec through the agent, on gVisor's kernel, not the host's.
    assert_eq!(sh(h.ip, "echo hi; id -u").await, "hi\n0");
    let version = sh(h.ip, "cat /proc/version").await;
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    assert_ne!(
        version.trim(),
        host_version.trim(),
        "runs on gVisor's kernel"
    );
    assert_eq!(sh(h.ip, "hostname").await, "gv-a");
    // Files land on the sandbox's own disk, never in the template.
    sh(h.ip, "echo data > /root/file").await;
    assert_eq!(sh(h.ip, "cat /root/file").await, "data");
    assert!(!common::tiny_rootfs().join("root/file").exists());
    assert_eq!(
        std::fs::read_to_string(
            Path::new(kiln_runtime::gvisor::MOUNTS_ROOT).join("g1/gv-a/layers/upper/root/file")
        )
        .unwrap(),
        "data\n"
    );
    // Files a user inside makes belong to that user's host uid range.
    let meta = std::fs::metadata(
        Path::new(kiln_runtime::gvisor::MOUNTS_ROOT).join("g1/gv-a/layers/upper/root/file"),
    )
    .unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        kiln_runtime::container::DEFAULT_UID_BASE
    );

    // Limits: the cgroup runsc made (the sandbox's memory with the
    // sentry's headroom; the agent keeps the sandbox's own inside), gVisor's
    // view of memory, the disk.
    let host_limit = kiln_runtime::gvisor::host_memory_limit(256 << 20);
    let mem_limit =
        std::fs::read_to_string("/sys/fs/cgroup/memory/kiln/g1/gv-a/memory.limit_in_bytes")
            .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/kiln/g1/gv-a/memory.max"))
            .unwrap();
    assert_eq!(mem_limit.trim(), host_limit.to_string());
    let meminfo = sh(h.ip, "head -1 /proc/meminfo").await;
    let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        kib <= host_limit >> 10,
        "gVisor shows the limit, not the host: {meminfo}"
    );
    let fill = ask(h.ip, "fill /root/big 200").await;
    assert!(fill.contains("errno=28"), "a 64 MiB disk fills up: {fill}");
    sh(h.ip, "rm /root/big").await;
    let st = rt.stats("gv-a").await.unwrap();
    assert_eq!(st.memory_limit_bytes, 256 << 20);
    assert_eq!(st.disk_limit_bytes, 64 << 20);
    assert!(st.memory_used_bytes > 0);

    // A second sandbox is separate: its own address, files and kernel.
    let h2 = rt.create(&spec("gv-b")).await.unwrap();
    assert_ne!(h.ip, h2.ip);
    assert_eq!(
        sh(h2.ip, "cat /root/file 2>&1 || echo none")
            .await
            .lines()
            .last()
            .unwrap(),
        "none"
    );
    assert_eq!(rt.list().await.unwrap().len(), 2);

    rt.kill("gv-a").await.unwrap();
    rt.kill("gv-b").await.unwrap();
    rt.kill("gv-b").await.unwrap(); // idempotent
    assert!(rt.list().await.unwrap().is_empty());
    assert_eq!(leftovers(&data, &tag), Leftovers::none());
    assert!(common::ask_timeout(h.ip, "ping", Duration::from_secs(2))
        .await
        .is_err());
    guard.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pause_keeps_processes_across_a_restart_and_resumes() {
    if runsc().is_none() {
        return;
    }
    let cfg = config(2);
    let data = cfg.data_dir.clone();
    let tag = cfg.tag.clone();
    let rt = started(cfg.clone()).await;
    let guard = Guard(Some(rt.clone()));

    let h = rt.create(&spec("gv-p")).await.unwrap();
    // A process, its memory (a tmpfs file is memory in gVisor) and a file.
    sh(h.ip, "sleep 100000 >/dev/null 2>&1 & echo $! > /tmp/pid; echo in-memory > /tmp/m; echo on-disk > /root/d").await;
    let pid = sh(h.ip, "cat /tmp/pid").await;
    assert!(!pid.is_empty());

    let p = rt.pause("gv-p", StateMode::Memory).await.unwrap();
    assert!(p.durable);
    assert!(p.bytes_on_disk > 0);
    assert_eq!(
        rt.list().await.unwrap(),
        vec![Found::Paused {
            id: "gv-p".into(),
            mode: StateMode::Memory
        }]
    );
    // Paused on disk: no process, no cgroup, no mount, a checkpoint.
    let l = leftovers(&data, &tag);
    assert_eq!(
        (l.processes, l.cgroups, l.mounts, l.runsc_states),
        (0, 0, 0, 0)
    );
    assert!(data.join("sandboxes/gv-p/checkpoint").is_dir());
    assert!(common::ask_timeout(h.ip, "ping", Duration::from_secs(1))
        .await
        .is_err());
    // Pausing again or resuming a running one is refused.
    assert!(rt.pause("gv-p", StateMode::Memory).await.is_err());

    // kilnd restarts: a new runtime on the same directory finds it paused.
    let mut guard = guard;
    guard.0.take(); // abandoned, not torn down: as a crashed kilnd
    drop(guard);
    let rt = GvisorRuntime::new(cfg.clone())
        .await
        .expect("runtime restarts");
    let guard = Guard(Some(rt.clone()));
    assert_eq!(
        rt.list().await.unwrap(),
        vec![Found::Paused {
            id: "gv-p".into(),
            mode: StateMode::Memory
        }]
    );
    let h = rt.resume(&spec("gv-p"), ResumeMode::Restore).await.unwrap();
    assert_eq!(sh(h.ip, "cat /tmp/m /root/d").await, "in-memory\non-disk");
    assert_eq!(
        sh(h.ip, &format!("kill -0 {pid} && echo alive")).await,
        "alive"
    );
    assert!(!data.join("sandboxes/gv-p/checkpoint").exists());
    assert!(matches!(
        rt.resume(&spec("gv-p"), ResumeMode::Restore).await,
        Err(kiln_runtime::RuntimeError::WrongState(_))
    ));

    // Filesystem-only: files stay, processes and memory do not.
    rt.pause("gv-p", StateMode::Filesystem).await.unwrap();
    let h = rt.resume(&spec("gv-p"), ResumeMode::Restore).await.unwrap();
    assert_eq!(
        sh(h.ip, "cat /root/d; cat /tmp/m 2>/dev/null || echo no-m").await,
        "on-disk\nno-m"
    );

    rt.kill("gv-p").await.unwrap();
    assert_eq!(leftovers(&data, &tag), Leftovers::none());
    guard.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_snapshot_restores_twice_into_independent_copies() {
    if runsc().is_none() {
        return;
    }
    let cfg = config(3);
    let data = cfg.data_dir.clone();
    let tag = cfg.tag.clone();
    let rt = started(cfg).await;
    let guard = Guard(Some(rt.clone()));

    let src = rt.create(&spec("gv-src")).await.unwrap();
    sh(
        src.ip,
        "sleep 100000 >/dev/null 2>&1 & echo $! > /tmp/pid; echo 1 > /tmp/m; echo 1 > /root/d",
    )
    .await;
    let pid = sh(src.ip, "cat /tmp/pid").await;
    let info = rt
        .snapshot("gv-src", "snap1", StateMode::Memory)
        .await
        .unwrap();
    assert_eq!(info.mode, StateMode::Memory);
    assert!(info.size_bytes > 0);
    assert_eq!(info.content_hash.len(), 64);
    assert_eq!(rt.list_snapshots().await.unwrap(), vec![info.clone()]);
    // The source goes on, at the same address, its process alive.
    assert_eq!(
        sh(src.ip, &format!("kill -0 {pid} && cat /tmp/m")).await,
        "1"
    );

    let a = rt.restore(&spec("gv-c1"), "snap1").await.unwrap();
    let b = rt.restore(&spec("gv-c2"), "snap1").await.unwrap();
    assert!(a.ip != b.ip && a.ip != src.ip && b.ip != src.ip);
    for h in [&a, &b] {
        assert_eq!(
            sh(h.ip, &format!("kill -0 {pid} && cat /tmp/m /root/d")).await,
            "1\n1",
            "each copy has the process, the memory and the files"
        );
    }
    // Independent: a change in one is seen by no other.
    sh(a.ip, "echo a > /tmp/m; echo a > /root/d").await;
    sh(src.ip, "echo s > /root/d").await;
    assert_eq!(sh(a.ip, "cat /tmp/m /root/d").await, "a\na");
    assert_eq!(sh(b.ip, "cat /tmp/m /root/d").await, "1\n1");
    assert_eq!(sh(src.ip, "cat /tmp/m /root/d").await, "1\ns");

    // Unknown snapshots are 404s; deleting one keeps its copies running.
    assert!(matches!(
        rt.restore(&spec("gv-c3"), "nope").await,
        Err(kiln_runtime::RuntimeError::SnapshotNotFound(_))
    ));
    rt.delete_snapshot("snap1").await.unwrap();
    assert!(rt.list_snapshots().await.unwrap().is_empty());
    assert_eq!(sh(b.ip, "cat /tmp/m").await, "1");

    for id in ["gv-src", "gv-c1", "gv-c2"] {
        rt.kill(id).await.unwrap();
    }
    assert_eq!(leftovers(&data, &tag), Leftovers::none());
    guard.finish().await;
}
