//! `stats`: resource use from runsc's cgroup and the sandbox's disk.

use std::sync::Arc;

use super::Inner;
use crate::runtime::{RuntimeError, SandboxStats};

pub(super) async fn stats(inner: &Arc<Inner>, id: &str) -> Result<SandboxStats, RuntimeError> {
    let paused = inner.paused.lock().unwrap().get(id).cloned();
    if let Some(rec) = paused {
        // No process, no memory: its disk (and checkpoint) only.
        let dir = inner.sandbox_dir(id);
        return Ok(SandboxStats {
            cpu_count: rec.vcpus,
            memory_limit_bytes: rec.memory_bytes,
            disk_used_bytes: crate::host::fsutil::allocated_bytes(&dir.join("disk.img")),
            disk_limit_bytes: rec.disk_bytes,
            ..SandboxStats::default()
        });
    }
    let rec = inner.get(id)?.record();
    let cg = inner.cgroups.stats(id);
    Ok(SandboxStats {
        cpu_usage_usec: cg.cpu_usage_usec,
        cpu_count: rec.vcpus,
        memory_used_bytes: cg.memory_used_bytes,
        memory_limit_bytes: rec.memory_bytes,
        disk_used_bytes: crate::host::disk::usage(&inner.mounts_dir(id).join("layers")).0,
        disk_limit_bytes: rec.disk_bytes,
    })
}
