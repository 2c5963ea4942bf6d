//! Start-up (with recovery from a crashed previous run) and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use super::create::net_err;
use super::{ContainerConfig, Inner, Record, Sandbox};
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
    let disk = DiskPool::new(cfg.data_dir.join("disk-pool"), cfg.uid_base, cfg.disk_pool)?;
    for size in &cfg.disk_pool_sizes_mib {
        disk.want(*size);
    }

    let mut live = Vec::new();
    let mut dead = Vec::new();
    let mut unreadable = Vec::new();
    for entry in std::fs::read_dir(&sandboxes_dir)
        .map_err(io(format!("failed to list {}", sandboxes_dir.display())))?
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().into_owned();
        let rec: Option<Record> = std::fs::read(entry.path().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match rec {
            Some(r) if alive(&r, &cgroups) => live.push(r),
            Some(r) => dead.push(r),
            None => unreadable.push(id),
        }
    }
    let keep: Vec<_> = live.iter().map(Record::lease).collect();
    let net = kiln_net::Network::setup(cfg.net.clone(), &keep).map_err(net_err)?;

    let inner = Inner {
        cfg,
        net,
        disk,
        cgroups,
        sandboxes: Mutex::new(BTreeMap::new()),
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
    Ok(inner)
}

/// Blocking part of `ContainerRuntime::shutdown`.
pub(super) fn shutdown(inner: &Inner) -> Result<(), RuntimeError> {
    inner.net.shutdown().map_err(net_err)?;
    inner.disk.clear();
    if inner.sandboxes.lock().unwrap().is_empty() {
        inner.cgroups.remove_parents();
    }
    Ok(())
}
