//! Snapshots of a sandbox's filesystem, kept as read-only layers.
//!
//! Taking one freezes the sandbox (if it runs), syncs its filesystem and
//! copies its disk image (the writable upper) into
//! `snapshots/<id>/layer.img`, holes and all: the copy costs what the
//! sandbox changed, not the disk's size or the template (this kernel's ext4
//! has no reflinks to share even that). A sandbox started from it gets a
//! fresh upper over that layer, read-only and shared by every sandbox made
//! from it, over the layers it was itself made on, over the template.
//! The snapshot is written in `.tmp-<id>` and renamed into place once
//! fsynced: a crash leaves it whole or absent.
//!
//! Deleting a snapshot marks it; its files go once no sandbox and no other
//! snapshot stands on it (`collect_garbage`). The container runtime keeps
//! no memory in snapshots: forks boot on the copied filesystem.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::create::{boot, Boot, Reservation};
use super::pause::disk_path;
use super::{blocking, Inner};
use crate::host::{fsutil, sys, HostError};
use crate::runtime::{
    RuntimeError, RuntimeKind, SandboxHandle, SandboxSpec, SnapshotInfo, StateMode,
};

const LAYER: &str = "layer.img";
const META: &str = "meta.json";
/// Present in a deleted snapshot's directory until its files can go.
const DELETED: &str = "deleted";
const TMP_PREFIX: &str = ".tmp-";

/// What a snapshot's `meta.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    /// The layers it was taken on top of, top first (not the template).
    below: Vec<String>,
    size_bytes: u64,
    content_hash: String,
    /// The host uid root inside mapped to in the source (the layer's files
    /// are owned by that range).
    uid_base: u32,
}

fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "snapshot id {id:?} must be 1-64 of [A-Za-z0-9_-]"
        )))
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// A complete, not deleted snapshot's directory.
fn present(inner: &Inner, id: &str) -> Option<(PathBuf, Meta)> {
    let dir = inner.snapshots_dir().join(id);
    if dir.join(DELETED).exists() || !dir.join(LAYER).is_file() {
        return None;
    }
    read_meta(&dir).map(|m| (dir, m))
}

pub(super) async fn snapshot(
    inner: &Arc<Inner>,
    id: &str,
    snapshot_id: &str,
    mode: StateMode,
) -> Result<SnapshotInfo, RuntimeError> {
    if mode == StateMode::Memory {
        return Err(RuntimeError::unsupported(
            RuntimeKind::Container,
            "keep memory in snapshots",
        ));
    }
    check_id(snapshot_id)?;
    let running = inner.get(id).ok();
    let rec = match &running {
        Some(sb) => sb.record(),
        None => inner
            .paused
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?,
    };
    let (inner2, snap) = (inner.clone(), snapshot_id.to_owned());
    blocking(move || {
        let root = inner2.snapshots_dir();
        std::fs::create_dir_all(&root).map_err(HostError::io("create", &root))?;
        let fin = root.join(&snap);
        if fin.exists() {
            return Err(RuntimeError::Other(format!("snapshot {snap} already exists")));
        }
        let tmp = root.join(format!("{TMP_PREFIX}{snap}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(HostError::io("create", &tmp))?;
        let r = (|| {
            // A running sandbox is frozen while its disk is copied, so the
            // copy is of one instant.
            let freeze = running
                .as_ref()
                .filter(|sb| !sb.frozen.load(Ordering::Acquire))
                .map(|sb| sb.rec.cgroup.clone());
            if let Some(cg) = &freeze {
                inner2.cgroups.freeze(cg, true)?;
            }
            let copied = (|| {
                if let Some(sb) = &running {
                    let root = PathBuf::from(format!("/proc/{}/root", sb.rec.pid));
                    sys::syncfs(&root).map_err(HostError::io("sync the filesystem of", &root))?;
                }
                fsutil::copy_sparse(&disk_path(&inner2, &rec), &tmp.join(LAYER))
            })();
            if let Some(cg) = &freeze {
                if let Err(e) = inner2.cgroups.freeze(cg, false) {
                    tracing::error!(id = %rec.id, error = %e, "failed to thaw a sandbox after its snapshot");
                }
            }
            let copied = copied?;
            let meta = Meta {
                id: snap.clone(),
                below: rec.layers.clone(),
                size_bytes: fsutil::allocated_bytes(&tmp.join(LAYER)),
                content_hash: copied.content_hash,
                uid_base: inner2.cfg.uid_base,
            };
            let json = serde_json::to_vec_pretty(&meta).expect("a snapshot's meta serializes");
            fsutil::write_atomic(&tmp.join(META), &json)?;
            fsutil::rename_durably(&tmp, &fin)?;
            Ok(SnapshotInfo {
                id: snap.clone(),
                mode: StateMode::Filesystem,
                size_bytes: meta.size_bytes,
                content_hash: meta.content_hash,
            })
        })();
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    })
    .await
}

pub(super) async fn restore(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    snapshot_id: &str,
) -> Result<SandboxHandle, RuntimeError> {
    check_id(snapshot_id)?;
    super::create::validate(spec)?;
    super::egress::check(&spec.egress)?;
    let (_, meta) = present(inner, snapshot_id)
        .ok_or_else(|| RuntimeError::SnapshotNotFound(snapshot_id.to_owned()))?;
    {
        let exists = inner.sandboxes.lock().unwrap().contains_key(&spec.id)
            || inner.paused.lock().unwrap().contains_key(&spec.id);
        if exists || !inner.busy.lock().unwrap().insert(spec.id.clone()) {
            return Err(RuntimeError::AlreadyExists(spec.id.clone()));
        }
    }
    let _reserved = Reservation(inner, spec.id.clone());
    let mut layers = vec![snapshot_id.to_owned()];
    layers.extend(meta.below);
    let _pinned = Pin::new(inner, &spec.id, &layers);
    boot(inner, spec, Boot::Fresh { layers }).await
}

/// Keeps a booting sandbox's layers from garbage collection until it is
/// in the runtime's map (or failed).
struct Pin<'a>(&'a Inner, String);

impl<'a> Pin<'a> {
    fn new(inner: &'a Inner, id: &str, layers: &[String]) -> Self {
        inner
            .booting_layers
            .lock()
            .unwrap()
            .insert(id.to_owned(), layers.to_vec());
        Pin(inner, id.to_owned())
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.0.booting_layers.lock().unwrap().remove(&self.1);
    }
}

/// The read-only layers of a sandbox standing on `layers` (top first):
/// (image, mount point under its directory). Blocking.
pub(super) fn layer_mounts(
    inner: &Inner,
    dir: &Path,
    layers: &[String],
) -> Result<Vec<(PathBuf, PathBuf)>, RuntimeError> {
    layers
        .iter()
        .enumerate()
        .map(|(i, id)| {
            // A deleted layer still stands while sandboxes stand on it.
            let image = inner.snapshots_dir().join(id).join(LAYER);
            if !image.is_file() {
                return Err(RuntimeError::SnapshotNotFound(id.clone()));
            }
            let at = dir.join("ro").join(i.to_string());
            std::fs::create_dir_all(&at).map_err(HostError::io("create", &at))?;
            Ok((image, at))
        })
        .collect()
}

pub(super) async fn delete(inner: &Arc<Inner>, snapshot_id: &str) -> Result<(), RuntimeError> {
    check_id(snapshot_id)?;
    let (inner2, id) = (inner.clone(), snapshot_id.to_owned());
    blocking(move || {
        let dir = inner2.snapshots_dir().join(&id);
        if !dir.exists() {
            return Ok(());
        }
        fsutil::write_atomic(&dir.join(DELETED), b"")?;
        collect_garbage(&inner2);
        Ok(())
    })
    .await
}

pub(super) async fn list(inner: &Arc<Inner>) -> Result<Vec<SnapshotInfo>, RuntimeError> {
    let inner2 = inner.clone();
    blocking(move || {
        let Ok(rd) = std::fs::read_dir(inner2.snapshots_dir()) else {
            return Ok(Vec::new());
        };
        Ok(rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| present(&inner2, &n))
            .map(|(_, m)| SnapshotInfo {
                id: m.id,
                mode: StateMode::Filesystem,
                size_bytes: m.size_bytes,
                content_hash: m.content_hash,
            })
            .collect())
    })
    .await
}

/// Blocking: removes deleted snapshots nothing stands on any more, and
/// (`at_start`) half-written ones a crash left.
pub(super) fn collect_garbage_at(inner: &Inner, at_start: bool) {
    let root = inner.snapshots_dir();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return;
    };
    let names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for sb in inner.sandboxes.lock().unwrap().values() {
        used.extend(sb.rec.layers.iter().cloned());
    }
    for rec in inner.paused.lock().unwrap().values() {
        used.extend(rec.layers.iter().cloned());
    }
    for layers in inner.booting_layers.lock().unwrap().values() {
        used.extend(layers.iter().cloned());
    }
    for n in &names {
        if let Some((_, meta)) = present(inner, n) {
            used.insert(n.clone());
            used.extend(meta.below);
        }
    }
    for n in names {
        let dir = root.join(&n);
        let leftover = at_start && n.starts_with(TMP_PREFIX);
        let unused = dir.join(DELETED).exists() && !used.contains(&n);
        if leftover || unused {
            tracing::debug!(snapshot = %n, "removing a snapshot's files");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(snapshot = %n, error = %e, "failed to remove a snapshot's files");
            }
        }
    }
}

pub(super) fn collect_garbage(inner: &Inner) {
    collect_garbage_at(inner, false)
}
