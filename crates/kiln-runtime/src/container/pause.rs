//! `pause` and `resume`.
//!
//! With memory: the cgroup freezer. Processes stop where they are; the
//! state lives in the host's memory, so it does not survive a host reboot
//! and is reported as not durable.
//!
//! Keeping the filesystem: every process ends and the sandbox's disk (its
//! writable upper) is kept, with no cgroup, network or memory of its own;
//! resume boots it again on that disk. `state.json` says `pausing_fs`
//! (durably) before anything is stopped and `paused_fs` once the disk is
//! unmounted and fsynced, so a crash at any point leaves the disk kept and
//! recovery finishes the pause.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::create::{boot, net_err, write_record, Boot};
use super::{blocking, Inner, Phase, Record, Sandbox};
use crate::host::{disk, fsutil, HostError};
use crate::runtime::{Paused, ResumeMode, RuntimeError, SandboxHandle, SandboxSpec, StateMode};

pub(super) async fn pause(
    inner: &Arc<Inner>,
    id: &str,
    mode: StateMode,
) -> Result<Paused, RuntimeError> {
    let sb = inner.get(id)?;
    if sb.frozen.load(Ordering::Acquire) {
        return Err(RuntimeError::WrongState(format!(
            "sandbox {id} is already paused"
        )));
    }
    match mode {
        StateMode::Memory => {
            let cgroup = sb.rec.cgroup.clone();
            let i2 = inner.clone();
            blocking(move || Ok(i2.cgroups.freeze(&cgroup, true)?)).await?;
            sb.frozen.store(true, Ordering::Release);
            Ok(Paused {
                mode,
                durable: false,
                bytes_on_disk: 0,
            })
        }
        StateMode::Filesystem => stop_keeping_disk(inner, &sb).await,
    }
}

/// Ends every process of a running (or frozen) sandbox and keeps its disk.
async fn stop_keeping_disk(inner: &Arc<Inner>, sb: &Arc<Sandbox>) -> Result<Paused, RuntimeError> {
    let id = sb.rec.id.clone();
    let mut rec = sb.record();
    rec.phase = Phase::PausingFs;
    {
        let (i2, r2) = (inner.clone(), rec.clone());
        blocking(move || write_record(&i2, &r2)).await?;
    }
    // From here its processes end on purpose: not an exit to report.
    if let Some(w) = sb.watcher.lock().unwrap().take() {
        w.abort();
    }
    inner.sandboxes.lock().unwrap().remove(&id);
    let i2 = inner.clone();
    let rec = blocking(move || finish_fs_pause(&i2, rec)).await?;
    let bytes = fsutil::allocated_bytes(&disk_path(inner, &rec));
    inner.paused.lock().unwrap().insert(id.clone(), rec);
    tracing::debug!(id = %id, bytes, "sandbox paused keeping its disk");
    Ok(Paused {
        mode: StateMode::Filesystem,
        durable: true,
        bytes_on_disk: bytes,
    })
}

/// The sandbox's disk image (a record of an older Kiln may not name it).
pub(super) fn disk_path(inner: &Inner, rec: &Record) -> std::path::PathBuf {
    let dir = inner.sandbox_dir(&rec.id);
    if !rec.disk_image.is_empty() {
        return dir.join(&rec.disk_image);
    }
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "img"))
        })
        .unwrap_or_else(|| dir.join("disk.img"))
}

/// How long a sandbox's disk may take to be unmounted once its last
/// process is gone.
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Blocking: stops what is left of the sandbox (also after a crash in the
/// middle of a pause), waits until its disk is unmounted, fsyncs it,
/// releases its network and marks it paused. Idempotent.
pub(super) fn finish_fs_pause(inner: &Inner, mut rec: Record) -> Result<Record, RuntimeError> {
    super::kill::stop_processes(inner, &rec)?;
    let image = disk_path(inner, &rec);
    let deadline = std::time::Instant::now() + UNMOUNT_WAIT;
    while disk::loop_backs(&image) {
        if std::time::Instant::now() > deadline {
            return Err(HostError::Stuck {
                path: image,
                what: "be unmounted",
            }
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fsutil::fsync_file(&image)?;
    if rec.net_index != u32::MAX {
        if let Err(e) = inner.net.recycle(&rec.lease()).map_err(net_err) {
            tracing::warn!(id = %rec.id, error = %e, "failed to release a paused sandbox's network");
        }
    }
    rec.phase = Phase::PausedFs;
    rec.cgroup = String::new();
    rec.pid = 0;
    rec.start_time = 0;
    rec.net_index = u32::MAX;
    write_record(inner, &rec)?;
    Ok(rec)
}

pub(super) async fn resume(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    mode: ResumeMode,
) -> Result<SandboxHandle, RuntimeError> {
    if let Ok(sb) = inner.get(&spec.id) {
        if !sb.frozen.load(Ordering::Acquire) {
            return Err(RuntimeError::WrongState(format!(
                "sandbox {} is not paused",
                spec.id
            )));
        }
        if mode == ResumeMode::Restore {
            let cgroup = sb.rec.cgroup.clone();
            let i2 = inner.clone();
            blocking(move || Ok(i2.cgroups.freeze(&cgroup, false)?)).await?;
            sb.frozen.store(false, Ordering::Release);
            return Ok(sb.rec.handle());
        }
        // A reboot of a frozen one: its memory goes, its disk stays.
        stop_keeping_disk(inner, &sb).await?;
    }
    let rec = inner
        .paused
        .lock()
        .unwrap()
        .get(&spec.id)
        .cloned()
        .ok_or_else(|| RuntimeError::NotFound(spec.id.clone()))?;
    super::create::validate(spec)?;
    super::egress::check(&spec.egress)?;
    if !inner.busy.lock().unwrap().insert(spec.id.clone()) {
        return Err(RuntimeError::WrongState(format!(
            "sandbox {} is busy",
            spec.id
        )));
    }
    let _reserved = super::create::Reservation(inner, spec.id.clone());
    boot(inner, spec, Boot::Resume(Box::new(rec))).await
}

/// Blocking: a resume that failed stops what it started and leaves the
/// sandbox paused on its disk, as it was.
pub(super) fn undo_resume(inner: &Inner, rec: &Record) -> Result<(), RuntimeError> {
    let kept = inner.paused.lock().unwrap().get(&rec.id).cloned();
    let mut back = finish_fs_pause(inner, rec.clone())?;
    if let Some(kept) = kept {
        back.disk_image = kept.disk_image;
        back.layers = kept.layers;
    }
    write_record(inner, &back)?;
    inner.paused.lock().unwrap().insert(rec.id.clone(), back);
    Ok(())
}
