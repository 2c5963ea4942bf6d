//! A sandbox's resource-use history: the samples kilnd's sampler takes
//! every few seconds (`CoreConfig::metrics_interval`), the last
//! [`CAPACITY`] of them in a ring, in memory (a kilnd restart starts them
//! anew). A sample is 32 bytes: a full ring is 23 KiB, grown only as
//! samples come, and dropped with its sandbox.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::{DateTime, Utc};
use kiln_runtime::SandboxStats;

/// Samples kept per sandbox: one hour at the default 5 s.
pub const CAPACITY: usize = 720;

/// One resource-use sample of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub at: DateTime<Utc>,
    pub cpu_count: u32,
    /// Percent of the sandbox's CPUs used since the previous sample (or
    /// since it started, for the first).
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    cpu_pct: f32,
    mem_used: u64,
    disk_used: u64,
}

/// The ring of one sandbox's samples.
#[derive(Debug, Default)]
pub struct MetricsHistory {
    samples: VecDeque<Sample>,
    /// Limits, as of the latest sample (they do not change while it lives).
    cpu_count: u32,
    mem_total: u64,
    disk_total: u64,
    /// CPU time at the latest sample, for the next one's percentage.
    last_cpu: Option<(u64, Instant)>,
}

impl MetricsHistory {
    /// Adds a sample of `stats`, read just now, of a sandbox that started at
    /// `started_at`; the oldest goes once the ring is full.
    pub fn record(&mut self, stats: &SandboxStats, started_at: DateTime<Utc>) -> Metrics {
        let (at, now) = (Utc::now(), Instant::now());
        let (prev_usec, elapsed) = match self.last_cpu.replace((stats.cpu_usage_usec, now)) {
            Some((usec, then)) => (usec, now.duration_since(then)),
            None => (0, (at - started_at).to_std().unwrap_or_default()),
        };
        let wall_usec = elapsed.as_micros() as f64 * f64::from(stats.cpu_count.max(1));
        let cpu_pct = if wall_usec > 0.0 {
            (stats.cpu_usage_usec.saturating_sub(prev_usec) as f64 / wall_usec * 100.0)
                .clamp(0.0, 100.0)
        } else {
            0.0
        };
        self.cpu_count = stats.cpu_count;
        self.mem_total = stats.memory_limit_bytes;
        self.disk_total = stats.disk_limit_bytes;
        let sample = Sample {
            at_ms: at.timestamp_millis(),
            cpu_pct: cpu_pct as f32,
            mem_used: stats.memory_used_bytes,
            disk_used: stats.disk_used_bytes,
        };
        // Two samplers (the timer, a request) may race: keep time order.
        if self.samples.back().is_none_or(|s| s.at_ms <= sample.at_ms) {
            if self.samples.len() == CAPACITY {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        self.metrics(&sample)
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn latest(&self) -> Option<Metrics> {
        self.samples.back().map(|s| self.metrics(s))
    }

    /// The samples taken from `start` to `end` (whole seconds, both
    /// included), oldest first.
    pub fn range(&self, start: i64, end: i64) -> Vec<Metrics> {
        self.samples
            .iter()
            .filter(|s| (start..=end).contains(&s.at_ms.div_euclid(1000)))
            .map(|s| self.metrics(s))
            .collect()
    }

    fn metrics(&self, s: &Sample) -> Metrics {
        Metrics {
            at: DateTime::from_timestamp_millis(s.at_ms).unwrap_or_default(),
            cpu_count: self.cpu_count,
            cpu_used_pct: f64::from(s.cpu_pct),
            mem_used: s.mem_used,
            mem_total: self.mem_total,
            disk_used: s.disk_used,
            disk_total: self.disk_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu_usec: u64, mem: u64) -> SandboxStats {
        SandboxStats {
            cpu_usage_usec: cpu_usec,
            cpu_count: 2,
            memory_used_bytes: mem,
            memory_limit_bytes: 1 << 30,
            disk_used_bytes: 7,
            disk_limit_bytes: 1 << 32,
        }
    }

    #[test]
    fn a_sample_is_small() {
        assert_eq!(std::mem::size_of::<Sample>(), 32);
    }

    #[test]
    fn keeps_the_latest_samples_in_order() {
        let mut h = MetricsHistory::default();
        let started = Utc::now() - chrono::Duration::seconds(10);
        assert!(h.is_empty() && h.latest().is_none());
        for i in 0..CAPACITY as u64 + 5 {
            h.record(&stats(i, i), started);
        }
        assert_eq!(h.len(), CAPACITY);
        let latest = h.latest().unwrap();
        assert_eq!(latest.mem_used, CAPACITY as u64 + 4);
        assert_eq!(latest.mem_total, 1 << 30);
        assert_eq!(latest.cpu_count, 2);
        let all = h.range(0, i64::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].mem_used, 5, "the oldest went first");
        assert!(all.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn range_selects_by_whole_seconds() {
        let mut h = MetricsHistory::default();
        let m = h.record(&stats(0, 1), Utc::now());
        let t = m.at.timestamp();
        assert_eq!(h.range(t, t).len(), 1);
        assert_eq!(h.range(t - 10, t - 1).len(), 0);
        assert_eq!(h.range(t + 1, t + 10).len(), 0);
    }

    #[test]
    fn cpu_share_is_a_percentage_of_the_sandbox_cpus() {
        let mut h = MetricsHistory::default();
        // 10 s of two CPUs is 20 s of CPU time: 5 s used is 25 %.
        let started = Utc::now() - chrono::Duration::seconds(10);
        let m = h.record(&stats(5_000_000, 0), started);
        assert!(
            (20.0..=25.5).contains(&m.cpu_used_pct),
            "{}",
            m.cpu_used_pct
        );
        // A counter that went backwards (a reboot) is no use, not negative.
        let m = h.record(&stats(0, 0), started);
        assert_eq!(m.cpu_used_pct, 0.0);
    }
}
