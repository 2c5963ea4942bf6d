//! What the host says about itself: machine, kernel, commit, and memory
//! figures read from /proc and the cgroup file system (never estimated).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cgroup: &'static str,
    pub date: String,
    pub commit: String,
    /// /proc/loadavg's 1, 5 and 15 minute figures at the end of the run.
    pub load: String,
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A field of /proc/meminfo in KiB.
pub fn meminfo_kib(field: &str) -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub fn machine() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cores,
        memory_gib: meminfo_kib("MemTotal") as f64 / (1024.0 * 1024.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cgroup: if cgroup_v2() { "v2" } else { "v1" },
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit,
        load: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The cgroup directory holding a kilnd's sandboxes (`kiln/<tag>` in the
/// memory hierarchy).
fn sandbox_cgroups(tag: &str) -> PathBuf {
    if cgroup_v2() {
        PathBuf::from(format!("/sys/fs/cgroup/kiln/{tag}"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/memory/kiln/{tag}"))
    }
}

/// Memory charged to every cgroup under `kiln/<tag>` (sandboxes and warm
/// helpers), in bytes, and how many such cgroups there are.
pub fn cgroup_memory(tag: &str) -> (u64, usize) {
    let file = if cgroup_v2() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let mut total = 0;
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir(sandbox_cgroups(tag)) {
        for e in dir.flatten() {
            if e.path().is_dir() {
                if let Ok(v) = read(e.path().join(file)).trim().parse::<u64>() {
                    total += v;
                    n += 1;
                }
            }
        }
    }
    (total, n)
}

/// Resident set sizes (KiB) of the `kiln-agent` processes of a kilnd's
/// sandboxes.
pub fn agent_rss_kib(tag: &str) -> Vec<f64> {
    let needle = format!("/kiln/{tag}/");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        if read(p.join("comm")).trim() != "kiln-agent" {
            continue;
        }
        if !read(p.join("cgroup")).contains(&needle) {
            continue;
        }
        if let Some(kib) = read(p.join("status")).lines().find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        }) {
            out.push(kib);
        }
    }
    out
}
