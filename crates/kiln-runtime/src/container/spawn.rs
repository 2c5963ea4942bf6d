//! The body of `kiln-spawn`, the small single-threaded helper that turns a
//! prepared sandbox (cgroups, network namespace, overlay layers) into a
//! running one. The runtime never forks itself (it is a multi-threaded tokio
//! process); it runs this helper with the [`SpawnConfig`] as JSON on stdin and
//! the agent's ready pipe as fd 3.
//!
//! The helper is started ahead of time, in a pool ("warm" helpers): it gets
//! a [`Prelude`] (one JSON line on stdin) at once and the [`SpawnConfig`]
//! (a second line) when a sandbox is created. What it does before the
//! second line is what a create should not wait for: above all joining
//! cgroups, which on cgroup v1 waits for an RCU grace period (~10 ms here).
//!
//! The helper (H), as root on the host:
//! 1. on the prelude, joins the sandbox's cgroups and network namespace,
//!    unshares a pid namespace, compiles the seccomp policy and forks the
//!    init (C), which makes its mount, uts, ipc and cgroup namespaces and
//!    mounts the prelude's disk image; then H says `warm` on stdout and
//!    waits for the config, which it passes on to C;
//! 2. writes C's uid/gid maps once C has made its user namespace;
//! 3. prints `{"pid": <C's host pid>}` once C has exec'd the agent, and exits.
//!
//! C, pid 1 of the new pid namespace, still real root, once it has the
//! config: the disk (if the prelude's was not the right size); a staging
//! tmpfs with the layers bound in under neutral names (idmapped from the
//! range they are stored with to the sandbox's own) and the sandbox's own
//! boot id; the overlay root (nodev, mounted with relative layer paths, so
//! the mount table names no host path); /proc with the sensitive paths
//! masked or read-only and its boot id bound over; a minimal /dev; /sys
//! read-only; a private /tmp; the agent (a copy on kilnd's `kiln` tmpfs)
//! bind-mounted read-only; pivot_root; a session of its own. Only then it
//! takes a host uid of its own as the namespace's owner (see
//! [`OWNER_UID_BASE`]) and enters a new user namespace (root inside ↦
//! `uid_base` outside, the sandbox's range), so the
//! mount, network and uts namespaces stay owned by the host's user namespace
//! and root inside can change none of them. Then seccomp, capabilities cut
//! to Docker's default set, and exec of the agent.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{
    chdir, execve, fork, pipe2, pivot_root, setgroups, sethostname, setresgid, setresuid,
    ForkResult, Gid, Pid, Uid,
};
use serde::{Deserialize, Serialize};

/// What the helper does before it knows the sandbox (first line on stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prelude {
    pub netns: PathBuf,
    pub cgroup_procs: Vec<PathBuf>,
    pub seccomp: bool,
    /// A disk image to mount ahead of time at `layers` (the likeliest
    /// size); the config says whether the sandbox uses it.
    pub disk_image: Option<PathBuf>,
    pub layers: PathBuf,
}

/// The sandbox (second line on stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnConfig {
    pub id: String,
    /// Template rootfs (overlay lower layer, read-only).
    pub lower: PathBuf,
    /// The sandbox's ext4 image (holds `upper/` and `work/`), and the
    /// directory it is mounted on inside the sandbox's mount namespace.
    pub disk_image: PathBuf,
    pub layers: PathBuf,
    /// The prelude's image is the sandbox's and is mounted at `layers`
    /// already (its directory was renamed since: `layers` is the new path).
    pub premounted: bool,
    /// Empty directory the overlay is mounted on (in the sandbox's private
    /// mount namespace only).
    pub rootfs: PathBuf,
    /// Read-only layers stacked between the upper and the template, top
    /// first: (ext4 image of a snapshot's upper, empty mount point). A
    /// sandbox started from a snapshot has them.
    #[serde(default)]
    pub ro_layers: Vec<(PathBuf, PathBuf)>,
    /// The sandbox's host uid range: root inside is `uid_base` outside.
    pub uid_base: u32,
    pub uid_count: u32,
    /// The range the layers are stored with on disk (the template's owner).
    /// Where it is not `uid_base`, the layers are mounted idmapped from it
    /// to the sandbox's range.
    pub store_uid: u32,
    /// Agent binary on the host, and where it appears inside.
    pub agent_bin: PathBuf,
    pub agent_path: String,
    /// More host files bind-mounted read-only: (host path, path inside).
    #[serde(default)]
    pub binds: Vec<(PathBuf, String)>,
    pub args: Vec<String>,
    pub tmp_size_bytes: u64,
    /// Host file for the agent's stdout/stderr (debugging); /dev/null if unset.
    pub log: Option<PathBuf>,
}

/// The fd the ready pipe arrives on, and the agent's `KILN_READY_FD`.
pub const READY_FD: RawFd = 3;

/// Docker's default capability set (numbers from linux/capability.h).
const DEFAULT_CAPS: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The argument that makes `kiln-spawn` only check that a directory's
/// filesystem takes idmapped mounts (exit 0), or say why not (exit 1).
pub const PROBE_IDMAP: &str = "--probe-idmap";

/// Entry point of the `kiln-spawn` binary. Returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == PROBE_IDMAP {
        return match probe_idmap(Path::new(&args[2])) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    // Whatever the runtime inherited without close-on-exec (its own parent
    // may have left it any descriptor) must not reach the sandbox: keep
    // stdio and the ready pipe only. Nothing else is open yet.
    if let Err(e) = close_from(READY_FD + 1, false) {
        eprintln!("kiln-spawn: cannot close inherited descriptors: {e}");
        return 1;
    }
    // kilnd runs with umask 077 (its files are private); what this helper
    // makes (the upper layer's directories, /dev, /etc/hosts) and the
    // agent's processes get the usual 022.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let prelude: Prelude = match stdin
        .read_line(&mut line)
        .map(|_| serde_json::from_str(&line))
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            eprintln!("kiln-spawn: bad prelude: {e}");
            return 2;
        }
        Err(e) => {
            eprintln!("kiln-spawn: cannot read the prelude: {e}");
            return 2;
        }
    };
    let filters = match prepare(&prelude) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match helper(&prelude, &filters, &mut stdin) {
        Ok(pid) => {
            println!("{{\"pid\": {pid}}}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Phase one: cgroups, network namespace, pid namespace, seccomp compile.
fn prepare(cfg: &Prelude) -> Result<Vec<seccompiler::BpfProgram>, String> {
    let me = std::process::id().to_string();
    for f in &cfg.cgroup_procs {
        ctx(
            std::fs::write(f, &me),
            &format!("join cgroup {}", f.display()),
        )?;
    }
    let ns = ctx(File::open(&cfg.netns), "open the network namespace")?;
    ctx(
        setns(&ns, CloneFlags::CLONE_NEWNET),
        "join the network namespace",
    )?;
    drop(ns);
    // The namespace belongs to the host's user namespace, so root inside
    // has no network capabilities in it: let everyone bind low ports and
    // open ICMP echo sockets (ping), as in a VM.
    for (knob, value) in [
        ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
        ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
    ] {
        ctx(std::fs::write(knob, value), &format!("set {knob}"))?;
    }
    ctx(
        unshare(CloneFlags::CLONE_NEWPID),
        "unshare the pid namespace",
    )?;
    if cfg.seccomp {
        crate::host::seccomp::compile()
    } else {
        Ok(Vec::new())
    }
}

/// Phase two: fork the init (which prepares what it can), wait for the
/// config and pass it on, map the init's ids, wait for its exec.
fn helper(
    prelude: &Prelude,
    filters: &[seccompiler::BpfProgram],
    stdin: &mut impl BufRead,
) -> Result<i32, String> {
    let (cfg_r, cfg_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (warm_r, warm_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (to_parent_r, to_parent_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (to_child_r, to_child_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (err_r, err_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;

    // SAFETY: this helper is single-threaded (a plain main, no runtime, no
    // threads), so the child may run arbitrary code after fork.
    match ctx(unsafe { fork() }, "fork")? {
        ForkResult::Child => {
            drop((to_parent_r, to_child_w, err_r, cfg_w, warm_r));
            let e = init(prelude, warm_w, cfg_r, filters, to_parent_w, to_child_r).unwrap_err();
            let mut w = File::from(err_w);
            let _ = w.write_all(e.as_bytes());
            // SAFETY: _exit is always safe; it skips the parent's atexit
            // handlers and buffers, which belong to the helper.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop((to_parent_w, to_child_r, err_w, cfg_r, warm_w));
            let r = match warm(warm_r).and_then(|()| pass_config(stdin, cfg_w)) {
                Ok(cfg) => parent(&cfg, child, to_parent_r, to_child_w, err_r),
                Err(e) => {
                    // The init may have failed first and said why.
                    let mut msg = String::new();
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = File::from(err_r).read_to_string(&mut msg);
                    Err(if msg.is_empty() {
                        e
                    } else {
                        format!("sandbox init failed: {msg}")
                    })
                }
            };
            if r.is_err() {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
            }
            r
        }
    }
}

/// Waits for the init to be as ready as it can be without the config, then
/// says `warm` on stdout (the runtime pools the helper only then).
fn warm(from_init: OwnedFd) -> Result<(), String> {
    let mut b = [0u8; 1];
    if ctx(File::from(from_init).read(&mut b), "wait for the init")? != 1 {
        return Err("the init died while getting ready".into());
    }
    let mut out = std::io::stdout().lock();
    ctx(
        out.write_all(b"warm\n").and_then(|()| out.flush()),
        "say warm",
    )
}

/// Reads the config from stdin and hands it to the init. If stdin ends
/// first (the pool was drained), the helper is not needed: exit quietly.
fn pass_config(stdin: &mut impl BufRead, to_init: OwnedFd) -> Result<SpawnConfig, String> {
    let mut line = String::new();
    if ctx(stdin.read_line(&mut line), "read the config")? == 0 {
        std::process::exit(0);
    }
    let cfg: SpawnConfig = ctx(serde_json::from_str(&line), "bad config")?;
    ctx(
        File::from(to_init).write_all(line.as_bytes()),
        "pass the config on",
    )?;
    Ok(cfg)
}

fn parent(
    cfg: &SpawnConfig,
    child: Pid,
    from_child: OwnedFd,
    to_child: OwnedFd,
    err: OwnedFd,
) -> Result<i32, String> {
    let mut byte = [0u8; 1];
    let mut from_child = File::from(from_child);
    let n = from_child.read(&mut byte).unwrap_or(0);
    if n == 1 {
        let map = format!("0 {} {}\n", cfg.uid_base, cfg.uid_count);
        let proc = PathBuf::from(format!("/proc/{child}"));
        ctx(std::fs::write(proc.join("uid_map"), &map), "write uid_map")?;
        ctx(std::fs::write(proc.join("gid_map"), &map), "write gid_map")?;
        ctx(File::from(to_child).write_all(b"1"), "wake the init")?;
    } else {
        drop(to_child);
    }
    let mut msg = String::new();
    let _ = File::from(err).read_to_string(&mut msg);
    if !msg.is_empty() {
        return Err(format!("sandbox init failed: {msg}"));
    }
    if n != 1 {
        return Err("sandbox init died before making its user namespace".into());
    }
    if let Ok(nix::sys::wait::WaitStatus::Exited(_, code)) =
        nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
    {
        return Err(format!("sandbox init exited at once with {code}"));
    }
    Ok(child.as_raw())
}

fn mount_layers(image: &Path, at: &Path) -> Result<(), String> {
    let (loopdev, loopfd) = crate::host::disk::attach_loop(image, false)?;
    do_mount(
        Some(loopdev.to_str().unwrap_or_default()),
        at,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(crate::host::disk::MOUNT_OPTIONS),
    )?;
    drop(loopfd);
    Ok(())
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn do_mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| format!("mount {:?} on {}: {e}", fstype.or(src), target.display()))
}

fn mkdirs(p: &Path) -> Result<(), String> {
    ctx(
        std::fs::create_dir_all(p),
        &format!("mkdir {}", p.display()),
    )
}

/// The sandbox's init up to exec. Returns only on error.
fn init(
    prelude: &Prelude,
    warm: OwnedFd,
    config: OwnedFd,
    filters: &[seccompiler::BpfProgram],
    to_parent: OwnedFd,
    from_parent: OwnedFd,
) -> Result<std::convert::Infallible, String> {
    let nosdx = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Our pid on the host, read while /proc is still the host's: it names
    // the host uid that will own the sandbox's user namespace.
    let ns_owner = owner_uid(ctx(std::fs::read_link("/proc/self"), "read our host pid")?)?;
    ctx(
        unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWCGROUP,
        ),
        "unshare namespaces",
    )?;
    make_mounts_private()?;
    // The writable layers: the sandbox's own size-limited filesystem,
    // mounted in this mount namespace only (see disk.rs). Done before the
    // config comes if the prelude has an image.
    if let Some(image) = &prelude.disk_image {
        mount_layers(image, &prelude.layers)?;
    }
    ctx(File::from(warm).write_all(b"w"), "report warm")?;
    let mut line = String::new();
    ctx(
        File::from(config).read_to_string(&mut line),
        "read the config",
    )?;
    if line.is_empty() {
        return Err("no config came".into());
    }
    let cfg: SpawnConfig = ctx(serde_json::from_str(&line), "bad config")?;
    let cfg = &cfg;
    if !cfg.premounted {
        if prelude.disk_image.is_some() {
            ctx(
                umount2(&cfg.layers, MntFlags::MNT_DETACH),
                "unmount the unused disk",
            )?;
        }
        mount_layers(&cfg.disk_image, &cfg.layers)?;
    }
    ctx(sethostname(&cfg.id), "set the hostname")?;

    // A staging tmpfs on the (empty) rootfs directory, private to this
    // mount namespace: the layers are bound into it under neutral names and
    // the overlay is mounted with paths relative to it, so that the
    // sandbox's mount table names no host path (overlayfs shows its options
    // as given). It also holds the sandbox's own boot id. It is detached
    // with the old root at pivot_root.
    let stage = &cfg.rootfs;
    do_mount(
        Some("kiln"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )?;
    // Layers stored with another range than the sandbox's are seen through
    // idmapped mounts: uid `store_uid + n` on disk is `uid_base + n` here,
    // and what the sandbox writes is stored back in the store's range.
    let idmap = if cfg.store_uid != cfg.uid_base {
        Some(idmap_userns(cfg.store_uid, cfg.uid_base, cfg.uid_count)?)
    } else {
        None
    };
    let bind_at = |from: &Path, name: &str| -> Result<(), String> {
        let to = stage.join(name);
        mkdirs(&to)?;
        match &idmap {
            Some(userns) => bind_idmapped(from, &to, userns),
            None => do_mount(
                Some(from.to_str().unwrap_or_default()),
                &to,
                None,
                MsFlags::MS_BIND,
                None,
            ),
        }
    };
    // A snapshot's layers, read-only, between the upper and the template.
    let mut lowers = Vec::new();
    for (image, at) in &cfg.ro_layers {
        let (loopdev, loopfd) = crate::host::disk::attach_loop(image, true)?;
        do_mount(
            Some(loopdev.to_str().unwrap_or_default()),
            at,
            Some("ext4"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(crate::host::disk::RO_MOUNT_OPTIONS),
        )?;
        drop(loopfd);
        let name = format!("l{}", lowers.len());
        bind_at(&at.join("upper"), &name)?;
        lowers.push(name);
    }
    let name = format!("l{}", lowers.len());
    bind_at(&cfg.lower, &name)?;
    lowers.push(name);
    bind_at(&cfg.layers, "u")?;
    let boot_id = stage.join("boot_id");
    ctx(
        std::fs::write(&boot_id, new_boot_id()?),
        "write the boot id",
    )?;
    ctx(
        std::fs::set_permissions(&boot_id, std::fs::Permissions::from_mode(0o444)),
        "chmod the boot id",
    )?;

    let root = &stage.join("root");
    mkdirs(root)?;
    ctx(chdir(stage), "chdir to the staging directory")?;
    let opts = format!(
        "lowerdir={},upperdir=u/upper,workdir=u/work",
        lowers.join(":")
    );
    // nodev: a device node in a template (or one built from a hostile
    // image) opens nothing; the sandbox's devices are its own /dev's.
    do_mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&opts),
    )?;
    let owner = format!("uid={0},gid={0}", cfg.uid_base);

    // /proc
    let proc = root.join("proc");
    mkdirs(&proc)?;
    do_mount(Some("proc"), &proc, Some("proc"), nosdx, None)?;
    for m in crate::host::masks::MASKED {
        let p = root.join(m);
        if p.is_dir() {
            do_mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | nosdx,
                Some("size=0"),
            )?;
        } else if p.exists() {
            do_mount(Some("/dev/null"), &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    for r in crate::host::masks::READ_ONLY {
        let p = root.join(r);
        if p.exists() {
            do_mount(
                Some(p.to_str().unwrap_or_default()),
                &p,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            do_mount(
                None,
                &p,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosdx,
                None,
            )?;
        }
    }

    // The sandbox's own boot id (read-only), new at each cold start.
    let p = root.join("proc/sys/kernel/random/boot_id");
    do_mount(
        Some(boot_id.to_str().unwrap_or_default()),
        &p,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    do_mount(
        None,
        &p,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosdx,
        None,
    )?;

    // /dev
    let dev = root.join("dev");
    mkdirs(&dev)?;
    do_mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!("mode=755,size=64k,{owner}")),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        ctx(
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
            &format!("mknod {}", p.display()),
        )?;
        // mknod honours the umask; the mode must be exactly 0666.
        ctx(
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)),
            "chmod",
        )?;
    }
    let pts = dev.join("pts");
    mkdirs(&pts)?;
    do_mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={}",
            cfg.uid_base + 5
        )),
    )?;
    ctx(symlink("pts/ptmx", dev.join("ptmx")), "symlink /dev/ptmx")?;
    let shm = dev.join("shm");
    mkdirs(&shm)?;
    do_mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosdx,
        Some(&format!("mode=1777,size=64m,{owner}")),
    )?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(to, dev.join(link)), "symlink in /dev")?;
    }

    // /sys
    let sys = root.join("sys");
    mkdirs(&sys)?;
    do_mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        MsFlags::MS_RDONLY | nosdx,
        None,
    )?;
    let fw = sys.join("firmware");
    if fw.is_dir() {
        do_mount(
            Some("tmpfs"),
            &fw,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | nosdx,
            Some("size=0"),
        )?;
    }

    // /tmp
    let tmp = root.join("tmp");
    mkdirs(&tmp)?;
    do_mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=1777,size={},{owner}", cfg.tmp_size_bytes)),
    )?;

    // The agent and the template's extra binaries, read-only.
    for (host, inside) in std::iter::once((&cfg.agent_bin, &cfg.agent_path))
        .chain(cfg.binds.iter().map(|(h, i)| (h, i)))
    {
        let target = root.join(inside.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            mkdirs(parent)?;
        }
        if !target.exists() {
            ctx(
                File::create(&target),
                &format!("create the mount point {inside}"),
            )?;
        }
        do_mount(
            Some(host.to_str().unwrap_or_default()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        do_mount(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None,
        )?;
    }

    // Name resolution of the hostname (sudo asks for it). Appending copies
    // /etc/hosts up with its owner kept; a new one is given to root inside.
    let hosts = root.join("etc/hosts");
    if hosts.is_file() {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&hosts) {
            let _ = writeln!(f, "127.0.1.1\t{}", cfg.id);
        }
    } else if root.join("etc").is_dir() {
        let text = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n",
            cfg.id
        );
        if std::fs::write(&hosts, text).is_ok() {
            let _ = std::os::unix::fs::chown(&hosts, Some(cfg.uid_base), Some(cfg.uid_base));
        }
    }

    let log: OwnedFd = match &cfg.log {
        Some(p) => ctx(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p),
            "open the agent log",
        )?
        .into(),
        None => ctx(File::open("/dev/null"), "open /dev/null")?.into(),
    };
    let null: OwnedFd = ctx(File::open("/dev/null"), "open /dev/null")?.into();

    ctx(chdir(root), "chdir to the new root")?;
    ctx(pivot_root(".", "."), "pivot_root")?;
    ctx(umount2(".", MntFlags::MNT_DETACH), "detach the old root")?;
    ctx(chdir("/"), "chdir /")?;

    // While still host root: the agent gets more CPU weight than one task
    // of the workload (its children go back to nice 0), so it keeps
    // answering in a sandbox whose workload spins. Best effort: a host
    // without CAP_SYS_NICE runs the agent at nice 0. (The OOM side needs no
    // privilege: the agent starts its children with a raised
    // oom_score_adj.)
    // SAFETY: setpriority on the calling process; no memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) };

    // A session of its own: the agent must not share kilnd's session (and
    // through it kilnd's controlling terminal, open to TIOCSTI).
    ctx(nix::unistd::setsid(), "setsid")?;

    // Enter the user namespace; H writes the maps. It is made as the
    // sandbox's own owner uid, so that the kernel's per-user budgets that
    // user namespaces charge to their owner (inotify instances and watches,
    // queued signals, message queue bytes, processes, user namespaces) are
    // this sandbox's own, not host root's shared with every other sandbox.
    become_owner(ns_owner)?;
    ctx(
        unshare(CloneFlags::CLONE_NEWUSER),
        "unshare the user namespace",
    )?;
    let mut tp = File::from(to_parent);
    ctx(tp.write_all(b"1"), "signal the helper")?;
    drop(tp);
    let mut b = [0u8; 1];
    let n = ctx(File::from(from_parent).read(&mut b), "wait for the helper")?;
    if n != 1 {
        return Err("the helper gave up before writing the id maps".into());
    }
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    ctx(setresgid(root_gid, root_gid, root_gid), "setresgid")?;
    ctx(setgroups(&[root_gid]), "setgroups")?;
    ctx(setresuid(root_uid, root_uid, root_uid), "setresuid")?;

    // Seccomp while CAP_SYS_ADMIN (in this user namespace) is still held.
    for f in filters {
        ctx(
            crate::host::seccomp::install(f),
            "install the seccomp filter",
        )?;
    }
    drop_capabilities()?;

    ctx(nix::unistd::dup2_stdin(&null), "dup2 stdin")?;
    ctx(nix::unistd::dup2_stdout(&log), "dup2 stdout")?;
    ctx(nix::unistd::dup2_stderr(&log), "dup2 stderr")?;

    let path = cstr(&cfg.agent_path)?;
    let mut argv = vec![cstr(
        Path::new(&cfg.agent_path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("kiln-agent"),
    )?];
    for a in &cfg.args {
        argv.push(cstr(a)?);
    }
    // The sandbox's own environment reaches the agent in `/init`, not
    // here: an exec takes at most 128 KiB per string and 2 MiB in all, and
    // a create must not fail on that (the core checks the sizes that
    // every later process start in the sandbox needs).
    let env = [
        cstr("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")?,
        cstr(&format!("KILN_READY_FD={READY_FD}"))?,
    ];
    // The agent gets stdio and the ready pipe, nothing else: every other
    // descriptor closes at exec (marked, not closed, so that the error pipe
    // still reports a failed exec).
    ctx(close_from(READY_FD + 1, true), "close descriptors")?;
    let e = execve(&path, &argv, &env).unwrap_err();
    Err(format!("exec {}: {e}", cfg.agent_path))
}

/// A random (version 4) UUID as the kernel writes a boot id.
fn new_boot_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    ctx(
        File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)),
        "read /dev/urandom",
    )?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}\n",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// close_range(2) of every descriptor from `first` up, or with `on_exec`
/// only marks them close-on-exec.
fn close_from(first: RawFd, on_exec: bool) -> Result<(), std::io::Error> {
    let flags = if on_exec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range takes three integers and touches no memory; the
    // descriptors it closes are owned by nothing in this process (main
    // calls it before opening any).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            flags,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The agent's nice value (its children's is 0): about 3 times the CPU
/// weight of one task of the workload.
const AGENT_NICE: libc::c_int = -5;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// Stops mount events from propagating between this (new) mount
/// namespace and the host's, both ways.
fn make_mounts_private() -> Result<(), String> {
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
}

/// Makes an idmapped bind of `dir` in a mount namespace of its own (gone
/// with this process).
fn probe_idmap(dir: &Path) -> Result<(), String> {
    ctx(
        unshare(CloneFlags::CLONE_NEWNS),
        "unshare the mount namespace",
    )?;
    make_mounts_private()?;
    let userns = idmap_userns(
        crate::container::DEFAULT_UID_BASE,
        crate::host::uidrange::FIRST,
        crate::host::uidrange::SIZE,
    )?;
    bind_idmapped(dir, dir, &userns)
}

/// A user namespace to idmap mounts with: ids `store..store+count` of a
/// filesystem are seen as `base..base+count`, and host root stays root
/// (overlayfs works in its layers as the mounter). Made by a child that
/// unshares it and waits while the maps are written and the namespace is
/// opened; it is the child's pid on the host (it says it) that names it in
/// /proc, which is still the host's here.
fn idmap_userns(store: u32, base: u32, count: u32) -> Result<OwnedFd, String> {
    let (said_r, said_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    let (hold_r, hold_w) = ctx(pipe2(nix::fcntl::OFlag::O_CLOEXEC), "pipe")?;
    // SAFETY: this process is single-threaded; the child only makes
    // syscalls and exits.
    match ctx(unsafe { fork() }, "fork the idmap helper")? {
        ForkResult::Child => {
            drop(said_r);
            drop(hold_w);
            let mut said = File::from(said_w);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let me = std::fs::read_link("/proc/self").unwrap_or_default();
            let _ = said.write_all(if ok {
                me.as_os_str().as_encoded_bytes()
            } else {
                b""
            });
            drop(said);
            let mut b = [0u8; 1];
            let _ = File::from(hold_r).read(&mut b);
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(said_w);
            drop(hold_r);
            let mut pid = String::new();
            let _ = File::from(said_r).read_to_string(&mut pid);
            let r = (|| {
                if pid.is_empty() {
                    return Err("the idmap helper could not make a user namespace".to_owned());
                }
                let proc = PathBuf::from("/proc").join(&pid);
                let map = format!("0 0 1\n{store} {base} {count}\n");
                ctx(
                    std::fs::write(proc.join("uid_map"), &map),
                    "write an idmap uid_map",
                )?;
                ctx(
                    std::fs::write(proc.join("gid_map"), &map),
                    "write an idmap gid_map",
                )?;
                let ns = ctx(File::open(proc.join("ns/user")), "open the idmap namespace")?;
                Ok(OwnedFd::from(ns))
            })();
            drop(hold_w);
            let _ = nix::sys::wait::waitpid(child, None);
            r
        }
    }
}

/// Binds `from` at `to` idmapped through `userns` (a detached clone of the
/// mount, set idmapped, then attached).
fn bind_idmapped(from: &Path, to: &Path, userns: &OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let failed = |what: &str| {
        format!(
            "{what} {} for an idmapped bind (does its filesystem support idmapped mounts?): {}",
            from.display(),
            std::io::Error::last_os_error()
        )
    };
    let src = cstr(from.to_str().unwrap_or_default())?;
    let dst = cstr(to.to_str().unwrap_or_default())?;
    let empty = cstr("")?;
    // SAFETY: open_tree with a valid path; the new fd is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(failed("clone"));
    }
    // SAFETY: a successful open_tree returns a new fd.
    let tree = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `attr` (of the size passed) and the empty
    // path; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(failed("idmap"));
    }
    // SAFETY: move_mount with a valid fd and paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(failed("attach"));
    }
    Ok(())
}

/// The first host uid that owns sandbox user namespaces; the owner of one
/// is this plus the host pid of its init, unique among live sandboxes
/// without any bookkeeping (pids are at most 2^22). It lies above systemd's
/// container range (0x80000..0x6FFFFFFF) and below the ids tools treat as
/// negative.
pub const OWNER_UID_BASE: u32 = 0x7000_0000;

/// The owner uid of the sandbox whose init has host pid `pid` (the target
/// of `/proc/self`).
fn owner_uid(pid: PathBuf) -> Result<u32, String> {
    let pid: u32 = pid
        .to_str()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("/proc/self names no pid: {}", pid.display()))?;
    Ok(OWNER_UID_BASE + pid)
}

/// Takes `owner` as every uid and gid while keeping the capabilities (the
/// user namespace made next is then owned by `owner`; making it stays a
/// privileged act on hosts that restrict unprivileged user namespaces).
fn become_owner(owner: u32) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_KEEPCAPS) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(format!(
            "keep capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (uid, gid) = (Uid::from_raw(owner), Gid::from_raw(owner));
    ctx(setgroups(&[]), "drop supplementary groups")?;
    ctx(setresgid(gid, gid, gid), "take the owner gid")?;
    ctx(setresuid(uid, uid, uid), "take the owner uid")?;
    // The uid change cleared the effective set; raise it to the permitted
    // one again.
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes a v3 header and two data structs, both valid
    // for the call's duration.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    for d in &mut data {
        d.effective = d.permitted;
    }
    // SAFETY: as above, for capset.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Cuts the bounding set and the current sets to `DEFAULT_CAPS`.
fn drop_capabilities() -> Result<(), String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if !DEFAULT_CAPS.contains(&cap) {
            // SAFETY: prctl(PR_CAPBSET_DROP) takes plain integers.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                return Err(format!(
                    "drop capability {cap} from the bounding set: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    let mut mask = [0u32; 2];
    for cap in DEFAULT_CAPS {
        mask[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [0, 1].map(|i| CapData {
        effective: mask[i],
        permitted: mask[i],
        inheritable: 0,
    });
    // SAFETY: capset reads a v3 header and two data structs, both valid
    // for the call's duration.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: plain integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Ok(())
}
