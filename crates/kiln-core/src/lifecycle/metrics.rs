//! `metrics`: a sandbox's resource-use samples over a time range, and the
//! latest of several sandboxes. The samples come from the runtime's
//! counters, taken by one sampler for every running sandbox (see
//! `timers::spawn_metrics_sampler`) into each sandbox's ring
//! ([`crate::history`]).

use std::sync::Arc;

use chrono::Utc;

use super::transitions::{check, Op};
use super::{lock, Core, Live};
use crate::error::CoreError;
use crate::history::Metrics;
use crate::ids::short_id;
use crate::sandbox::{SandboxState, Team};

/// Most sandboxes one `metrics_of` call may ask about (E2B's limit).
pub const MAX_METRICS_SANDBOXES: usize = 100;

impl Core {
    /// The samples of sandbox `id` taken from `start` to `end` (Unix
    /// seconds, both included; default: from its start to now), oldest
    /// first. A running sandbox not sampled yet is sampled now, so that
    /// a new sandbox has one.
    pub async fn metrics(
        &self,
        team: &Team,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<Metrics>, CoreError> {
        let live = self.owned(team, id)?;
        let rec = live.record();
        check(Op::Metrics, id, rec.state)?;
        let start = start.unwrap_or(rec.started_at.timestamp());
        let end = end.unwrap_or_else(|| Utc::now().timestamp());
        if start > end {
            return Err(CoreError::InvalidArgument(format!(
                "invalid time range for metrics: start {start} is after end {end}"
            )));
        }
        if rec.state == SandboxState::Running && lock(&live.metrics).is_empty() {
            self.sample(&live).await?;
        }
        let samples = lock(&live.metrics).range(start, end);
        Ok(samples)
    }

    /// The latest sample of each of `ids` that is one of the team's
    /// sandboxes (others are left out, as E2B does), keyed by id.
    pub async fn metrics_of(
        &self,
        team: &Team,
        ids: &[String],
    ) -> Result<Vec<(String, Metrics)>, CoreError> {
        if ids.len() > MAX_METRICS_SANDBOXES {
            return Err(CoreError::InvalidArgument(format!(
                "too many sandboxes requested: {} (at most {MAX_METRICS_SANDBOXES})",
                ids.len()
            )));
        }
        let mut out = Vec::new();
        for raw in ids {
            let id = short_id(raw)
                .ok_or_else(|| CoreError::InvalidArgument(format!("invalid sandbox ID {raw:?}")))?;
            let Ok(live) = self.owned(team, id) else {
                continue;
            };
            let latest = lock(&live.metrics).latest();
            let m = match latest {
                Some(m) => m,
                None if live.state() == SandboxState::Running => match self.sample(&live).await {
                    Ok(m) => m,
                    Err(_) => continue,
                },
                None => continue,
            };
            out.push((id.to_owned(), m));
        }
        Ok(out)
    }

    /// Takes one sample of every running sandbox (the sampler does this
    /// every `metrics_interval`). Sandboxes that end meanwhile are skipped.
    pub async fn sample_metrics(&self) {
        let running: Vec<Arc<Live>> = self
            .inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|l| l.state() == SandboxState::Running)
            .cloned()
            .collect();
        for live in running {
            if let Err(e) = self.sample(&live).await {
                tracing::debug!(sandbox = %live.id(), error = %e, "no metrics sample");
            }
            // A thousand sandboxes are sampled without holding up others.
            tokio::task::yield_now().await;
        }
    }

    async fn sample(&self, live: &Live) -> Result<Metrics, CoreError> {
        let rec = live.record();
        let stats = self.backend_of(&rec)?.runtime.stats(&rec.id).await?;
        Ok(lock(&live.metrics).record(&stats, rec.started_at))
    }
}
