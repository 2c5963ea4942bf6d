//! Warm helpers: `kiln-spawn` processes started ahead of time, each already
//! in its own (limit-less) cgroups and network namespace, with its init
//! forked, in its own mount namespace, and a disk image of the size asked
//! for last mounted there, waiting for the sandbox they will become. A
//! create takes one, renames its directory to the sandbox's, writes the
//! limits and sends the config; joining cgroups (an RCU grace period on
//! cgroup v1), making a namespace, exec'ing the helper, attaching a loop
//! device and mounting ext4 are all off its path.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_net::NetLease;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A helper's stdout.
pub(super) type Stdout = tokio::io::BufReader<tokio::process::ChildStdout>;

use super::create::net_err;
use super::spawn::{Prelude, READY_FD};
use super::{blocking, Inner};
use crate::host::sys;
use crate::runtime::RuntimeError;

pub(super) struct Warm {
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    /// The helper's stdout, after its `warm` line.
    pub stdout: Stdout,
    /// Read end of the agent's ready pipe.
    pub ready: OwnedFd,
    pub lease: NetLease,
    /// Name of the cgroup (`kiln/<tag>/<cgroup>`), not the sandbox id.
    pub cgroup: String,
    /// `<data_dir>/sandboxes/.warm-<cgroup>`, renamed to the sandbox's
    /// directory on create: `rootfs/`, `layers/` and maybe `disk.img`.
    pub dir: PathBuf,
    /// Size of `disk.img`, already mounted at `layers/` by the init.
    pub disk_mib: Option<u64>,
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.to_owned();
    move |source| RuntimeError::Io { context, source }
}

/// Starts one warm helper.
pub(super) async fn spawn(inner: &Arc<Inner>) -> Result<Warm, RuntimeError> {
    let (lease, cgroup, dir, disk_mib) = {
        let inner = inner.clone();
        blocking(move || {
            let lease = inner.net.take(true).map_err(net_err)?;
            let n = inner.cgroup_counter.fetch_add(1, Ordering::Relaxed);
            let cgroup = format!("sb-{n}");
            let dir = inner.sandbox_dir(&format!(".warm-{cgroup}"));
            let disk_mib = inner.disk.likely_size();
            let made = (|| {
                inner.cgroups.create_dirs(&cgroup)?;
                for d in ["rootfs", "layers"] {
                    std::fs::create_dir_all(dir.join(d))
                        .map_err(io(&format!("failed to create {}", dir.display())))?;
                }
                if let Some(size) = disk_mib {
                    inner.disk.take(size, &dir.join("disk.img"))?;
                }
                Ok(())
            })();
            if let Err(e) = made {
                let _ = inner.cgroups.kill_and_remove(&cgroup);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = inner.net.release(&lease);
                return Err(e);
            }
            Ok((lease, cgroup, dir, disk_mib))
        })
        .await?
    };
    let image = disk_mib.map(|_| dir.join("disk.img"));
    match start(inner, &lease, &cgroup, image, dir.join("layers")).await {
        Ok((child, stdin, stdout, ready)) => Ok(Warm {
            child,
            stdin,
            stdout,
            ready,
            lease,
            cgroup,
            dir,
            disk_mib,
        }),
        Err(e) => {
            let inner = inner.clone();
            let _ = blocking(move || {
                let _ = inner.cgroups.kill_and_remove(&cgroup);
                let _ = std::fs::remove_dir_all(&dir);
                inner.net.release(&lease).map_err(net_err)
            })
            .await;
            Err(e)
        }
    }
}

async fn start(
    inner: &Arc<Inner>,
    lease: &NetLease,
    cgroup: &str,
    disk_image: Option<PathBuf>,
    layers: PathBuf,
) -> Result<
    (
        tokio::process::Child,
        tokio::process::ChildStdin,
        Stdout,
        OwnedFd,
    ),
    RuntimeError,
> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io("failed to make the ready pipe")(e.into()))?;
    let mut cmd = tokio::process::Command::new(&inner.cfg.spawn_bin);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    sys::dup_into_child(&mut cmd, ready_w.as_raw_fd(), READY_FD);
    let mut child = cmd.spawn().map_err(io(&format!(
        "failed to run the spawn helper {}",
        inner.cfg.spawn_bin.display()
    )))?;
    drop(ready_w);
    let prelude = Prelude {
        netns: lease.netns_path.clone(),
        cgroup_procs: inner.cgroups.procs_files(cgroup),
        seccomp: inner.cfg.seccomp,
        disk_image,
        layers,
    };
    let mut line = serde_json::to_vec(&prelude).expect("a prelude serializes");
    line.push(b'\n');
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(&line)
        .await
        .map_err(io("failed to send the prelude"))?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut said = String::new();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stdout.read_line(&mut said),
    )
    .await;
    if said != "warm\n" {
        let _ = child.start_kill();
        let out = child.wait_with_output().await;
        let why = out
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        return Err(RuntimeError::Other(format!(
            "warm helper failed ({r:?}): {why}"
        )));
    }
    Ok((child, stdin, stdout, ready_r))
}

/// Ends a warm helper that will not be used and frees what it held.
pub(super) fn discard(inner: &Inner, mut warm: Warm) {
    let _ = warm.child.start_kill();
    let _ = inner.cgroups.kill_and_remove(&warm.cgroup);
    let _ = std::fs::remove_dir_all(&warm.dir);
    if let Err(e) = inner.net.release(&warm.lease) {
        tracing::warn!(error = %e, "failed to release a warm helper's network");
    }
}

/// Creates and kills in flight at once that make a burst.
const BURST: usize = 8;
/// How long a refill waits for a burst to pass before it starts the next
/// helper anyway.
const BURST_YIELD: Duration = Duration::from_millis(100);

/// Tops the warm pool up (and the namespace and disk pools behind it), in
/// the background, one refill at a time.
pub(super) fn refill(inner: &Arc<Inner>) {
    if inner.refilling.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if inner.shut_down.load(Ordering::Acquire)
                || inner.warm.lock().unwrap().len() >= inner.cfg.warm_pool
            {
                break;
            }
            // A burst of creates goes first: while one is under way, each
            // new helper waits for it to pass, for BURST_YIELD at most (a
            // steady stream of creates and kills keeps its pool coming).
            let waited = tokio::time::Instant::now();
            while inner.busy.lock().unwrap().len() >= BURST && waited.elapsed() < BURST_YIELD {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            match spawn(&inner).await {
                Ok(w) => inner.warm.lock().unwrap().push(w),
                Err(e) => {
                    tracing::warn!(error = %e, "failed to start a warm helper");
                    break;
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            let i2 = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = i2.net.refill() {
                    tracing::warn!(error = %e, "failed to refill the network pool");
                }
                if let Err(e) = i2.disk.refill() {
                    tracing::warn!(error = %e, "failed to refill the disk pool");
                }
            })
            .await;
            inner.refilling.store(false, Ordering::Release);
        }
    });
}
