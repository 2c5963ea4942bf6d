//! What a sandbox must not see of /proc and /sys, as runc hides it: paths
//! relative to the sandbox's root.

/// Paths masked with /dev/null (files) or an empty read-only tmpfs (dirs),
/// and paths made read-only, as runc does.
pub const MASKED: [&str; 9] = [
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/acpi",
    "proc/scsi",
    "proc/asound",
    "sys/firmware",
];
pub const READ_ONLY: [&str; 5] = [
    "proc/sys",
    "proc/sysrq-trigger",
    "proc/irq",
    "proc/bus",
    "proc/fs",
];
