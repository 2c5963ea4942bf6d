//! `kill`: destroy a sandbox, running or paused, and everything it used.

use std::sync::Arc;

use super::create::unmount_rootfs;
use super::{blocking, net_err, Inner, Record};
use crate::host::HostError;
use crate::runtime::RuntimeError;

pub(super) async fn kill(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let running = inner.sandboxes.lock().unwrap().remove(id);
    let rec = match running {
        Some(sb) => {
            sb.unwatch();
            sb.record()
        }
        // Paused: its checkpoint and disk to delete.
        None => match inner.paused.lock().unwrap().remove(id) {
            Some(rec) => rec,
            None => return Ok(()), // unknown or already killed
        },
    };
    destroy(inner, &rec).await?;
    tracing::debug!(id, "gvisor sandbox killed");
    Ok(())
}

/// Removes every host object of a sandbox, idempotently: runsc's sandbox
/// (`runsc delete --force`: its sentry and gofer processes, its state),
/// the cgroup, the overlay and disk mounts, the network namespace (back
/// to the pool), the directory with its disk and checkpoint.
pub(super) async fn destroy(inner: &Arc<Inner>, rec: &Record) -> Result<(), RuntimeError> {
    let mut first_err = inner.runsc.delete(&rec.id).await.err();
    let inner2 = inner.clone();
    let rec = rec.clone();
    let r = blocking(move || {
        let mut first_err: Option<RuntimeError> = inner2
            .cgroups
            .kill_and_remove(&rec.id)
            .err()
            .map(Into::into);
        let dir = inner2.sandbox_dir(&rec.id);
        if let Err(e) = unmount_rootfs(&inner2, &rec.id) {
            first_err.get_or_insert(e);
        }
        if rec.has_net() {
            if let Err(e) = inner2.net.recycle(&rec.lease()).map_err(net_err) {
                first_err.get_or_insert(e);
            }
        }
        if let Err(source) = std::fs::remove_dir_all(&dir) {
            if source.kind() != std::io::ErrorKind::NotFound {
                first_err.get_or_insert(HostError::io("remove", &dir)(source).into());
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
    .await;
    if let Err(e) = r {
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
