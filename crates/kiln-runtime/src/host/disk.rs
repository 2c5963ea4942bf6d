//! Disk limits of the sandboxes' writable layers: one small ext4 filesystem
//! per sandbox, in a sparse image file, loop-mounted *inside the sandbox's
//! own mount namespace*.
//!
//! Why this way:
//! - A size-limited filesystem is the limit: a full disk is `ENOSPC`, exactly
//!   what programs expect, with no quota subsystem involved. (XFS or ext4
//!   project quotas would be cheaper still — one shared filesystem, a project
//!   id per sandbox — but need `CONFIG_QUOTA`/`CONFIG_XFS_QUOTA`, which not
//!   every kernel has: this machine's has neither. tmpfs would be instant
//!   but is RAM, not disk.)
//! - Making one is `mkfs.ext4` on a sparse file (about 10 ms, ~4 MiB written
//!   whatever the size: no journal, lazy inode tables, `-m 0`, the
//!   overlay's `upper` and `work` directories made by `mkfs -d`), done ahead
//!   of time in a pool per size, so a create only renames a ready image.
//! - The sandbox's init (a warm one, ahead of the create, for the size asked
//!   for last) attaches it to a free loop device with
//!   `LO_FLAGS_AUTOCLEAR` and mounts it in its private mount namespace. The
//!   host's mount table never sees it; when the sandbox's last process dies
//!   the namespace goes, the filesystem is unmounted and the loop device
//!   detaches itself. Kill then only deletes the image file.
//! - The image stays on disk while the sandbox lives, so a paused sandbox
//!   or one re-attached after a server crash keeps its files.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::HostError;

/// Pre-made images, per size in MiB.
#[derive(Debug)]
pub struct DiskPool {
    dir: PathBuf,
    uid_base: u32,
    per_size: usize,
    ready: Mutex<BTreeMap<u64, Vec<PathBuf>>>,
    counter: std::sync::atomic::AtomicU64,
    /// The size asked for last: warm helpers mount one of it ahead.
    likely: Mutex<Option<u64>>,
}

/// Sizes the pool keeps images of, at most.
const MAX_POOLED_SIZES: usize = 4;

impl DiskPool {
    /// Pool directory `dir` (emptied of a previous run's images).
    pub fn new(dir: PathBuf, uid_base: u32, per_size: usize) -> Result<Self, HostError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("skel/upper"))
            .and_then(|()| std::fs::create_dir_all(dir.join("skel/work")))
            .map_err(HostError::io("create", &dir))?;
        let upper = dir.join("skel/upper");
        std::os::unix::fs::chown(&upper, Some(uid_base), Some(uid_base))
            .map_err(HostError::io("chown", &upper))?;
        // mkfs copies these modes into every image: the upper layer's root
        // is the sandbox's `/` (kilnd's umask is 077).
        for d in ["skel", "skel/upper", "skel/work"] {
            let p = dir.join(d);
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(HostError::io("chmod", &p))?;
        }
        Ok(Self {
            dir,
            uid_base,
            per_size,
            ready: Mutex::new(BTreeMap::new()),
            counter: Default::default(),
            likely: Mutex::new(None),
        })
    }

    /// Moves a ready image of `size_mib` to `dest` (making one if the pool
    /// has none; that costs a mkfs). Blocking.
    pub fn take(&self, size_mib: u64, dest: &Path) -> Result<(), HostError> {
        let pooled = {
            let mut ready = self.ready.lock().unwrap();
            if !ready.contains_key(&size_mib) && ready.len() >= MAX_POOLED_SIZES {
                // Forget the size with the fewest images ready.
                if let Some((&k, _)) = ready.iter().min_by_key(|(_, v)| v.len()) {
                    for p in ready.remove(&k).unwrap_or_default() {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            ready.entry(size_mib).or_default().pop()
        };
        let src = match pooled {
            Some(p) => p,
            None => self.make(size_mib)?,
        };
        std::fs::rename(&src, dest).map_err(HostError::io("move a disk image to", dest))
    }

    /// Tops every size up to `per_size` images. Blocking.
    pub fn refill(&self) -> Result<(), HostError> {
        loop {
            let need = {
                let ready = self.ready.lock().unwrap();
                ready
                    .iter()
                    .find(|(_, v)| v.len() < self.per_size)
                    .map(|(k, _)| *k)
            };
            let Some(size) = need else { return Ok(()) };
            let img = self.make(size)?;
            let mut ready = self.ready.lock().unwrap();
            match ready.get_mut(&size) {
                Some(v) => v.push(img),
                None => {
                    let _ = std::fs::remove_file(img);
                }
            }
        }
    }

    /// The size a sandbox most likely asks for next (the last one asked).
    pub fn likely_size(&self) -> Option<u64> {
        *self.likely.lock().unwrap()
    }

    /// Also pool images of this size from now on.
    pub fn want(&self, size_mib: u64) {
        *self.likely.lock().unwrap() = Some(size_mib);
        let mut ready = self.ready.lock().unwrap();
        if ready.len() < MAX_POOLED_SIZES {
            ready.entry(size_mib).or_default();
        }
    }

    fn make(&self, size_mib: u64) -> Result<PathBuf, HostError> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let img = self.dir.join(format!("{size_mib}-{n}.img"));
        let f = std::fs::File::create(&img).map_err(HostError::io("create", &img))?;
        f.set_len(size_mib << 20)
            .map_err(HostError::io("set the size of", &img))?;
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
            .arg("-E")
            .arg(format!("root_owner={0}:{0}", self.uid_base))
            .arg("-d")
            .arg(self.dir.join("skel"))
            .arg(&img)
            .output()
            .map_err(HostError::io("run mkfs.ext4 (install e2fsprogs) on", &img))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&img);
            return Err(HostError::Tool {
                tool: "mkfs.ext4",
                path: img,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(img)
    }

    /// Deletes every pooled image.
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.ready.lock().unwrap());
        for p in all.into_values().flatten() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Mount options of a sandbox's layers filesystem.
pub const MOUNT_OPTIONS: &str = "noinit_itable";
/// Mount options of a snapshot's read-only layer (copied from a mounted
/// filesystem, so not marked clean: nothing to replay, nothing to write).
pub const RO_MOUNT_OPTIONS: &str = "noload";

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_READ_ONLY: u32 = 1;

/// Attaches `image` to a free loop device that detaches itself once its
/// last user (the mount) is gone, read-only if asked. Returns the device's
/// path and an open fd (keep it until mounted). Called by the sandbox's
/// init (single-threaded).
pub fn attach_loop(image: &Path, read_only: bool) -> Result<(PathBuf, OwnedFd), String> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .map_err(|e| format!("open {}: {e}", image.display()))?;
    let ctl = std::fs::File::open("/dev/loop-control")
        .map_err(|e| format!("open /dev/loop-control: {e}"))?;
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(format!(
                "no free loop device: {}",
                std::io::Error::last_os_error()
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
        {
            Ok(d) => d,
            // The node may appear a moment after the device.
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which
        // `LoopConfig` mirrors (repr(C)); both fds are open.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if rc == 0 {
            return Ok((path, dev.into()));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("configure {}: {e}", path.display()));
        }
        // Another sandbox took this device first: ask again.
    }
    Err("no free loop device after 64 tries".into())
}

/// Bytes used and total of the filesystem holding `path`.
pub fn usage(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let f = s.fragment_size();
            ((s.blocks() - s.blocks_free()) * f, s.blocks() * f)
        }
        Err(_) => (0, 0),
    }
}

/// Whether a loop device is still backed by `image` (a sandbox's disk is
/// unmounted and its loop device detached a moment after its last
/// process is gone).
pub fn loop_backs(image: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(image) else {
        return false;
    };
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    rd.flatten().any(|e| {
        let name = e.file_name();
        name.to_string_lossy().starts_with("loop")
            && std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim()) == canon)
    })
}
