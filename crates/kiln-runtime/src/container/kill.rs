//! `kill`: destroy a sandbox and everything it used.

use std::sync::Arc;

use super::create::net_err;
use super::{blocking, Inner, Record};
use crate::host::HostError;
use crate::runtime::RuntimeError;

pub(super) async fn kill(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let running = inner.sandboxes.lock().unwrap().remove(id);
    let rec = match running {
        Some(sb) => {
            if let Some(w) = sb.watcher.lock().unwrap().take() {
                w.abort();
            }
            sb.record()
        }
        // Paused on its disk: only files to delete.
        None => match inner.paused.lock().unwrap().remove(id) {
            Some(rec) => rec,
            None => return Ok(()), // unknown or already killed
        },
    };
    let inner2 = inner.clone();
    blocking(move || {
        destroy(&inner2, &rec, true)?;
        super::snapshot::collect_garbage(&inner2);
        Ok(())
    })
    .await?;
    tracing::debug!(id, "sandbox killed");
    Ok(())
}

/// Blocking: SIGKILLs the sandbox's init (which ends its pid namespace),
/// empties and removes its cgroups, and reaps the init. Idempotent; the
/// disk and state stay.
pub(super) fn stop_processes(inner: &Inner, rec: &Record) -> Result<(), RuntimeError> {
    if rec.pid > 0 && crate::host::sys::start_time(rec.pid) == Some(rec.start_time) {
        let pid = nix::unistd::Pid::from_raw(rec.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
    if !rec.cgroup.is_empty() {
        inner.cgroups.kill_and_remove(&rec.cgroup)?;
        // The range is free once the cgroup is gone; say so at once.
        if let Some(ranges) = &inner.uid_ranges {
            ranges.release(rec.uid_base, &inner.cgroups.dir(&rec.cgroup));
        }
    }
    if rec.pid > 0 {
        // The init is dead now; collect it if it is ours. Its exit may lag
        // the cgroup emptying by a moment (the pid namespace is torn down
        // first): one WNOHANG then left zombies in a long-running kilnd.
        let pid = nix::unistd::Pid::from_raw(rec.pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while let Ok(nix::sys::wait::WaitStatus::StillAlive) =
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Removes every host object of a sandbox (blocking, idempotent): its
/// processes (SIGKILL to the init ends the whole pid namespace, then the
/// cgroup is emptied), cgroups, network namespace and veth, layers, state.
/// The sandbox's mounts live in its own mount namespace and vanish with its
/// last process. `release_net` is false at start-up, where the network's own
/// set-up already removed every namespace not kept (the slot may be reused).
pub(super) fn destroy(inner: &Inner, rec: &Record, release_net: bool) -> Result<(), RuntimeError> {
    let mut first_err: Option<RuntimeError> = stop_processes(inner, rec).err();
    // A sandbox paused on its disk holds no network (index u32::MAX).
    if release_net && rec.net_index != u32::MAX {
        if let Err(e) = inner.net.recycle(&rec.lease()).map_err(net_err) {
            first_err.get_or_insert(e);
        }
    }
    let dir = inner.sandbox_dir(&rec.id);
    if let Err(source) = std::fs::remove_dir_all(&dir) {
        if source.kind() != std::io::ErrorKind::NotFound {
            first_err.get_or_insert(HostError::io("remove", &dir)(source).into());
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
