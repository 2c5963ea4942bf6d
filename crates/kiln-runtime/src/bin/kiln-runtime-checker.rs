//! `kiln-runtime-checker`: a stand-in agent for the container runtime's
//! tests (youki's `runtimetest` idea). Started by the runtime as the
//! sandbox's init, it listens on the agent port, reports ready on
//! `KILN_READY_FD`, and answers one-line requests on each connection:
//!
//! - `ping` → `pong`
//! - `checks <hostname>` → one line per isolation check run from inside:
//!   `<name> ok` or `<name> FAIL <why>`
//! - `connect <ip:port>` → `ok` or `err <error>` (TCP, 1 s timeout)
//! - `sh <command>` → `exit=<code>` then the output (via /bin/sh)
//! - `forkbomb <secs>` → forks without end for a while, then `forks=<n> eagain=<bool>`
//! - `memhog <MiB>` → a child touches that much memory; `signal=<n> code=<n>`
//! - `fill <path> <MiB>` → writes up to that much; `written=<bytes> errno=<n>`
//! - `spin <secs>` → burns CPU in 2 threads; `cpu_ms=<n> wall_ms=<n>`
//!
//! Test tool only: it is not shipped and not part of the runtime.

#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--memhog") {
        let mib: usize = args[2].parse().unwrap();
        memhog_child(mib);
    }
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "0.0.0.0:49983".into());
    let listener = TcpListener::bind(&listen).expect("bind");
    if let Ok(fd) = std::env::var("KILN_READY_FD") {
        let fd: i32 = fd.parse().expect("KILN_READY_FD is a number");
        // SAFETY: the runtime passed us this fd to own; nothing else uses it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = f.write_all(b"R");
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = serve(conn);
        reap();
    }
}

/// Collects orphans reparented to us (we are pid 1).
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

fn serve(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let reply = match cmd {
        "ping" => "pong".to_owned(),
        "checks" => checks(rest),
        "connect" => match TcpStream::connect_timeout(
            &rest.parse().expect("an ip:port"),
            Duration::from_secs(1),
        ) {
            Ok(_) => "ok".into(),
            Err(e) => format!("err {e}"),
        },
        "sh" => {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(rest)
                .output();
            match out {
                Ok(o) => format!(
                    "exit={}\n{}{}",
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("exit=-1\n{e}"),
            }
        }
        "forkbomb" => forkbomb(rest.parse().unwrap_or(2)),
        "memhog" => {
            let out = std::process::Command::new("/proc/self/exe")
                .args(["--memhog", rest])
                .status();
            match out {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    format!(
                        "signal={} code={}",
                        s.signal().unwrap_or(0),
                        s.code().unwrap_or(-1)
                    )
                }
                Err(e) => format!("status=err {e}"),
            }
        }
        "fill" => {
            let (path, mib) = rest.split_once(' ').unwrap_or((rest, "1"));
            fill(path, mib.parse().unwrap_or(1))
        }
        "spin" => spin(rest.parse().unwrap_or(2)),
        _ => format!("unknown command {cmd:?}"),
    };
    let mut conn = conn;
    conn.write_all(reply.as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn checks(hostname: &str) -> String {
    let mut out = Vec::new();
    let mut check = |name: &str, r: Result<(), String>| {
        out.push(match r {
            Ok(()) => format!("{name} ok"),
            Err(e) => format!("{name} FAIL {e}"),
        })
    };
    let expect_eperm = |what: &str, rc: i64| -> Result<(), String> {
        let e = errno();
        if rc == -1 && (e == libc::EPERM || e == libc::EACCES) {
            Ok(())
        } else {
            Err(format!("{what} returned {rc}, errno {e}"))
        }
    };

    check("pid-1", {
        let me = std::process::id();
        if me == 1 {
            Ok(())
        } else {
            Err(format!("pid {me}"))
        }
    });
    check("host-processes-invisible", {
        let n = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count()
            })
            .unwrap_or(0);
        if n > 0 && n <= 3 {
            Ok(())
        } else {
            Err(format!("{n} processes visible"))
        }
    });
    check("hostname", {
        let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if h.trim() == hostname {
            Ok(())
        } else {
            Err(format!("hostname {h:?}"))
        }
    });
    check("uid-0-mapped-unprivileged", {
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let f: Vec<&str> = map.split_whitespace().collect();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        if uid == 0 && f.len() == 3 && f[0] == "0" && f[1] != "0" {
            Ok(())
        } else {
            Err(format!("uid {uid}, map {map:?}"))
        }
    });
    check("host-owned-file-unwritable", {
        // The test put /host-owned, owned by real root, into the template.
        match std::fs::OpenOptions::new().append(true).open("/host-owned") {
            Ok(_) => Err("opened for writing".into()),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(()),
            Err(e) => Err(format!("unexpected {e}")),
        }
    });
    check("host-file-chown-denied", {
        let r = std::os::unix::fs::chown("/host-owned", Some(0), Some(0));
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    check("host-fs-invisible", {
        // Paths of the host that are not in the template.
        if std::path::Path::new("/work").exists() || std::path::Path::new("/root/.cargo").exists() {
            Err("host paths visible".into())
        } else {
            Ok(())
        }
    });
    check("mount-host-device-denied", {
        let src = c"/dev/vda";
        let dst = c"/mnt";
        let fstype = c"ext4";
        let _ = std::fs::create_dir_all("/mnt");
        // SAFETY: valid NUL-terminated strings, null data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        expect_eperm("mount", rc as i64)
    });
    check("mknod-block-device-denied", {
        let p = c"/tmp/vda";
        // SAFETY: valid path.
        let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(254, 0)) };
        expect_eperm("mknod", rc as i64)
    });
    check("tmpfs-mount-denied", {
        let _ = std::fs::create_dir_all("/tmp/m");
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/tmp/m".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        expect_eperm("mount tmpfs", rc as i64)
    });
    for (name, nr) in [
        ("init_module-denied", libc::SYS_init_module),
        ("finit_module-denied", libc::SYS_finit_module),
        ("kexec_load-denied", libc::SYS_kexec_load),
        ("kexec_file_load-denied", libc::SYS_kexec_file_load),
        ("bpf-denied", libc::SYS_bpf),
        ("perf_event_open-denied", libc::SYS_perf_event_open),
        ("keyctl-denied", libc::SYS_keyctl),
        ("reboot-denied", libc::SYS_reboot),
        ("swapon-denied", libc::SYS_swapon),
        ("settimeofday-denied", libc::SYS_settimeofday),
        ("open_by_handle_at-denied", libc::SYS_open_by_handle_at),
        ("setns-denied", libc::SYS_setns),
    ] {
        // All-zero arguments: a filter-less kernel would answer EFAULT or
        // EINVAL (or EBADF), never EPERM for root with these capabilities.
        // SAFETY: the syscalls are denied before they look at the
        // arguments; if not, zero/NULL arguments are rejected by the kernel.
        let rc = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0) };
        check(name, expect_eperm(name, rc));
    }
    check("x32-abi-denied", {
        // x32 getpid: ENOSYS on kernels without x32, EPERM from our filter.
        // SAFETY: getpid takes no arguments.
        let rc = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        expect_eperm("x32 getpid", rc)
    });
    check("unshare-userns-denied", {
        // SAFETY: plain flag argument.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
        expect_eperm("unshare", rc as i64)
    });
    check("proc-sys-read-only", {
        match std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/hostname")
        {
            Ok(_) => Err("writable".into()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => Ok(()),
            Err(e) => Err(format!("unexpected {e}")),
        }
    });
    check("sysrq-trigger-read-only", {
        match std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sysrq-trigger")
        {
            Ok(_) => Err("writable".into()),
            Err(_) => Ok(()),
        }
    });
    check("proc-kcore-masked", {
        let mut buf = Vec::new();
        let n = std::fs::File::open("/proc/kcore")
            .and_then(|mut f| f.read_to_end(&mut buf))
            .unwrap_or(0);
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} bytes readable"))
        }
    });
    check("sys-read-only", {
        match std::fs::OpenOptions::new()
            .write(true)
            .open("/sys/kernel/uevent_helper")
        {
            Ok(_) => Err("writable".into()),
            Err(_) => Ok(()),
        }
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    check("capabilities-docker-default", {
        let eff = field("CapEff:");
        let bnd = field("CapBnd:");
        if eff == "00000000a80425fb" && bnd == "00000000a80425fb" {
            Ok(())
        } else {
            Err(format!("CapEff {eff} CapBnd {bnd}"))
        }
    });
    check("seccomp-filter-on", {
        if field("Seccomp:") == "2" {
            Ok(())
        } else {
            Err(format!("Seccomp: {}", field("Seccomp:")))
        }
    });
    check("no-new-privs-off-for-sudo", {
        if field("NoNewPrivs:") == "0" {
            Ok(())
        } else {
            Err("NoNewPrivs set".into())
        }
    });
    check("dev-minimal", {
        let names: Vec<String> = std::fs::read_dir("/dev")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let bad: Vec<&String> = names
            .iter()
            .filter(|n| {
                ![
                    "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
                    "stdin", "stdout", "stderr",
                ]
                .contains(&n.as_str())
            })
            .collect();
        let mut buf = [0u8; 8];
        let random_ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .is_ok();
        if bad.is_empty() && random_ok {
            Ok(())
        } else {
            Err(format!("unexpected {bad:?}, urandom readable {random_ok}"))
        }
    });
    check("pty-works", {
        // SAFETY: posix_openpt with flags.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        if fd >= 0 {
            // SAFETY: fd was just opened.
            unsafe { libc::close(fd) };
            Ok(())
        } else {
            Err(format!("posix_openpt errno {}", errno()))
        }
    });
    check("bind-port-80", {
        TcpListener::bind("0.0.0.0:80")
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    check("loopback-works", {
        match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => {
                let addr = l.local_addr().unwrap();
                TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    });
    out.join("\n")
}

fn forkbomb(secs: u64) -> String {
    // SAFETY: fork in this single-threaded process (requests are served one
    // at a time); the children only fork, sleep and exit.
    let leader = unsafe { libc::fork() };
    if leader == 0 {
        // SAFETY: setpgid(0, 0) on ourselves.
        unsafe { libc::setpgid(0, 0) };
        let start = Instant::now();
        let mut forks = 0u64;
        let mut eagain = false;
        while start.elapsed() < Duration::from_secs(secs) {
            // SAFETY: as above.
            let p = unsafe { libc::fork() };
            if p == 0 {
                // SAFETY: pause until killed.
                unsafe {
                    libc::pause();
                    libc::_exit(0)
                };
            } else if p > 0 {
                forks += 1;
            } else if errno() == libc::EAGAIN {
                eagain = true;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let msg = format!("forks={forks} eagain={eagain}");
        let _ = std::fs::write("/tmp/forkbomb.out", msg);
        // SAFETY: kill our own process group, ourselves included.
        unsafe {
            libc::kill(0, libc::SIGKILL);
            libc::_exit(0)
        };
    }
    let mut status = 0;
    // SAFETY: valid out pointer.
    unsafe { libc::waitpid(leader, &mut status, 0) };
    std::thread::sleep(Duration::from_millis(200));
    reap();
    std::fs::read_to_string("/tmp/forkbomb.out").unwrap_or_else(|_| "no result".into())
}

fn memhog_child(mib: usize) -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut v = vec![0u8; 1 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        chunks.push(v);
    }
    std::process::exit(0)
}

fn fill(path: &str, mib: u64) -> String {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return format!("written=0 errno={}", e.raw_os_error().unwrap_or(0)),
    };
    let buf = vec![7u8; 1 << 20];
    let mut written = 0u64;
    for _ in 0..mib {
        match f.write(&buf) {
            Ok(n) => {
                written += n as u64;
                if n < buf.len() {
                    // A short write: the next one reports why.
                    continue;
                }
            }
            Err(e) => return format!("written={written} errno={}", e.raw_os_error().unwrap_or(0)),
        }
    }
    match f.sync_all() {
        Ok(()) => format!("written={written} errno=0"),
        Err(e) => format!("written={written} errno={}", e.raw_os_error().unwrap_or(0)),
    }
}

fn spin(secs: u64) -> String {
    let usage = || {
        let mut ru: libc::rusage = unsafe_zeroed();
        // SAFETY: valid out pointer.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        (ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000) as u64
            + (ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000) as u64
    };
    let before = usage();
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    format!(
        "cpu_ms={} wall_ms={}",
        usage() - before,
        start.elapsed().as_millis()
    )
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (rusage) for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}
