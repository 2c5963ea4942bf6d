//! `stats`: resource use from the cgroups and the disk quota.

use std::sync::Arc;

use super::Inner;
use crate::runtime::{RuntimeError, SandboxStats};

pub(super) async fn stats(inner: &Arc<Inner>, id: &str) -> Result<SandboxStats, RuntimeError> {
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
