//! The files bound into every sandbox (the agent, a template's helpers),
//! copied onto a small tmpfs of the runtime's own (source name `kiln`), so
//! that their mounts inside show that neutral source and a bare file name
//! as their root, not the host's block device and path. A sandbox's bind
//! keeps the copy alive after the tmpfs is unmounted, so it is replaced
//! freely at start and unmounted at shutdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::HostError;

/// Mounts a fresh tmpfs at `dir` (detaching whatever was mounted there) and
/// copies `files` onto it, each under its own file name (made unique).
/// Returns where each host file's copy is.
pub fn mount_copies(
    dir: &Path,
    files: &[PathBuf],
) -> Result<BTreeMap<PathBuf, PathBuf>, HostError> {
    unmount(dir);
    std::fs::create_dir_all(dir).map_err(HostError::io("create", dir))?;
    let mut size = 0u64;
    for f in files {
        size += std::fs::metadata(f)
            .map_err(HostError::io("stat", f))?
            .len();
    }
    // Page rounding per file, and room for the directory.
    let size = size + 64 * 1024 * (files.len() as u64 + 1);
    mount(
        Some("kiln"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode=0755,size={size}").as_str()),
    )
    .map_err(|e| HostError::io("mount a tmpfs on", dir)(e.into()))?;
    let copied = (|| {
        let mut out = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            if out.contains_key(f) {
                continue;
            }
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut to = dir.join(&name);
            if name.is_empty() || to.exists() {
                to = dir.join(format!("{i}-{name}"));
            }
            std::fs::copy(f, &to).map_err(HostError::io("copy", f))?;
            out.insert(f.clone(), to);
        }
        Ok(out)
    })();
    if copied.is_err() {
        unmount(dir);
    }
    copied
}

/// Detaches every tmpfs mounted at `dir` (none is fine) and removes it.
pub fn unmount(dir: &Path) {
    while umount2(dir, MntFlags::MNT_DETACH).is_ok() {}
    let _ = std::fs::remove_dir(dir);
}
