//! `stats`: resource use from the cgroups and the disk quota.

use std::sync::Arc;

use super::Inner;
use crate::runtime::{RuntimeError, SandboxStats};

pub(super) async fn stats(inner: &Arc<Inner>, id: &str) -> Result<SandboxStats, RuntimeError> {
    let paused = inner.paused.lock().unwrap().get(id).cloned();
    if let Some(rec) = paused {
        // No process, no memory: only its kept disk.
        return Ok(SandboxStats {
            cpu_count: rec.vcpus,
            memory_limit_bytes: rec.memory_bytes,
            disk_used_bytes: crate::host::fsutil::allocated_bytes(&super::pause::disk_path(
                inner, &rec,
            )),
            disk_limit_bytes: rec.disk_bytes,
            ..SandboxStats::default()
        });
    }
    let sb = inner.get(id)?;
    let cg = inner.cgroups.stats(&sb.rec.cgroup);
    Ok(SandboxStats {
        cpu_usage_usec: cg.cpu_usage_usec,
        cpu_count: sb.rec.vcpus,
        memory_used_bytes: cg.memory_used_bytes,
        memory_limit_bytes: sb.rec.memory_bytes,
        disk_used_bytes: crate::host::disk::usage(&std::path::PathBuf::from(format!(
            "/proc/{}/root",
            sb.rec.pid
        )))
        .0,
        disk_limit_bytes: sb.rec.disk_bytes,
    })
}
