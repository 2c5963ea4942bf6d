//! A sandbox's root filesystem as an overlay: the template (and any
//! snapshot layers) read-only below, the sandbox's own size-limited disk
//! (see [`super::disk`]) holding the writable `upper/` and `work/`.
//!
//! The container runtime mounts these inside the sandbox's own mount
//! namespace (its init does, in `kiln-spawn`); runtimes whose sandbox reads
//! its root through a host process (runsc's gofer) mount them in the host's
//! mount namespace with [`mount_disk`] and [`mount_overlay`], and take them
//! down with [`unmount`]. Both build the overlay's options here.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::HostError;

/// The overlay's mount options: `lowers` top first (snapshot layers'
/// `upper/` directories, then the template), the writable layer's
/// `upper/` and `work/` under `layers`.
pub fn options(lowers: &[PathBuf], layers: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
        layers.join("upper").display(),
        layers.join("work").display()
    )
}

fn mount_err(what: &'static str, at: &Path) -> impl FnOnce(nix::Error) -> HostError {
    let at = at.to_path_buf();
    move |e| HostError::Io {
        op: what,
        path: at,
        source: std::io::Error::from_raw_os_error(e as i32),
    }
}

/// Loop-mounts a disk image (ext4, from the disk pool) at `at`, in the
/// caller's mount namespace. The loop device detaches itself when the
/// filesystem is unmounted. Blocking.
pub fn mount_disk(image: &Path, at: &Path, read_only: bool) -> Result<(), HostError> {
    std::fs::create_dir_all(at).map_err(HostError::io("create", at))?;
    let (dev, fd) =
        super::disk::attach_loop(image, read_only).map_err(|stderr| HostError::Tool {
            tool: "loop device",
            path: image.to_path_buf(),
            stderr,
        })?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let opts = if read_only {
        flags |= MsFlags::MS_RDONLY;
        super::disk::RO_MOUNT_OPTIONS
    } else {
        super::disk::MOUNT_OPTIONS
    };
    let r = mount(Some(&dev), at, Some("ext4"), flags, Some(opts))
        .map_err(mount_err("mount a disk image on", at));
    drop(fd);
    r
}

/// Mounts the overlay of `lowers` (top first) and the writable layer in
/// `layers` at `at`. Blocking.
pub fn mount_overlay(lowers: &[PathBuf], layers: &Path, at: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(at).map_err(HostError::io("create", at))?;
    let opts = options(lowers, layers);
    mount(
        Some("overlay"),
        at,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(mount_err("mount an overlay on", at))
}

/// Whether something is mounted exactly at `at` (per /proc/self/mountinfo).
pub fn is_mounted(at: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = at.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or(""), 8)
            {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Unmounts whatever is mounted at `at` (every stacked mount), lazily so
/// a process still holding it cannot keep it busy; nothing mounted is not
/// an error. Blocking.
pub fn unmount(at: &Path) -> Result<(), HostError> {
    for _ in 0..8 {
        if !is_mounted(at) {
            return Ok(());
        }
        match umount2(at, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(mount_err("unmount", at)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_stack_lowers_top_first() {
        let o = options(
            &[PathBuf::from("/s/l1/upper"), PathBuf::from("/t/rootfs")],
            Path::new("/d/layers"),
        );
        assert_eq!(
            o,
            "lowerdir=/s/l1/upper:/t/rootfs,upperdir=/d/layers/upper,workdir=/d/layers/work"
        );
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
