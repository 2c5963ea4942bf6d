//! `create`, and the boot every start shares (create, resume, restore from
//! a snapshot): disk, network namespace, overlay, bundle, then `runsc run`
//! or `runsc restore`, then wait for the agent.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bundle::Bundle;
use super::{blocking, net_err, Inner, Phase, Record, Sandbox};
use crate::host::{fsutil, overlay, sys, HostError};
use crate::runtime::{RuntimeError, RuntimeEvent, SandboxHandle, SandboxSpec, AGENT_PORT};

/// CPU period of the sandboxes' CFS quota.
const CPU_PERIOD_US: u64 = 100_000;

pub(super) fn validate(spec: &SandboxSpec) -> Result<(), RuntimeError> {
    crate::container::validate_spec(spec)?;
    if spec.egress.has_lists() {
        return Err(RuntimeError::unsupported(
            crate::RuntimeKind::Gvisor,
            "enforce egress allow or deny lists yet (only internet on or off)",
        ));
    }
    Ok(())
}

pub(super) async fn create(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
) -> Result<SandboxHandle, RuntimeError> {
    validate(spec)?;
    if exists(inner, &spec.id) {
        return Err(RuntimeError::AlreadyExists(spec.id.clone()));
    }
    let Some(_reserved) = inner.reserve(&spec.id) else {
        return Err(RuntimeError::AlreadyExists(spec.id.clone()));
    };
    let rec = boot(inner, spec, Disk::Fresh, Start::Run, Phase::Running).await?;
    Ok(adopt(inner, rec))
}

pub(super) fn exists(inner: &Inner, id: &str) -> bool {
    inner.sandboxes.lock().unwrap().contains_key(id)
        || inner.paused.lock().unwrap().contains_key(id)
}

/// Where a booting sandbox's disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disk {
    /// A new one from the pool (the directory is new too).
    Fresh,
    /// `disk.img` in the sandbox's directory already (a paused sandbox's,
    /// or a snapshot's copy).
    Kept,
}

/// How runsc starts it.
#[derive(Debug, Clone)]
pub(super) enum Start {
    Run,
    /// From a checkpoint image directory.
    Restore(PathBuf),
}

/// Registers a started sandbox as running and watches it.
pub(super) fn adopt(inner: &Arc<Inner>, rec: Record) -> SandboxHandle {
    let handle = rec.handle();
    inner.paused.lock().unwrap().remove(&rec.id);
    let sb = Arc::new(Sandbox::new(rec));
    watch(inner, &sb);
    inner
        .sandboxes
        .lock()
        .unwrap()
        .insert(handle.id.clone(), sb);
    handle
}

/// Boots a sandbox. `phase` is what its record says while it boots
/// (`Running` for a new one, `Resuming` for a paused one). On error
/// everything it set up is undone; a `Kept` disk stays.
pub(super) async fn boot(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    disk: Disk,
    start: Start,
    phase: Phase,
) -> Result<Record, RuntimeError> {
    let started = Instant::now();
    let prepared = {
        let inner = inner.clone();
        let spec = spec.clone();
        blocking(move || prepare(&inner, &spec, disk, phase)).await?
    };
    let mut rec = prepared;
    let r = run_runsc(inner, &mut rec, &start).await;
    let r = match r {
        Ok(()) => wait_ready(inner, &rec).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => {
            tracing::debug!(id = %rec.id, ms = started.elapsed().as_millis() as u64, "gvisor sandbox started");
            Ok(rec)
        }
        Err(e) => {
            if let Err(e2) = undo(inner, &rec, disk).await {
                tracing::error!(id = %rec.id, error = %e2, "failed to clean up a failed start");
            }
            Err(e)
        }
    }
}

/// Host side of a boot (blocking): directory, disk, network, overlay,
/// bundle, record. Undoes its own steps on error.
fn prepare(
    inner: &Inner,
    spec: &SandboxSpec,
    disk: Disk,
    phase: Phase,
) -> Result<Record, RuntimeError> {
    let cfg = &inner.cfg;
    let dir = inner.sandbox_dir(&spec.id);
    let lower = &spec.template.rootfs;
    let meta = std::fs::metadata(lower).map_err(|source| RuntimeError::Io {
        context: format!("template rootfs {} is not readable", lower.display()),
        source,
    })?;
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != cfg.uid_base {
            return Err(RuntimeError::InvalidSpec(format!(
                "template rootfs {} is owned by uid {}, not by the sandbox root's host uid {} \
                 (shift it with kiln_template::shift_ownership)",
                lower.display(),
                meta.uid(),
                cfg.uid_base
            )));
        }
    }
    if disk == Disk::Fresh {
        std::fs::create_dir_all(&dir).map_err(HostError::io("create", &dir))?;
        inner.disk.want(spec.disk_mib);
        if let Err(e) = inner.disk.take(spec.disk_mib, &dir.join("disk.img")) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    }
    let lease = match inner.net.take(spec.egress.internet) {
        Ok(l) => l,
        Err(e) => {
            if disk == Disk::Fresh {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(net_err(e));
        }
    };
    let rec = Record {
        id: spec.id.clone(),
        template_id: spec.template.id.clone(),
        lower: lower.clone(),
        net_index: lease.index,
        netns: lease.netns.clone(),
        veth: lease.veth.clone(),
        ip: lease.ip,
        internet: spec.egress.internet,
        vcpus: spec.vcpus,
        memory_bytes: spec.memory_mib << 20,
        disk_bytes: spec.disk_mib << 20,
        pid: 0,
        start_time: 0,
        phase,
        image: None,
    };
    let r = (|| {
        // A pooled namespace another gVisor sandbox used lost its address
        // to that sandbox's netstack.
        inner.net.readdress(&lease).map_err(net_err)?;
        write_record(inner, &rec)?;
        mount_rootfs(inner, &spec.id, lower)?;
        let rootfs = inner.mounts_dir(&spec.id).join("rootfs");
        add_hostname(&rootfs, &spec.id, cfg.uid_base);
        let mut binds = vec![(cfg.agent_bin.clone(), cfg.agent_path.clone())];
        binds.extend(
            cfg.template_binds
                .get(&spec.template.id)
                .cloned()
                .unwrap_or_default(),
        );
        let bundle = Bundle {
            id: &spec.id,
            rootfs: &rootfs,
            netns: &lease.netns_path,
            cgroup: inner.cgroup_path(&spec.id),
            uid_base: cfg.uid_base,
            uid_count: cfg.uid_count,
            agent_path: &cfg.agent_path,
            agent_args: &cfg.agent_args,
            binds,
            env: &spec.env,
            memory_bytes: rec.memory_bytes,
            cpu_quota_us: u64::from(spec.vcpus) * CPU_PERIOD_US,
            cpu_period_us: CPU_PERIOD_US,
            pids_max: crate::container::pids_limit(spec.memory_mib, cfg.pids_max),
            tmp_size_bytes: rec.memory_bytes,
        };
        let json = serde_json::to_vec_pretty(&bundle.to_json()).expect("a bundle serializes");
        fsutil::write_atomic(&dir.join("config.json"), &json)?;
        // A cgroup of the same name left by a crash would make runsc fail.
        inner.cgroups.kill_and_remove(&spec.id)?;
        Ok(())
    })();
    match r {
        Ok(()) => Ok(rec),
        Err(e) => {
            let _ = unmount_rootfs(inner, &spec.id);
            let _ = inner.net.recycle(&lease);
            if disk == Disk::Fresh {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

/// Mounts the sandbox's disk at `layers/` and the overlay at `rootfs/` of
/// its mount directory (if not mounted already: a sandbox re-attached
/// after a kilnd restart still has them).
pub(super) fn mount_rootfs(inner: &Inner, id: &str, lower: &Path) -> Result<(), RuntimeError> {
    let dir = inner.sandbox_dir(id);
    let mounts = inner.mounts_dir(id);
    let layers = mounts.join("layers");
    let rootfs = mounts.join("rootfs");
    if overlay::is_mounted(&rootfs) {
        return Ok(());
    }
    private_mounts_dir(&mounts, inner.cfg.uid_base)?;
    if !overlay::is_mounted(&layers) {
        overlay::mount_disk(&dir.join("disk.img"), &layers, false)?;
    }
    if let Err(e) = overlay::mount_overlay(&[lower.to_path_buf()], &layers, &rootfs) {
        let _ = overlay::unmount(&layers);
        return Err(e.into());
    }
    Ok(())
}

/// Makes the sandbox's mount directory reachable by runsc's gofer, which
/// serves the root as the sandbox's root user (host uid `owner`), and by
/// no other host user: the directories above it only traversable (0711,
/// root's), the sandbox's own 0700 and `owner`'s. (kilnd's umask makes
/// everything 0700 and root's, which the gofer cannot enter.)
fn private_mounts_dir(mounts: &Path, owner: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(mounts).map_err(HostError::io("create", mounts))?;
    let root = Path::new(super::MOUNTS_ROOT);
    let mut above = mounts.parent();
    while let Some(dir) = above.filter(|d| d.starts_with(root)) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(HostError::io("chmod", dir))?;
        above = dir.parent();
    }
    std::os::unix::fs::chown(mounts, Some(owner), Some(owner))
        .map_err(HostError::io("chown", mounts))?;
    std::fs::set_permissions(mounts, std::fs::Permissions::from_mode(0o700))
        .map_err(HostError::io("chmod", mounts))?;
    Ok(())
}

/// Unmounts the overlay and the disk (the unmount of the ext4 writes it
/// back; the image is then fsynced) and removes the mount directory.
pub(super) fn unmount_rootfs(inner: &Inner, id: &str) -> Result<(), RuntimeError> {
    let mounts = inner.mounts_dir(id);
    overlay::unmount(&mounts.join("rootfs"))?;
    overlay::unmount(&mounts.join("layers"))?;
    if mounts.exists() {
        std::fs::remove_dir_all(&mounts).map_err(HostError::io("remove", &mounts))?;
    }
    let img = inner.sandbox_dir(id).join("disk.img");
    if img.exists() {
        fsutil::fsync_file(&img)?;
    }
    Ok(())
}

/// Makes the hostname resolve (sudo asks for it), once.
fn add_hostname(rootfs: &Path, id: &str, uid_base: u32) {
    use std::io::Write;
    let hosts = rootfs.join("etc/hosts");
    let line = format!("127.0.1.1\t{id}");
    match std::fs::read_to_string(&hosts) {
        Ok(text) if text.lines().any(|l| l == line) => {}
        Ok(_) => {
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&hosts) {
                let _ = writeln!(f, "{line}");
            }
        }
        Err(_) if rootfs.join("etc").is_dir() => {
            let text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{line}\n");
            if std::fs::write(&hosts, text).is_ok() {
                let _ = std::os::unix::fs::chown(&hosts, Some(uid_base), Some(uid_base));
            }
        }
        Err(_) => {}
    }
}

/// `runsc run` or `runsc restore`, detached; records runsc's sandbox pid.
pub(super) async fn run_runsc(
    inner: &Arc<Inner>,
    rec: &mut Record,
    start: &Start,
) -> Result<(), RuntimeError> {
    let dir = inner.sandbox_dir(&rec.id);
    let bundle = dir.display().to_string();
    let log = dir.join("runsc.log");
    match start {
        Start::Run => {
            inner
                .runsc
                .start(&["run", "-detach", "-bundle", &bundle, &rec.id], &log)
                .await?
        }
        Start::Restore(image) => {
            let image = image.display().to_string();
            inner
                .runsc
                .start(
                    &[
                        "restore",
                        "-detach",
                        "-image-path",
                        &image,
                        "-bundle",
                        &bundle,
                        &rec.id,
                    ],
                    &log,
                )
                .await?
        }
    }
    // runsc leaves the devices controller open (it applies no device
    // rules): the sentry and gofer open no device once booted, so a
    // compromised one may open none of the host's beyond the minimal /dev.
    inner.cgroups.restrict_devices(&rec.id)?;
    if matches!(start, Start::Restore(_)) {
        // Saved with its listener closed (see pause.rs): listen again.
        super::pause::reopen_listener(inner, &rec.id).await?;
    }
    let st = inner.runsc.state(&rec.id).ok_or_else(|| {
        RuntimeError::Other(format!("runsc started {} but keeps no state of it", rec.id))
    })?;
    rec.pid = st.sandbox.map(|s| s.pid).unwrap_or(0);
    rec.start_time = sys::start_time(rec.pid).unwrap_or(0);
    write_record(inner, rec)
}

/// Waits until the agent accepts connections on its port (runsc passes
/// no descriptor to the container's init, so the container runtime's
/// ready pipe has no equivalent here: a listening agent is the signal).
pub(super) async fn wait_ready(inner: &Arc<Inner>, rec: &Record) -> Result<(), RuntimeError> {
    let addr = SocketAddr::new(IpAddr::V4(rec.ip), AGENT_PORT);
    let deadline = Instant::now() + inner.cfg.ready_timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if let Ok(Ok(s)) = attempt {
            // Reset, not closed: nothing of the probe lingers in the
            // sandbox's netstack (a closing connection blocks a checkpoint).
            let _ = s.set_zero_linger();
            return Ok(());
        }
        if rec.pid > 0 && sys::start_time(rec.pid) != Some(rec.start_time) {
            return Err(RuntimeError::Other(format!(
                "gVisor sandbox {} exited before its agent listened (see {})",
                rec.id,
                inner.runsc.log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::Other(format!(
                "agent of {} did not listen within {:?}",
                rec.id, inner.cfg.ready_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Undoes a failed boot: runsc's sandbox, mounts, network; the directory
/// too for a fresh one, else the record goes back to paused by the caller.
async fn undo(inner: &Arc<Inner>, rec: &Record, disk: Disk) -> Result<(), RuntimeError> {
    inner.runsc.delete(&rec.id).await?;
    let inner2 = inner.clone();
    let rec = rec.clone();
    blocking(move || {
        let dir = inner2.sandbox_dir(&rec.id);
        let _ = inner2.cgroups.kill_and_remove(&rec.id);
        unmount_rootfs(&inner2, &rec.id)?;
        if rec.has_net() {
            inner2.net.recycle(&rec.lease()).map_err(net_err)?;
        }
        if disk == Disk::Fresh {
            std::fs::remove_dir_all(&dir).map_err(HostError::io("remove", &dir))?;
        }
        Ok(())
    })
    .await
}

/// Writes the sandbox's `state.json`, whole or not at all, durably.
pub(super) fn write_record(inner: &Inner, rec: &Record) -> Result<(), RuntimeError> {
    let path = inner.sandbox_dir(&rec.id).join("state.json");
    let json = serde_json::to_vec_pretty(rec).expect("a record serializes");
    Ok(fsutil::write_atomic(&path, &json)?)
}

/// Watches runsc's sandbox process; when it dies on its own (the agent
/// exited, or the host's OOM killer took the sandbox), reports it.
pub(super) fn watch(inner: &Arc<Inner>, sb: &Arc<Sandbox>) {
    let rec = sb.record();
    if rec.pid <= 0 {
        return;
    }
    let pidfd = match sys::pidfd_open(rec.pid) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(id = %rec.id, error = %e, "cannot watch the gVisor sandbox");
            return;
        }
    };
    sb.exited.store(false, std::sync::atomic::Ordering::SeqCst);
    let weak = Arc::downgrade(inner);
    let task = tokio::spawn(async move {
        let Ok(afd) = sys::async_fd(pidfd) else {
            return;
        };
        let _ = afd.readable().await;
        let exit_code = match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(rec.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => Some(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => Some(128 + s as i32),
            _ => None,
        };
        let Some(inner) = weak.upgrade() else { return };
        let still = inner
            .sandboxes
            .lock()
            .unwrap()
            .get(&rec.id)
            .filter(|s| s.record().pid == rec.pid)
            .cloned();
        if let Some(sb) = still {
            sb.exited.store(true, std::sync::atomic::Ordering::SeqCst);
            let oom_killed = inner.cgroups.stats(&rec.id).oom_kills > 0;
            tracing::info!(id = %rec.id, ?exit_code, oom_killed, "gVisor sandbox exited");
            let _ = inner.events.send(RuntimeEvent::Exited {
                id: rec.id.clone(),
                oom_killed,
                exit_code,
            });
        }
    });
    *sb.watcher.lock().unwrap() = Some(task.abort_handle());
}
