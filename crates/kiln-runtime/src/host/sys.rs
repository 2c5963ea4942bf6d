//! The few raw syscalls the runtime makes itself.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes this process the reaper of orphaned descendants, so that sandbox
/// inits (whose parent, the spawn helper, exits) become our children and we
/// can collect their exit status.
pub fn set_child_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec: kilnd may have
/// inherited some from whatever started it (a pipe, a terminal's), and
/// none of them may reach what it starts (template builds, runsc, the
/// spawn helper, which closes its own again). Descriptors kilnd opens
/// itself are close-on-exec already (Rust's default).
pub fn cloexec_inherited() -> std::io::Result<()> {
    // SAFETY: close_range takes three integers and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` appear as `target` (without close-on-exec) in a child being
/// spawned. Only async-signal-safe calls: it runs between fork and exec.
pub fn dup_into_child(cmd: &mut tokio::process::Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure only calls dup2 and fcntl, which are
    // async-signal-safe, and touches no memory but its two integers.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Field `n` of `/proc/<pid>/stat` after the command (0: the state).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: skip to the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n).map(str::to_owned)
}

/// Whether process `pid` has exited and waits to be collected.
pub fn is_zombie(pid: i32) -> bool {
    stat_field(pid, 0).is_some_and(|s| s == "Z" || s == "X")
}

/// Start time of a process (clock ticks after boot), to tell a pid from a
/// later process that reused it.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 19)?.parse().ok()
}

/// Registers an owned fd with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is valid and open while owned, and always returns
    // the same fd; the AsyncFd owns it for its whole life.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// syncfs(2) of the filesystem holding `path` (for a sandbox's root seen
/// through `/proc/<pid>/root`, its overlay, which syncs its upper).
pub fn syncfs(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path)?;
    // SAFETY: syncfs takes an fd we own for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
