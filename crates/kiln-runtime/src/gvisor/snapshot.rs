//! `snapshot`, `restore` (a new sandbox from a snapshot), and the
//! snapshots' listing and deletion.
//!
//! A snapshot is a directory `snapshots/<id>/`: `disk.img` (a sparse copy
//! of the sandbox's disk), `checkpoint/` (runsc's image, with memory) and
//! `meta.json`. It is written as `snapshots/.tmp-<id>/`, fsynced and
//! renamed, so a crash leaves it whole or absent.
//!
//! With memory, of a running sandbox: `runsc checkpoint` (which stops it),
//! the disk copied while nothing writes it, then the sandbox restored in
//! place from that same image (same namespace, same address): its
//! processes go on, paused for the checkpoint's and the restore's time.
//! Filesystem only: `runsc pause` (the sentry frozen), the disk flushed
//! and copied, `runsc resume`.
//!
//! Restore: a copy of the snapshot's disk for the new sandbox, a network
//! namespace from the pool, `runsc restore` from the snapshot's image (or
//! `runsc run` for a filesystem snapshot). The image is only read, so any
//! number of sandboxes restore from one snapshot, each independent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use super::create::{
    adopt, boot, exists, run_runsc, validate, wait_ready, write_record, Disk, Start,
};
use super::pause::{record_phase, rewatch, sync_tree};
use super::{blocking, Inner, Phase};
use crate::host::{fsutil, sys, HostError};
use crate::runtime::{
    RuntimeError, RuntimeEvent, SandboxHandle, SandboxSpec, SnapshotInfo, StateMode,
};

fn valid_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "snapshot id {id:?} must be 1-128 of [A-Za-z0-9._-], not starting with a dot"
        )))
    }
}

pub(super) async fn snapshot(
    inner: &Arc<Inner>,
    id: &str,
    snapshot_id: &str,
    mode: StateMode,
) -> Result<SnapshotInfo, RuntimeError> {
    valid_id(snapshot_id)?;
    let Some(_reserved) = inner.reserve(id) else {
        return Err(RuntimeError::WrongState(format!(
            "sandbox {id} is busy (being changed by another request)"
        )));
    };
    let dest = inner.snapshots_dir().join(snapshot_id);
    if dest.exists() {
        return Err(RuntimeError::InvalidSpec(format!(
            "snapshot {snapshot_id} exists already"
        )));
    }
    let tmp = inner.snapshots_dir().join(format!(".tmp-{snapshot_id}"));
    {
        let tmp = tmp.clone();
        blocking(move || {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(HostError::io("remove", &tmp))?;
            }
            std::fs::create_dir_all(&tmp).map_err(HostError::io("create", &tmp))?;
            Ok(())
        })
        .await?;
    }
    let r = take(inner, id, &tmp, mode).await;
    let r = match r {
        Ok(disk_hash) => {
            let tmp = tmp.clone();
            let dest = dest.clone();
            let sid = snapshot_id.to_owned();
            blocking(move || finish(&tmp, &dest, &sid, mode, &disk_hash)).await
        }
        Err(e) => Err(e),
    };
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// Writes the snapshot's content into `tmp`; returns the disk copy's
/// content hash.
async fn take(
    inner: &Arc<Inner>,
    id: &str,
    tmp: &Path,
    mode: StateMode,
) -> Result<String, RuntimeError> {
    let dir = inner.sandbox_dir(id);
    let paused = inner.paused.lock().unwrap().get(id).cloned();
    if let Some(rec) = paused {
        if mode == StateMode::Memory && rec.phase != Phase::PausedMemory {
            return Err(RuntimeError::WrongState(format!(
                "sandbox {id} is paused without its memory: take a filesystem snapshot"
            )));
        }
        let tmp = tmp.to_path_buf();
        return blocking(move || {
            let disk = fsutil::copy_sparse(&dir.join("disk.img"), &tmp.join("disk.img"))?;
            if mode == StateMode::Memory {
                copy_dir(&dir.join("checkpoint"), &tmp.join("checkpoint"))?;
            }
            Ok(disk.content_hash)
        })
        .await;
    }
    let sb = inner.get(id)?;
    let image = tmp.join("checkpoint");
    match mode {
        StateMode::Filesystem => {
            inner.runsc.run(&["pause", id]).await?;
            let copied = {
                let dir = dir.clone();
                let tmp = tmp.to_path_buf();
                let layers = inner.mounts_dir(id).join("layers");
                blocking(move || copy_disk(&dir, &layers, &tmp)).await
            };
            let resumed = inner.runsc.run(&["resume", id]).await;
            let hash = copied?;
            resumed?;
            Ok(hash)
        }
        StateMode::Memory => {
            // Until it runs again from the image (run_runsc records it
            // running then), a crash leaves it paused on its disk.
            record_phase(inner, &sb, Phase::Pausing, Some(&image)).await?;
            sb.unwatch();
            if let Err(e) = super::pause::save(inner, id, sb.record().ip, &image).await {
                // Running as before, or booted again on its disk.
                let _ = record_phase(inner, &sb, Phase::Running, None).await;
                rewatch(inner, id);
                return Err(e);
            }
            let copied = {
                let dir = dir.clone();
                let tmp = tmp.to_path_buf();
                let layers = inner.mounts_dir(id).join("layers");
                blocking(move || copy_disk(&dir, &layers, &tmp)).await
            };
            // The source goes on from the image it just wrote.
            let mut rec = sb.record();
            let again = async {
                inner.runsc.delete(id).await?;
                let inner2 = inner.clone();
                let lease = rec.lease();
                blocking(move || inner2.net.readdress(&lease).map_err(super::net_err)).await?;
                run_runsc(inner, &mut rec, &Start::Restore(image.clone())).await?;
                wait_ready(inner, &rec).await?;
                Ok::<_, RuntimeError>(())
            }
            .await;
            match again {
                Ok(()) => {
                    *sb.rec.lock().unwrap() = rec;
                    rewatch(inner, id);
                    copied
                }
                Err(e) => {
                    tracing::error!(id, error = %e, "the sandbox could not go on after its checkpoint");
                    let _ = inner.events.send(RuntimeEvent::Exited {
                        id: id.to_owned(),
                        oom_killed: false,
                        exit_code: None,
                    });
                    Err(e)
                }
            }
        }
    }
}

/// Flushes a running sandbox's disk (its writers stopped) and copies it;
/// returns the copy's content hash.
fn copy_disk(dir: &Path, layers: &Path, tmp: &Path) -> Result<String, RuntimeError> {
    sys::syncfs(layers).map_err(HostError::io("syncfs", layers))?;
    Ok(fsutil::copy_sparse(&dir.join("disk.img"), &tmp.join("disk.img"))?.content_hash)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(to).map_err(HostError::io("create", to))?;
    for e in std::fs::read_dir(from)
        .map_err(HostError::io("list", from))?
        .flatten()
    {
        let dst = to.join(e.file_name());
        std::fs::copy(e.path(), &dst).map_err(HostError::io("copy to", &dst))?;
    }
    Ok(())
}

/// Hashes and sizes the content (the disk by its copy's hash of its data
/// extents: reading a sparse disk whole would read gigabytes of holes),
/// writes `meta.json`, fsyncs everything and renames the directory into
/// place.
fn finish(
    tmp: &Path,
    dest: &Path,
    id: &str,
    mode: StateMode,
    disk_hash: &str,
) -> Result<SnapshotInfo, RuntimeError> {
    let mut hash = sha2::Sha256::new();
    let disk = tmp.join("disk.img");
    hash.update(b"disk.img");
    hash.update(disk_hash.as_bytes());
    let mut size = fsutil::allocated_bytes(&disk);
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(tmp.join("checkpoint")) {
        files = rd.flatten().map(|e| e.path()).collect();
        files.sort();
    }
    for f in &files {
        let mut each = sha2::Sha256::new();
        let mut file = std::fs::File::open(f).map_err(HostError::io("open", f))?;
        std::io::copy(&mut file, &mut each).map_err(HostError::io("read", f))?;
        hash.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(each.finalize());
        size += fsutil::allocated_bytes(f);
    }
    let info = SnapshotInfo {
        id: id.to_owned(),
        mode,
        size_bytes: size,
        content_hash: hex::encode(hash.finalize()),
    };
    let json = serde_json::to_vec_pretty(&info).expect("snapshot info serializes");
    fsutil::write_atomic(&tmp.join("meta.json"), &json)?;
    sync_tree(tmp)?;
    fsutil::rename_durably(tmp, dest)?;
    Ok(info)
}

fn read_meta(dir: &Path) -> Option<SnapshotInfo> {
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()
}

pub(super) async fn restore(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    snapshot_id: &str,
) -> Result<SandboxHandle, RuntimeError> {
    validate(spec)?;
    valid_id(snapshot_id).map_err(|_| RuntimeError::SnapshotNotFound(snapshot_id.to_owned()))?;
    let snap = inner.snapshots_dir().join(snapshot_id);
    let Some(meta) = read_meta(&snap) else {
        return Err(RuntimeError::SnapshotNotFound(snapshot_id.to_owned()));
    };
    if exists(inner, &spec.id) {
        return Err(RuntimeError::AlreadyExists(spec.id.clone()));
    }
    let Some(_reserved) = inner.reserve(&spec.id) else {
        return Err(RuntimeError::AlreadyExists(spec.id.clone()));
    };
    let dir = inner.sandbox_dir(&spec.id);
    {
        let dir = dir.clone();
        let snap = snap.clone();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(HostError::io("create", &dir))?;
            let r = fsutil::copy_sparse(&snap.join("disk.img"), &dir.join("disk.img"));
            if let Err(e) = r {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
            Ok(())
        })
        .await?;
    }
    let start = match meta.mode {
        StateMode::Memory => Start::Restore(snap.join("checkpoint")),
        StateMode::Filesystem => Start::Run,
    };
    match boot(inner, spec, Disk::Kept, start, Phase::Running).await {
        Ok(rec) => {
            let inner2 = inner.clone();
            let rec2 = rec.clone();
            blocking(move || write_record(&inner2, &rec2)).await?;
            Ok(adopt(inner, rec))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

pub(super) async fn delete(inner: &Arc<Inner>, snapshot_id: &str) -> Result<(), RuntimeError> {
    if valid_id(snapshot_id).is_err() {
        return Ok(()); // no such snapshot can exist
    }
    let dir = inner.snapshots_dir().join(snapshot_id);
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::io("remove", &dir)(e).into()),
    })
    .await
}

pub(super) async fn list(inner: &Arc<Inner>) -> Result<Vec<SnapshotInfo>, RuntimeError> {
    let dir = inner.snapshots_dir();
    blocking(move || {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                // Half-written by a crash: never complete, never listed.
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            match read_meta(&e.path()) {
                Some(m) => out.push(m),
                None => tracing::warn!(path = %e.path().display(), "a snapshot without meta.json is left alone"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    })
    .await
}
