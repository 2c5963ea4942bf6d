//! Start-up (runsc checked, host set up, a previous run's sandboxes
//! re-attached, kept or cleaned) and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::create::{unmount_rootfs, write_record};
use super::runsc::Runsc;
use super::{net_err, GvisorConfig, Inner, Phase, Record};
use crate::host::cgroup::Cgroups;
use crate::host::disk::DiskPool;
use crate::host::{fsutil, sys, HostError};
use crate::runtime::RuntimeError;

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "gvisor",
        reason: reason.into(),
    }
}

/// runsc's running sandbox process for this record, if one lives: the
/// record's own, or one a restore started after the record was written
/// (a kilnd killed while `runsc restore` ran). Its pid and start time.
pub(super) fn alive(rec: &Record, runsc: &Runsc) -> Option<(i32, u64)> {
    let st = runsc.state(&rec.id).filter(|s| s.status == "running")?;
    let pid = st.sandbox.map(|b| b.pid).filter(|p| *p > 0)?;
    if sys::is_zombie(pid) {
        return None;
    }
    let start = sys::start_time(pid)?;
    let ours =
        (pid == rec.pid && start == rec.start_time) || super::runsc::is_runsc_of(pid, &rec.id);
    ours.then_some((pid, start))
}

/// How long a start waits for a previous run's runsc commands (a
/// checkpoint of a large sandbox takes seconds).
const COMMANDS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Makes `image`, one runsc wrote whole, the sandbox's checkpoint
/// (`<dir>/checkpoint`), durably; a failure is logged (the sandbox is then
/// paused on its disk).
fn finish_checkpoint(dir: &std::path::Path, image: Option<&std::path::Path>) {
    let Some(image) = image else {
        return;
    };
    let tmp = dir.join("checkpoint.tmp");
    let done = dir.join("checkpoint");
    let r = (|| -> Result<(), HostError> {
        if image != tmp {
            // A snapshot's (its directory is removed as unfinished).
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(HostError::io("remove", &tmp))?;
            }
            std::fs::rename(image, &tmp).map_err(HostError::io("rename to", &tmp))?;
        }
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(HostError::io("remove", &done))?;
        }
        super::pause::sync_tree(&tmp)?;
        fsutil::rename_durably(&tmp, &done)
    })();
    if let Err(e) = r {
        tracing::error!(dir = %dir.display(), error = %e, "a finished checkpoint could not be kept");
    }
}

/// Blocking part of `GvisorRuntime::new`.
pub(super) fn start(mut cfg: GvisorConfig) -> Result<Inner, RuntimeError> {
    cfg.net.tag = cfg.tag.clone();
    super::runsc::version(&cfg.runsc).map_err(unavailable)?;
    if !cfg.agent_bin.is_file() {
        return Err(unavailable(format!(
            "the agent binary {} does not exist",
            cfg.agent_bin.display()
        )));
    }
    let cgroups = Cgroups::detect(&cfg.tag).map_err(|e| unavailable(e.to_string()))?;
    if let Err(e) = sys::set_child_subreaper() {
        tracing::warn!(error = %e, "cannot become runsc's subreaper");
    }
    let mk = |p: &std::path::Path| -> Result<(), RuntimeError> {
        std::fs::create_dir_all(p).map_err(|e| HostError::io("create", p)(e).into())
    };
    let sandboxes_dir = cfg.data_dir.join("sandboxes");
    let root = cfg.data_dir.join("runsc");
    let proc_dir = cfg.data_dir.join("proc");
    for d in [
        &sandboxes_dir,
        &cfg.data_dir.join("snapshots"),
        &root,
        &proc_dir,
    ] {
        mk(d)?;
    }
    let mut extra = Vec::new();
    if let Some(d) = &cfg.debug_log {
        extra.push("--debug".to_owned());
        extra.push(format!("--debug-log={}/", d.display()));
    }
    let runsc = Runsc {
        bin: cfg.runsc.clone(),
        root,
        proc_dir,
        log: cfg.data_dir.join("runsc.log"),
        extra,
    };
    let disk = DiskPool::new(cfg.data_dir.join("disk-pool"), cfg.uid_base, cfg.disk_pool)?;
    for size in &cfg.disk_pool_sizes_mib {
        disk.want(*size);
    }

    // A checkpoint or restore that a killed kilnd started goes on without
    // it: what it leaves decides what is kept, so it is let finish.
    let still = runsc.wait_for_commands(COMMANDS_WAIT);
    if still > 0 {
        tracing::warn!(
            still,
            "runsc commands of a previous run are still running; recovering without them"
        );
    }
    let mut live = Vec::new();
    let mut dead = Vec::new();
    let mut paused = Vec::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(&sandboxes_dir)
        .map_err(HostError::io("list", &sandboxes_dir))?
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let state = dir.join("state.json");
        let rec: Option<Record> = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(rec) = rec else {
            if state.exists() {
                tracing::error!(path = %state.display(), "a sandbox's state cannot be read; its directory is left alone");
            } else {
                strays.push(id);
            }
            continue;
        };
        // A checkpoint runsc finished (whatever became of kilnd after):
        // the sandbox it saved ended with it (or is ending), and the image
        // becomes the sandbox's checkpoint, durably, as the pause would
        // have made it (a snapshot's image too: the sandbox is paused with
        // its memory rather than lost).
        let saved = rec.phase == Phase::Pausing
            && rec
                .image
                .as_ref()
                .is_some_and(|i| i.join(super::runsc::SAVED).is_file());
        let running = alive(&rec, &runsc)
            // The saved sandbox, ending; one restored from the image after
            // it (a snapshot's restore in place) is another process.
            .filter(|(pid, _)| !(saved && *pid == rec.pid));
        if saved && running.is_none() {
            finish_checkpoint(&dir, rec.image.as_deref());
        }
        let has_ckpt = dir.join("checkpoint").is_dir();
        match (rec.phase, running) {
            (Phase::Running | Phase::Resuming | Phase::Pausing, Some((pid, start_time))) => live
                .push(Record {
                    phase: Phase::Running,
                    pid,
                    start_time,
                    image: None,
                    ..rec
                }),
            (Phase::Running, _) => dead.push(rec),
            // The sandbox is gone but its state is on disk: keep it paused
            // with what is complete (a checkpoint renamed into place is).
            (Phase::Resuming | Phase::Pausing | Phase::PausedMemory | Phase::PausedFs, _) => {
                let phase = if has_ckpt && rec.phase != Phase::PausedFs {
                    Phase::PausedMemory
                } else {
                    Phase::PausedFs
                };
                paused.push(Record {
                    phase,
                    image: None,
                    ..rec
                })
            }
        }
    }
    let keep: Vec<_> = live.iter().map(Record::lease).collect();
    let net = kiln_net::Network::setup(cfg.net.clone(), &keep).map_err(net_err)?;
    let inner = Inner {
        cfg,
        runsc,
        net,
        disk,
        cgroups,
        sandboxes: Mutex::new(BTreeMap::new()),
        paused: Mutex::new(BTreeMap::new()),
        busy: Mutex::new(BTreeSet::new()),
        events: tokio::sync::broadcast::channel(256).0,
    };
    for rec in &dead {
        tracing::info!(id = %rec.id, "removing the leftovers of a dead gVisor sandbox");
        let _ = inner.runsc.delete_blocking(&rec.id);
        let _ = inner.cgroups.kill_and_remove(&rec.id);
        let dir = inner.sandbox_dir(&rec.id);
        let _ = unmount_rootfs(&inner, &rec.id);
        let _ = std::fs::remove_dir_all(&dir);
    }
    for id in &strays {
        let dir = inner.sandbox_dir(id);
        let _ = inner.runsc.delete_blocking(id);
        let _ = unmount_rootfs(&inner, id);
        let _ = std::fs::remove_dir_all(&dir);
    }
    for mut rec in paused {
        // Whatever ran of it is gone; its network went with the set-up.
        let _ = inner.runsc.delete_blocking(&rec.id);
        let _ = inner.cgroups.kill_and_remove(&rec.id);
        let dir = inner.sandbox_dir(&rec.id);
        if let Err(e) = unmount_rootfs(&inner, &rec.id) {
            tracing::warn!(id = %rec.id, error = %e, "could not unmount a paused sandbox's disk");
        }
        let _ = std::fs::remove_dir_all(dir.join("checkpoint.tmp"));
        if rec.phase == Phase::PausedFs {
            let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
        }
        rec.net_index = u32::MAX;
        rec.pid = 0;
        rec.start_time = 0;
        if let Err(e) = write_record(&inner, &rec) {
            tracing::error!(id = %rec.id, error = %e, "could not record a paused sandbox");
        }
        inner.paused.lock().unwrap().insert(rec.id.clone(), rec);
    }
    let known: BTreeSet<String> = live
        .iter()
        .map(|r| r.id.clone())
        .chain(inner.paused.lock().unwrap().keys().cloned())
        .collect();
    // runsc sandboxes and cgroups no record accounts for.
    for id in inner.runsc.ids() {
        if !known.contains(&id) {
            let _ = inner.runsc.delete_blocking(&id);
        }
    }
    for id in inner.cgroups.list() {
        if !known.contains(&id) {
            let _ = inner.cgroups.kill_and_remove(&id);
        }
    }
    for rec in live {
        let dir = inner.sandbox_dir(&rec.id);
        let _ = std::fs::remove_dir_all(dir.join("checkpoint.tmp"));
        let _ = write_record(&inner, &rec);
        let id = rec.id.clone();
        inner
            .sandboxes
            .lock()
            .unwrap()
            .insert(id, Arc::new(super::Sandbox::new(rec)));
    }
    Ok(inner)
}

/// Releases the pools and, if no sandbox is left, the network and the
/// cgroup parents. Sandboxes keep running (or paused): the next start
/// finds them.
pub(super) fn shutdown(inner: &Inner) -> Result<(), RuntimeError> {
    inner.disk.clear();
    inner.net.shutdown().map_err(net_err)?;
    if inner.sandboxes.lock().unwrap().is_empty() {
        inner.cgroups.remove_parents();
        let mounts = std::path::Path::new(super::MOUNTS_ROOT);
        let _ = std::fs::remove_dir(mounts.join(&inner.cfg.tag));
        let _ = std::fs::remove_dir(mounts);
    }
    Ok(())
}
