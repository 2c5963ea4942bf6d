//! Starting a process: pipes or a PTY, a new session, the acting user's
//! credentials. The only unsafe code of the agent is here: the `pre_exec`
//! hook that runs between fork and exec.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rustix::fs::{Gid, Uid};

/// What to start.
pub struct SpawnSpec {
    pub cmd: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// (cols, rows) of a PTY; `None` for pipes.
    pub pty: Option<(u16, u16)>,
    /// Keep a stdin pipe (pipes only; a PTY always takes input).
    pub stdin: bool,
}

/// The parent's ends of a started process's stdio.
pub struct Spawned {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub pty_master: Option<OwnedFd>,
}

/// Starts the process; returns its pid and stdio.
pub fn spawn(spec: &SpawnSpec) -> io::Result<(u32, Spawned)> {
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args);
    cmd.env_clear();
    cmd.envs(
        spec.env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    cmd.current_dir(&spec.cwd);

    let mut master = None;
    let mut pty_slave = false;
    if let Some((cols, rows)) = spec.pty {
        let (m, slave) = open_pty(cols, rows)?;
        cmd.stdin(Stdio::from(slave.try_clone()?));
        cmd.stdout(Stdio::from(slave.try_clone()?));
        cmd.stderr(Stdio::from(slave));
        master = Some(m);
        pty_slave = true;
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }

    let switch_user = rustix::process::geteuid().is_root()
        && (spec.uid != 0 || spec.gid != 0 || !spec.groups.is_empty());
    let uid = Uid::from_raw(spec.uid);
    let gid = Gid::from_raw(spec.gid);
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // The agent's children are the OOM killer's first choice, in the
    // sandbox's cgroup (a fork or memory bomb loses its own processes, not
    // the agent and with it the sandbox) and on the host. Raising
    // oom_score_adj needs no privilege. Kiln's runtime may start the agent
    // at a lower nice value; children go back to nice 0.
    let reset_nice = rustix::process::getpriority_process(None).is_ok_and(|n| n < 0);
    let raise_oom = own_oom_score_adj().is_some_and(|a| a < CHILD_OOM_SCORE_ADJ);

    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It makes raw system calls
    // (close_range, and through rustix setpriority, open/write/close of a
    // static path, setsid, ioctl, setgroups, setgid, setuid: no allocation,
    // no locks) on values prepared before the fork and captured by move.
    unsafe {
        cmd.pre_exec(move || {
            close_inherited_on_exec()?;
            if reset_nice {
                let _ = rustix::process::setpriority_process(None, 0);
            }
            if raise_oom {
                raise_oom_score_adj();
            }
            rustix::process::setsid()?;
            if pty_slave {
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            }
            if switch_user {
                rustix::thread::set_thread_groups(&groups)?;
                rustix::thread::set_thread_gid(gid)?;
                rustix::thread::set_thread_uid(uid)?;
            }
            Ok(())
        });
    }

    let mut child = cmd.spawn()?;
    // `cmd` holds the parent's copies of the PTY slave: close them now, or
    // the master never sees the end of the output.
    drop(cmd);
    let pid = child.id();
    let spawned = Spawned {
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        pty_master: master,
    };
    // Dropping a `Child` neither waits nor kills: the reaper collects it.
    drop(child);
    Ok((pid, spawned))
}

/// Marks every descriptor above stdio close-on-exec, so the child gets
/// only 0-2: nothing the agent holds (or inherited, whatever its flags)
/// reaches the processes it starts. Marking rather than closing keeps std's
/// own exec-error pipe working (it is close-on-exec already).
/// Async-signal-safe: raw system calls on stack memory only.
fn close_inherited_on_exec() -> io::Result<()> {
    // SAFETY: close_range takes three integers and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Kernels before 5.11, and gVisor, lack the flag (or the call):
        // mark each open descriptor that /proc lists instead.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => mark_listed_cloexec(),
        _ => Err(e),
    }
}

/// The fallback of [`close_inherited_on_exec`]: reads /proc/self/fd with
/// getdents64 into a stack buffer and sets FD_CLOEXEC on every descriptor
/// above 2.
fn mark_listed_cloexec() -> io::Result<()> {
    // SAFETY: open of a static NUL-terminated path.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    let result = loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2),
            // d_type (1), d_name (NUL-terminated).
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let mut fd: i32 = 0;
            let mut digits = 0;
            for &b in buf[at + 19..(at + reclen).min(n as usize)].iter() {
                if !b.is_ascii_digit() {
                    break;
                }
                fd = fd.saturating_mul(10).saturating_add(i32::from(b - b'0'));
                digits += 1;
            }
            if digits > 0 && fd > 2 && fd != dir {
                // SAFETY: fcntl on an integer descriptor; one that closed
                // meanwhile just fails.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            at += reclen;
        }
    };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(dir) };
    result
}

/// The agent's own `oom_score_adj`, if /proc tells; read once (nothing
/// changes it after the agent starts).
fn own_oom_score_adj() -> Option<i32> {
    static OWN: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// The `oom_score_adj` of the processes the agent starts.
pub const CHILD_OOM_SCORE_ADJ: i32 = 500;
/// The same, as written to /proc (a test holds the two equal).
const CHILD_OOM_SCORE_ADJ_TEXT: &[u8] = b"500";

/// Sets the calling process's `oom_score_adj` to `CHILD_OOM_SCORE_ADJ`.
/// Async-signal-safe: a static path and raw open, write and close, no
/// allocation.
fn raise_oom_score_adj() {
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open(
        c"/proc/self/oom_score_adj",
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let _ = rustix::io::write(&fd, CHILD_OOM_SCORE_ADJ_TEXT);
    }
}

fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    resize(slave.as_fd(), cols, rows)?;
    Ok((master, slave))
}

/// Sets a PTY's window size (the kernel sends SIGWINCH to its foreground
/// process group).
pub fn resize(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Registers a PTY master with the runtime, non-blocking.
pub fn nonblocking_async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    // SAFETY: `register` needs the descriptor to stay open and unshared for
    // as long as it is registered: it is an `OwnedFd` we just created, moved
    // into the `AsyncFd`, and closed only when the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_proc_fallback_marks_every_descriptor_close_on_exec() {
        // SAFETY: fcntl (and below dup and close) on integer descriptors
        // this test owns; no memory is passed.
        let flags = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // dup gives descriptors without close-on-exec, as a careless
        // parent leaves them.
        // SAFETY: as above.
        let fds: Vec<i32> = (0..3).map(|_| unsafe { libc::dup(1) }).collect();
        for fd in &fds {
            assert!(*fd > 2);
            assert_eq!(flags(*fd) & libc::FD_CLOEXEC, 0);
        }
        mark_listed_cloexec().unwrap();
        for fd in fds {
            assert_ne!(flags(fd) & libc::FD_CLOEXEC, 0, "fd {fd}");
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }

    /// What `cmd arg`, spawned as this test's own user, prints.
    fn output_of(cmd: &str, arg: &str) -> String {
        let spec = SpawnSpec {
            cmd: cmd.into(),
            args: vec![arg.into()],
            env: vec![],
            cwd: "/".into(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            groups: vec![],
            pty: None,
            stdin: false,
        };
        let (_, spawned) = spawn(&spec).unwrap();
        let mut out = String::new();
        std::fs::File::from(spawned.stdout.unwrap())
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn children_get_only_stdio() {
        // A descriptor without close-on-exec, as one inherited from
        // whoever started the agent would be.
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
        let out = output_of("/bin/ls", "/proc/self/fd");
        drop((r, w));
        // ls lists its own directory descriptor (3) besides stdio.
        let fds: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "open in the child: {out}");
    }

    #[test]
    fn children_are_the_oom_killers_first_choice() {
        assert_eq!(
            std::str::from_utf8(CHILD_OOM_SCORE_ADJ_TEXT).unwrap(),
            CHILD_OOM_SCORE_ADJ.to_string()
        );
        if own_oom_score_adj().is_none_or(|a| a >= CHILD_OOM_SCORE_ADJ) {
            return; // no /proc, or already raised: nothing to see
        }
        let out = output_of("/bin/cat", "/proc/self/oom_score_adj");
        assert_eq!(out.trim(), CHILD_OOM_SCORE_ADJ.to_string());
    }
}
