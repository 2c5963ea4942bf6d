//! Limits the agent keeps inside a sandbox whose kernel does not keep them
//! itself: gVisor's (the runtime passes `--max-processes` and
//! `--memory-limit`).
//!
//! - Processes: on gVisor every sandbox process costs host threads, and a
//!   sentry that cannot make one dies with the whole sandbox. The agent
//!   sets RLIMIT_NPROC on itself, inherited by everything it starts, so a
//!   fork bomb meets EAGAIN inside (gVisor keeps the count per uid; nothing
//!   inside holds CAP_SYS_RESOURCE to raise it).
//! - Memory: gVisor has no OOM killer; its memory is the sentry's, and the
//!   host's OOM killer at the cgroup's limit ends the sandbox. The runtime
//!   gives the host cgroup headroom above the sandbox's limit, and the
//!   agent, watching the memory gVisor's kernel reports in use plus what
//!   each process costs the sentry on the host, kills the largest process
//!   when the sandbox goes over its own limit: a memory bomb is killed as
//!   the container runtime's kernel would kill it, and the sandbox lives
//!   on.

use std::time::Duration;

/// Sets RLIMIT_NPROC (soft and hard) on the agent, for all it starts.
pub fn limit_processes(n: u64) -> anyhow::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Nproc,
        Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot set RLIMIT_NPROC to {n}: {e}"))
}

/// Bytes in use by the sandbox, from /proc/meminfo's text: MemTotal less
/// MemFree (gVisor's kernel reports its memory file's use there, page
/// cache and tmpfs included).
pub fn used_bytes(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(field("MemTotal")?.saturating_sub(field("MemFree")?) * 1024)
}

/// The process to kill: the one with the most resident memory, never the
/// agent (pid 1) or `me`. `rss` lists (pid, resident bytes).
pub fn victim(rss: impl IntoIterator<Item = (i32, u64)>, me: i32) -> Option<(i32, u64)> {
    rss.into_iter()
        .filter(|&(pid, bytes)| pid > 1 && pid != me && bytes > 0)
        .max_by_key(|&(pid, bytes)| (bytes, std::cmp::Reverse(pid)))
}

/// What a process costs the sentry on the host beyond the memory gVisor's
/// kernel reports (its stub process's page tables and the sentry's task
/// state; about 0.45 MiB measured on runsc's ptrace platform).
pub const PROCESS_OVERHEAD: u64 = 512 << 10;

/// The pids of every process in the sandbox (its /proc).
fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The sandbox's memory use as the host's cgroup sees it: /proc/meminfo's
/// use plus each process's overhead; `None` if /proc/meminfo is unreadable.
fn measure() -> Option<u64> {
    let used = used_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    Some(used + pids().len() as u64 * PROCESS_OVERHEAD)
}

/// Every process's resident bytes (from /proc/<pid>/statm).
fn resident() -> Vec<(i32, u64)> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, pages * 4096))
        })
        .collect()
}

/// How long to wait before the next look: the closer to the limit, the
/// sooner (an idle sandbox costs two reads a second).
fn next_look(used: u64, limit: u64) -> Duration {
    match used.saturating_mul(100) / limit.max(1) {
        0..=49 => Duration::from_millis(500),
        50..=79 => Duration::from_millis(50),
        _ => Duration::from_millis(5),
    }
}

/// Keeps the sandbox's memory use at or under `limit` bytes for as long as
/// the agent runs.
pub async fn watch_memory(limit: u64) {
    let me = std::process::id() as i32;
    loop {
        let used = tokio::task::spawn_blocking(measure).await.ok().flatten();
        let Some(used) = used else {
            eprintln!("kiln-agent: /proc/meminfo is unreadable: the memory limit is not kept");
            return;
        };
        if used > limit {
            let found = tokio::task::spawn_blocking(move || victim(resident(), me))
                .await
                .ok()
                .flatten();
            if let Some((pid, bytes)) = found {
                eprintln!(
                    "kiln-agent: the sandbox uses {} MiB, over its {} MiB: killed pid {pid} ({} MiB resident)",
                    used >> 20,
                    limit >> 20,
                    bytes >> 20
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                // Its memory goes back when it has exited, not at the
                // signal: give it the time before looking again.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while tokio::time::Instant::now() < deadline && alive(pid) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                continue;
            }
            // Over with no process to kill (its files in /tmp, say): look
            // again later, not in a busy loop.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tokio::time::sleep(next_look(used, limit)).await;
    }
}

/// Whether `pid` still runs (a zombie has released its memory).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_less_free() {
        let m = "MemTotal:         262144 kB\nMemFree:          255148 kB\nMemAvailable:     255148 kB\n";
        assert_eq!(used_bytes(m), Some((262144 - 255148) * 1024));
        assert_eq!(used_bytes("MemTotal: 10 kB\n"), None);
        assert_eq!(used_bytes("MemTotalX: 10 kB\nMemFree: 1 kB\n"), None);
    }

    #[test]
    fn the_victim_is_the_largest_never_init_or_the_agent() {
        let rss = [(1, 900), (7, 100), (9, 300), (12, 300), (40, 0)];
        assert_eq!(victim(rss, 9), Some((12, 300)));
        assert_eq!(victim(rss, 2), Some((9, 300)));
        assert_eq!(victim([(1, 5)], 1), None);
    }

    #[test]
    fn looks_sooner_near_the_limit() {
        assert!(next_look(10, 100) > next_look(60, 100));
        assert!(next_look(60, 100) > next_look(95, 100));
        assert_eq!(next_look(200, 100), Duration::from_millis(5));
    }
}
