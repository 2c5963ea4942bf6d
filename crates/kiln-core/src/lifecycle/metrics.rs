//! `metrics`: a resource-use sample from the runtime's counters.

use std::time::Instant;

use chrono::{DateTime, Utc};
use kiln_runtime::SandboxStats;

use super::transitions::{check, Op};
use super::{lock, Core};
use crate::error::CoreError;
use crate::sandbox::Team;

/// One resource-use sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub at: DateTime<Utc>,
    pub stats: SandboxStats,
    /// Percent of the sandbox's CPUs used since the previous sample.
    pub cpu_used_pct: f64,
}

impl Core {
    /// A resource-use sample, from the runtime's cgroup counters.
    pub async fn metrics(&self, team: &Team, id: &str) -> Result<Metrics, CoreError> {
        let live = self.owned(team, id)?;
        let rec = live.record();
        check(Op::Metrics, id, rec.state)?;
        let stats = self.backend_of(&rec)?.runtime.stats(id).await?;
        let now = Instant::now();
        let (prev_usec, elapsed) = match lock(&live.last_cpu).replace((stats.cpu_usage_usec, now)) {
            Some((usec, at)) => (usec, now.duration_since(at)),
            None => (
                0,
                (Utc::now() - rec.started_at).to_std().unwrap_or_default(),
            ),
        };
        let wall_usec = elapsed.as_micros() as f64 * f64::from(stats.cpu_count.max(1));
        let cpu_used_pct = if wall_usec > 0.0 {
            (stats.cpu_usage_usec.saturating_sub(prev_usec) as f64 / wall_usec * 100.0)
                .clamp(0.0, 100.0)
        } else {
            0.0
        };
        Ok(Metrics {
            at: Utc::now(),
            stats,
            cpu_used_pct,
        })
    }
}
