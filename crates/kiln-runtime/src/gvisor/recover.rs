//! Start-up (runsc checked, host set up, a previous run's sandboxes
//! re-attached, kept or cleaned) and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::create::{unmount_rootfs, write_record};
use super::runsc::Runsc;
use super::{net_err, GvisorConfig, Inner, Phase, Record};
use crate::host::cgroup::Cgroups;
use crate::host::disk::DiskPool;
use crate::host::{sys, HostError};
use crate::runtime::RuntimeError;

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: "gvisor",
        reason: reason.into(),
    }
}

/// Whether runsc still runs the sandbox of this record.
fn alive(rec: &Record, runsc: &Runsc) -> bool {
    rec.pid > 0
        && sys::start_time(rec.pid) == Some(rec.start_time)
        && runsc
            .state(&rec.id)
            .is_some_and(|s| s.status == "running" && s.sandbox.is_some_and(|b| b.pid == rec.pid))
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
        let has_ckpt = dir.join("checkpoint").is_dir();
        match rec.phase {
            Phase::Running | Phase::Resuming | Phase::Pausing if alive(&rec, &runsc) => {
                live.push(Record {
                    phase: Phase::Running,
                    ..rec
                })
            }
            Phase::Running => dead.push(rec),
            // The sandbox is gone but its state is on disk: keep it paused
            // with what is complete (a checkpoint renamed into place is).
            Phase::Resuming | Phase::Pausing | Phase::PausedMemory | Phase::PausedFs => {
                let phase = if has_ckpt && rec.phase != Phase::PausedFs {
                    Phase::PausedMemory
                } else {
                    Phase::PausedFs
                };
                paused.push(Record { phase, ..rec })
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
