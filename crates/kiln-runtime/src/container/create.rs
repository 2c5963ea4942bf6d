//! `create`: from a spec to an agent that answers.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::spawn::SpawnConfig;
use super::warm::{self, Warm};
use super::{blocking, Inner, Phase, Record, Sandbox};
use crate::host::cgroup::{Limits, CPU_PERIOD_US};
use crate::host::sys;
use crate::host::{fsutil, HostError};
use crate::runtime::{RuntimeError, RuntimeEvent, SandboxHandle, SandboxSpec};
use std::path::Path;

pub(crate) fn validate(spec: &SandboxSpec) -> Result<(), RuntimeError> {
    let id = &spec.id;
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(RuntimeError::InvalidSpec(format!(
            "sandbox id {id:?} must be 1-63 of [A-Za-z0-9_-], starting with a letter or digit"
        )));
    }
    if spec.vcpus == 0 || spec.memory_mib < 16 || spec.disk_mib < 16 {
        return Err(RuntimeError::InvalidSpec(
            "a sandbox needs at least 1 vCPU, 16 MiB of memory and 16 MiB of disk".into(),
        ));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad environment variable {k:?}"
            )));
        }
    }
    Ok(())
}

/// A create that failed, with what it had made so far (to clean up).
type Failed = Box<(RuntimeError, Record)>;

/// Frees the id reservation when create returns, whatever happens.
pub(super) struct Reservation<'a>(pub(super) &'a Inner, pub(super) String);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.busy.lock().unwrap().remove(&self.1);
    }
}

/// How a sandbox's filesystem comes together at a boot.
#[derive(Debug, Clone)]
pub(super) enum Boot {
    /// A fresh upper on the template with these snapshot layers between
    /// (top first; none for a plain create).
    Fresh { layers: Vec<String> },
    /// A paused sandbox's own record: its kept upper and layers.
    Resume(Box<Record>),
}

pub(super) async fn create(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
) -> Result<SandboxHandle, RuntimeError> {
    validate(spec)?;
    super::egress::check(&spec.egress)?;
    {
        let exists = inner.sandboxes.lock().unwrap().contains_key(&spec.id)
            || inner.paused.lock().unwrap().contains_key(&spec.id);
        if exists || !inner.busy.lock().unwrap().insert(spec.id.clone()) {
            return Err(RuntimeError::AlreadyExists(spec.id.clone()));
        }
    }
    let _reserved = Reservation(inner, spec.id.clone());
    boot(inner, spec, Boot::Fresh { layers: Vec::new() }).await
}

/// Starts a sandbox from a warm helper: a new one (fresh upper, maybe on
/// snapshot layers) or a paused one again (its kept upper). The caller
/// holds the id's reservation. A failed resume leaves the paused state as
/// it was.
pub(super) async fn boot(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    how: Boot,
) -> Result<SandboxHandle, RuntimeError> {
    let pooled = inner.warm.lock().unwrap().pop();
    let warm = match pooled {
        Some(w) => w,
        None => warm::spawn(inner).await?,
    };
    warm::refill(inner);
    let Warm {
        child,
        stdin,
        stdout,
        ready,
        lease,
        cgroup,
        dir: warm_dir,
        disk_mib: warm_disk,
    } = warm;
    let rec = Record {
        id: spec.id.clone(),
        cgroup,
        pid: 0,
        start_time: 0,
        net_index: lease.index,
        netns: lease.netns.clone(),
        veth: lease.veth.clone(),
        ip: lease.ip,
        internet: true,
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_mib << 20,
        disk_bytes: spec.disk_mib << 20,
        disk_image: String::new(),
        layers: match &how {
            Boot::Fresh { layers } => layers.clone(),
            Boot::Resume(old) => old.layers.clone(),
        },
        phase: match &how {
            Boot::Fresh { .. } => Phase::Running,
            Boot::Resume(_) => Phase::Resuming,
        },
        uid_base: 0,
    };
    let resuming = matches!(how, Boot::Resume(_));
    let rec_copy = rec.clone();
    let prepared = {
        let inner = inner.clone();
        let spec = spec.clone();
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || prepare(&inner, &spec, rec, &how, &warm_dir, warm_disk))
            .await
            .unwrap_or_else(|e| {
                Err(Box::new((
                    RuntimeError::Other(format!("blocking task failed: {e}")),
                    rec_copy,
                )))
            })
    };
    let r = match prepared {
        Ok((rec, cfg)) => start(inner, rec, &cfg, child, stdin, stdout, ready).await,
        Err(e) => Err(e),
    };
    let r = match r {
        // A resumed sandbox is running for good once its agent answers.
        Ok(mut rec) if resuming => {
            rec.phase = Phase::Running;
            match write_record(inner, &rec) {
                Ok(()) => Ok(rec),
                Err(e) => Err(Box::new((e, rec))),
            }
        }
        r => r,
    };
    match r {
        Ok(rec) => {
            inner.paused.lock().unwrap().remove(&rec.id);
            let oom = inner.cgroups.stats(&rec.cgroup).oom_kills;
            let sb = Arc::new(Sandbox::new(rec, oom, false));
            let handle = sb.rec.handle();
            watch(inner, &sb);
            inner
                .sandboxes
                .lock()
                .unwrap()
                .insert(sb.rec.id.clone(), sb);
            tracing::debug!(id = %spec.id, "sandbox created");
            Ok(handle)
        }
        Err(failed) => {
            let (e, rec) = *failed;
            let inner2 = inner.clone();
            let rec2 = rec.clone();
            let cleaned = blocking(move || {
                if resuming {
                    super::pause::undo_resume(&inner2, &rec2)
                } else {
                    super::kill::destroy(&inner2, &rec2, true)
                }
            })
            .await;
            if let Err(e2) = cleaned {
                tracing::error!(id = %rec.id, error = %e2, "failed to clean up a failed start");
            }
            Err(e)
        }
    }
}

/// Host-side preparation (blocking): the sandbox's directory, egress,
/// limits, layers, state.
fn prepare(
    inner: &Inner,
    spec: &SandboxSpec,
    mut rec: Record,
    how: &Boot,
    warm_dir: &Path,
    warm_disk: Option<u64>,
) -> Result<(Record, SpawnConfig), Failed> {
    let cfg = &inner.cfg;
    let lower = &spec.template.rootfs;
    let dir = inner.sandbox_dir(&spec.id);
    let placed = match how {
        // From here on the warm helper's directory is the sandbox's (and a
        // failure's clean-up removes it with the rest).
        Boot::Fresh { .. } => std::fs::rename(warm_dir, &dir)
            .map_err(|source| HostError::io("rename a warm helper's directory to", &dir)(source)),
        // The paused sandbox's directory stays (its disk and state are in
        // it); the helper's mount points move in, the rest of its
        // directory goes (its own disk too: the init mounts the kept one).
        Boot::Resume(_) => (|| {
            for d in ["rootfs", "layers", "ro"] {
                let at = dir.join(d);
                if at.exists() {
                    std::fs::remove_dir_all(&at).map_err(HostError::io("remove", &at))?;
                }
            }
            for d in ["rootfs", "layers"] {
                std::fs::rename(warm_dir.join(d), dir.join(d))
                    .map_err(HostError::io("move a mount point to", dir.join(d)))?;
            }
            std::fs::remove_dir_all(warm_dir).map_err(HostError::io("remove", warm_dir))
        })(),
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(warm_dir);
        return Err(Box::new((e.into(), rec)));
    }
    let r = (|| {
        let meta = std::fs::metadata(lower).map_err(|source| RuntimeError::Io {
            context: format!("template rootfs {} is not readable", lower.display()),
            source,
        })?;
        if meta.uid() != cfg.uid_base {
            return Err(RuntimeError::InvalidSpec(format!(
                "template rootfs {} is owned by uid {}, not by the sandbox root's host uid {} \
                 (shift it with kiln_template::shift_ownership)",
                lower.display(),
                meta.uid(),
                cfg.uid_base
            )));
        }
        if !spec.egress.internet {
            inner.net.set_offline(&rec.lease(), true).map_err(net_err)?;
            rec.internet = false;
        }
        let ro_layers = super::snapshot::layer_mounts(inner, &dir, &rec.layers)?;
        let rootfs = dir.join("rootfs");
        let layers = dir.join("layers");
        inner.cgroups.set_limits(
            &rec.cgroup,
            &Limits {
                memory_bytes: rec.memory_bytes,
                cpu_quota_us: u64::from(spec.vcpus) * CPU_PERIOD_US,
                pids_max: pids_limit(spec.memory_mib, cfg.pids_max),
            },
        )?;
        let (disk_image, premounted) = match how {
            Boot::Resume(old) => (dir.join(&old.disk_image), false),
            Boot::Fresh { .. } => {
                inner.disk.want(spec.disk_mib);
                if warm_disk == Some(spec.disk_mib) {
                    (dir.join("disk.img"), true)
                } else {
                    let image = dir.join(format!("disk-{}.img", spec.disk_mib));
                    inner.disk.take(spec.disk_mib, &image)?;
                    (image, false)
                }
            }
        };
        rec.disk_image = disk_image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rec.uid_base = sandbox_uids(inner, lower, &rec.cgroup)?;
        write_record(inner, &rec)?;
        Ok(SpawnConfig {
            id: spec.id.clone(),
            lower: lower.clone(),
            disk_image,
            layers,
            premounted,
            rootfs,
            ro_layers,
            uid_base: rec.uid_base,
            uid_count: cfg.uid_count,
            store_uid: cfg.uid_base,
            agent_bin: inner.bin(&cfg.agent_bin),
            agent_path: cfg.agent_path.clone(),
            binds: cfg
                .template_binds
                .get(&spec.template.id)
                .into_iter()
                .flatten()
                .map(|(host, inside)| (inner.bin(host), inside.clone()))
                .collect(),
            args: cfg.agent_args.clone(),
            tmp_size_bytes: rec.memory_bytes,
            log: cfg.agent_log.clone(),
        })
    })();
    match r {
        Ok(s) => Ok((rec, s)),
        Err(e) => Err(Box::new((e, rec))),
    }
}

/// The sandbox's host uid range: one of its own (claimed for as long as
/// its cgroup exists) where ranges are configured and the template's
/// filesystem takes idmapped mounts; else the range the layers are stored
/// with, shared by every such sandbox.
fn sandbox_uids(inner: &Inner, lower: &Path, cgroup: &str) -> Result<u32, RuntimeError> {
    let Some(ranges) = &inner.uid_ranges else {
        return Ok(inner.cfg.uid_base);
    };
    let dev = std::fs::metadata(lower).map(|m| m.dev()).unwrap_or(0);
    let idmaps = *inner
        .idmap_ok
        .lock()
        .unwrap()
        .entry(dev)
        .or_insert_with(|| {
            let probe = std::process::Command::new(&inner.cfg.spawn_bin)
                .arg(super::spawn::PROBE_IDMAP)
                .arg(lower)
                .output();
            match probe {
                Ok(out) if out.status.success() => true,
                Ok(out) => {
                    tracing::warn!(
                        "sandboxes of templates on the filesystem of {} share one host uid \
                         range: {}",
                        lower.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!("cannot run {}: {e}", inner.cfg.spawn_bin.display());
                    false
                }
            }
        });
    if !idmaps {
        return Ok(inner.cfg.uid_base);
    }
    Ok(ranges.claim(&inner.cgroups.dir(cgroup))?)
}

/// A sandbox's pids.max: 4 per MiB of memory, at least 1024, never more
/// than `most` (the operator's bound wins). Sized so that a fork bomb meets pids.max before the memory limit
/// (a shell costs about 170 KiB of kernel and user memory): stuck at
/// pids.max it only spins in failing forks inside its CPU quota, while one
/// that meets the memory limit first churns through OOM kills, exits and
/// forks, and every exit and fork takes locks the whole host shares.
pub(crate) fn pids_limit(memory_mib: u64, most: u64) -> u64 {
    memory_mib.saturating_mul(4).max(1024).min(most)
}

pub(super) fn net_err(e: kiln_net::NetError) -> RuntimeError {
    RuntimeError::Other(format!("network: {e}"))
}

/// Writes the sandbox's `state.json`: whole or not at all, and durable
/// when this returns (the pause and resume of a sandbox's kept state rely
/// on it).
pub(super) fn write_record(inner: &Inner, rec: &Record) -> Result<(), RuntimeError> {
    let path = inner.sandbox_dir(&rec.id).join("state.json");
    let json = serde_json::to_vec_pretty(rec).expect("a record serializes");
    Ok(fsutil::write_atomic(&path, &json)?)
}

/// Sends the config to the warm helper and waits for the agent's ready byte.
async fn start(
    inner: &Arc<Inner>,
    mut rec: Record,
    spawn_cfg: &SpawnConfig,
    child: tokio::process::Child,
    mut stdin: tokio::process::ChildStdin,
    mut stdout: warm::Stdout,
    ready: OwnedFd,
) -> Result<Record, Failed> {
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| RuntimeError::Io { context, source }
    };
    let r = async {
        let mut line = serde_json::to_vec(spawn_cfg).expect("a spawn config serializes");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .map_err(io("failed to send the spawn config"))?;
        drop(stdin);
        let mut said = String::new();
        let _ = stdout.read_line(&mut said).await;
        let out = child
            .wait_with_output()
            .await
            .map_err(io("failed to wait for the spawn helper"))?;
        if !out.status.success() {
            return Err(RuntimeError::Other(format!(
                "failed to start sandbox {}: {}",
                spawn_cfg.id,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Started {
            pid: i32,
        }
        let started: Started = serde_json::from_str(&said)
            .map_err(|e| RuntimeError::Other(format!("spawn helper said {said:?}: {e}")))?;
        Ok(started.pid)
    }
    .await;
    match r {
        Ok(pid) => {
            rec.pid = pid;
            rec.start_time = sys::start_time(pid).unwrap_or(0);
        }
        Err(e) => return Err(Box::new((e, rec))),
    }
    if let Err(e) = write_record(inner, &rec) {
        return Err(Box::new((e, rec)));
    }
    // The init has mounted its disks (the loop devices are no longer
    // needed) and exec'd the agent; nothing of the workload runs yet.
    if let Err(e) = inner.cgroups.restrict_devices(&rec.cgroup) {
        return Err(Box::new((e.into(), rec)));
    }
    let r = async {
        let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready)
            .map_err(io("failed to watch the ready pipe"))?;
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(inner.cfg.ready_timeout, ready.read(&mut byte))
            .await
            .map_err(|_| {
                RuntimeError::Other(format!(
                    "agent of {} did not report ready within {:?}",
                    spawn_cfg.id, inner.cfg.ready_timeout
                ))
            })?
            .map_err(io("failed to read the ready pipe"))?;
        if n == 0 {
            return Err(RuntimeError::Other(format!(
                "agent of {} exited before it was ready",
                spawn_cfg.id
            )));
        }
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Ok(rec),
        Err(e) => Err(Box::new((e, rec))),
    }
}

/// Watches the sandbox's init; when it dies on its own, reaps it and reports
/// `RuntimeEvent::Exited`.
pub(super) fn watch(inner: &Arc<Inner>, sb: &Arc<Sandbox>) {
    let pid = sb.rec.pid;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(id = %sb.rec.id, error = %e, "cannot watch the sandbox's init");
            return;
        }
    };
    let weak = Arc::downgrade(inner);
    let id = sb.rec.id.clone();
    let task = tokio::spawn(async move {
        let Ok(afd) = sys::async_fd(pidfd) else {
            return;
        };
        let _ = afd.readable().await;
        let exit_code = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => Some(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => Some(128 + s as i32),
            _ => None,
        };
        let Some(inner) = weak.upgrade() else { return };
        let sb = inner.sandboxes.lock().unwrap().get(&id).cloned();
        if let Some(sb) = sb {
            let n = inner.cgroups.stats(&sb.rec.cgroup).oom_kills;
            let oom_killed =
                n > sb.oom_kills.load(Ordering::Acquire) && exit_code == Some(128 + libc::SIGKILL);
            tracing::info!(id = %id, ?exit_code, oom_killed, "sandbox init exited");
            let _ = inner.events.send(RuntimeEvent::Exited {
                id,
                oom_killed,
                exit_code,
            });
        }
    });
    *sb.watcher.lock().unwrap() = Some(task.abort_handle());
}

#[cfg(test)]
mod tests {
    use super::pids_limit;

    #[test]
    fn pids_follow_memory_within_bounds() {
        assert_eq!(pids_limit(256, 4096), 1024);
        assert_eq!(pids_limit(512, 4096), 2048);
        assert_eq!(pids_limit(8192, 4096), 4096);
        assert_eq!(pids_limit(8192, 500), 500);
        assert_eq!(pids_limit(u64::MAX, 4096), 4096);
    }
}
