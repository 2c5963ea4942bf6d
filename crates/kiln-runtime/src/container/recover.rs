//! Start-up (with recovery from a crashed previous run) and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use super::create::net_err;
use super::{ContainerConfig, Inner, Phase, Record, Sandbox};
use crate::host::cgroup::Cgroups;
use crate::host::disk::DiskPool;
use crate::host::sys;
use crate::runtime::RuntimeError;

fn alive(rec: &Record, cgroups: &Cgroups) -> bool {
    rec.pid > 0
        && sys::start_time(rec.pid) == Some(rec.start_time)
        && cgroups.pids(&rec.cgroup).contains(&rec.pid)
}

/// Blocking part of `ContainerRuntime::new`.
pub(super) fn start(mut cfg: ContainerConfig) -> Result<Inner, RuntimeError> {
    cfg.net.tag = cfg.tag.clone();
    if let Err(e) = sys::set_child_subreaper() {
        tracing::warn!(error = %e, "cannot become the sandboxes' subreaper; exit codes will be unknown");
    }
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    let sandboxes_dir = cfg.data_dir.join("sandboxes");
    std::fs::create_dir_all(&sandboxes_dir)
        .map_err(io(format!("failed to create {}", sandboxes_dir.display())))?;
    let cgroups = Cgroups::detect(&cfg.tag).map_err(|e| RuntimeError::Unavailable {
        runtime: "container",
        reason: e.to_string(),
    })?;
    if !cgroups.filters_devices() {
        tracing::warn!(
            "cgroup v2: no device filter for sandboxes (this kernel did not load the BPF \
             program); they are held to their minimal /dev by the user namespace and nodev \
             mounts only"
        );
    }
    let uid_ranges = match &cfg.uid_ranges {
        Some(dir) => Some(crate::host::uidrange::UidRanges::new(dir)?),
        None => None,
    };
    let disk = DiskPool::new(cfg.data_dir.join("disk-pool"), cfg.uid_base, cfg.disk_pool)?;
    for size in &cfg.disk_pool_sizes_mib {
        disk.want(*size);
    }

    let mut live = Vec::new();
    let mut dead = Vec::new();
    // Paused on their disk, or on the way there or back: the disk is kept.
    let mut paused = Vec::new();
    let mut to_pause = Vec::new();
    let mut resumed = Vec::new();
    let mut unreadable = Vec::new();
    for entry in std::fs::read_dir(&sandboxes_dir)
        .map_err(io(format!("failed to list {}", sandboxes_dir.display())))?
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().into_owned();
        let state = entry.path().join("state.json");
        let rec: Option<Record> = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match rec {
            Some(r) => match r.phase {
                Phase::PausedFs => paused.push(r),
                Phase::PausingFs => to_pause.push(r),
                Phase::Resuming if alive(&r, &cgroups) => {
                    resumed.push(r.id.clone());
                    live.push(Record {
                        phase: Phase::Running,
                        ..r
                    })
                }
                Phase::Resuming => to_pause.push(r),
                Phase::Running if alive(&r, &cgroups) => live.push(r),
                Phase::Running => dead.push(r),
            },
            // state.json is written whole or not at all: a directory
            // without one is a warm helper's or a create that never got
            // that far. One that cannot be read is kept for a person to see.
            None if state.exists() => tracing::error!(
                path = %state.display(),
                "a sandbox's state cannot be read; its directory is left alone"
            ),
            None => unreadable.push(id),
        }
    }
    let keep: Vec<_> = live.iter().map(Record::lease).collect();
    let net = kiln_net::Network::setup(cfg.net.clone(), &keep).map_err(net_err)?;

    let mut inner = Inner {
        cfg,
        bins: BTreeMap::new(),
        net,
        disk,
        cgroups,
        sandboxes: Mutex::new(BTreeMap::new()),
        paused: Mutex::new(BTreeMap::new()),
        booting_layers: Mutex::new(BTreeMap::new()),
        busy: Mutex::new(BTreeSet::new()),
        events: tokio::sync::broadcast::channel(256).0,
        refilling: AtomicBool::new(false),
        warm: Mutex::new(Vec::new()),
        cgroup_counter: AtomicU64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
        ),
        shut_down: AtomicBool::new(false),
        uid_ranges,
        idmap_ok: Mutex::new(BTreeMap::new()),
    };
    for rec in &dead {
        tracing::info!(id = %rec.id, "removing the leftovers of a dead sandbox");
        if let Err(e) = super::kill::destroy(&inner, rec, false) {
            tracing::warn!(id = %rec.id, error = %e, "failed to remove a dead sandbox");
        }
    }
    for id in &unreadable {
        let _ = std::fs::remove_dir_all(inner.sandbox_dir(id));
    }
    for mut rec in to_pause {
        tracing::info!(id = %rec.id, "finishing the pause of a sandbox a crash interrupted");
        // Its network went with the namespaces the set-up removed.
        rec.net_index = u32::MAX;
        match super::pause::finish_fs_pause(&inner, rec.clone()) {
            Ok(r) => paused.push(r),
            Err(e) => {
                tracing::error!(id = %rec.id, error = %e, "could not finish a pause; its disk is kept");
                paused.push(rec);
            }
        }
    }
    for rec in live.iter().filter(|r| resumed.contains(&r.id)) {
        // A resume that got as far as running is done.
        if let Err(e) = super::create::write_record(&inner, rec) {
            tracing::warn!(id = %rec.id, error = %e, "failed to record a finished resume");
        }
    }
    {
        let mut map = inner.paused.lock().unwrap();
        for rec in paused {
            tracing::info!(id = %rec.id, "found a sandbox paused on its disk");
            map.insert(rec.id.clone(), rec);
        }
    }
    let live_cgroups: BTreeSet<&str> = live.iter().map(|r| r.cgroup.as_str()).collect();
    for cg in inner.cgroups.list() {
        if !live_cgroups.contains(cg.as_str()) {
            tracing::info!(cgroup = %cg, "removing a leftover cgroup");
            inner.cgroups.kill_and_remove(&cg)?;
        }
    }
    inner.disk.refill()?;
    {
        let mut map = inner.sandboxes.lock().unwrap();
        for rec in live {
            tracing::info!(id = %rec.id, "re-attached a running sandbox");
            let oom = inner.cgroups.stats(&rec.cgroup).oom_kills;
            let frozen = inner.cgroups.is_frozen(&rec.cgroup);
            map.insert(rec.id.clone(), Arc::new(Sandbox::new(rec, oom, frozen)));
        }
    }
    // Now that every sandbox standing on a layer is known.
    super::snapshot::collect_garbage_at(&inner, true);
    // Last, so that nothing fails after it is mounted.
    let mut files = vec![inner.cfg.agent_bin.clone()];
    files.extend(
        inner
            .cfg
            .template_binds
            .values()
            .flatten()
            .map(|(h, _)| h.clone()),
    );
    inner.bins = crate::host::bins::mount_copies(&inner.bins_dir(), &files)?;
    Ok(inner)
}

/// Blocking part of `ContainerRuntime::shutdown`.
pub(super) fn shutdown(inner: &Inner) -> Result<(), RuntimeError> {
    inner.net.shutdown().map_err(net_err)?;
    inner.disk.clear();
    crate::host::bins::unmount(&inner.bins_dir());
    if inner.sandboxes.lock().unwrap().is_empty() {
        inner.cgroups.remove_parents();
    }
    Ok(())
}
