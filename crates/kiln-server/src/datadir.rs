//! kilnd's data directory is private: the store (every key's hash, every
//! sandbox's access token), the sandboxes' disk images, snapshots and logs
//! are for kilnd's user (root) alone.
//!
//! At start [`secure`] refuses a data directory that another user could
//! change (not owned by kilnd's user, or group/world writable: whoever can
//! rename entries in it can swap the store or a disk image), then makes the
//! directory 0700 and everything below it 0700 (directories) or 0600
//! (files), as an older Kiln may have left them 0755/0644. Template root
//! filesystems keep their modes (they are what sandboxes see); only the
//! `templates/` directory above them is closed. [`private_umask`] makes
//! every file kilnd creates afterwards private as well.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "the data directory {path} is owned by uid {owner}, not by kilnd's user (uid {me}): \
         another user could replace the store or a sandbox's disk; chown it to uid {me}"
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "the data directory {path} is group or world writable (mode {mode:04o}): another user \
         could replace the store or a sandbox's disk; `chmod 700 {path}` it"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("the data directory {path} is not a directory")]
    NotDir { path: PathBuf },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Sets the process umask to 077: files and directories kilnd creates from
/// now on are its own. Children that make what sandboxes see (the spawn
/// helper, template builds) set their own umask.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Checks and tightens `data` (creating it 0700 if missing) and the
/// `templates/` directory of `template_dir`.
pub fn secure(data: &Path, template_dir: &Path) -> Result<(), DataDirError> {
    if !data.exists() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data)
            .map_err(io("create", data))?;
    }
    let meta = std::fs::metadata(data).map_err(io("inspect", data))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotDir {
            path: data.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(DataDirError::Owner {
            path: data.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable {
            path: data.to_path_buf(),
            mode,
        });
    }
    tighten(data, 0o700)?;
    let templates = data.join("templates");
    walk(data, meta.dev(), &templates)?;
    let shared = template_dir.join("templates");
    if shared != templates {
        if let Ok(m) = std::fs::metadata(&shared) {
            // A template cache shared with others (another data dir's) is
            // closed only when it is ours.
            if m.is_dir() && m.uid() == me {
                tighten(&shared, 0o700)?;
            }
        }
    }
    Ok(())
}

/// Makes `path` exactly `mode` if it is anything else.
fn tighten(path: &Path, mode: u32) -> Result<(), DataDirError> {
    let m = std::fs::symlink_metadata(path).map_err(io("inspect", path))?;
    if m.file_type().is_symlink() || m.mode() & 0o7777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Everything below `dir` on its file system: directories 0700, files 0600;
/// `templates` itself 0700 but not what is in it. Entries that vanish
/// meanwhile are skipped.
fn walk(dir: &Path, dev: u64, templates: &Path) -> Result<(), DataDirError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_symlink() || m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            tighten(&path, 0o700)?;
            if path != templates {
                walk(&path, dev, templates)?;
            }
        } else if m.is_file() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn tightens_an_old_data_dir_but_not_template_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("container/sandboxes/a")).unwrap();
        std::fs::create_dir_all(data.join("templates/base-1/rootfs/etc")).unwrap();
        std::fs::write(data.join("kiln.db"), "x").unwrap();
        std::fs::write(data.join("container/sandboxes/a/disk.img"), "x").unwrap();
        std::fs::write(data.join("templates/base-1/rootfs/etc/passwd"), "x").unwrap();
        for p in [
            data.clone(),
            data.join("container"),
            data.join("templates/base-1/rootfs/etc"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in [
            data.join("kiln.db"),
            data.join("container/sandboxes/a/disk.img"),
            data.join("templates/base-1/rootfs/etc/passwd"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        secure(&data, &data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("container")), 0o700);
        assert_eq!(mode(&data.join("kiln.db")), 0o600);
        assert_eq!(mode(&data.join("container/sandboxes/a/disk.img")), 0o600);
        assert_eq!(mode(&data.join("templates")), 0o700);
        assert_eq!(mode(&data.join("templates/base-1/rootfs/etc")), 0o755);
        assert_eq!(
            mode(&data.join("templates/base-1/rootfs/etc/passwd")),
            0o644
        );
    }

    #[test]
    fn refuses_a_writable_data_dir_and_creates_a_missing_one_private() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("open");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure(&data, &data).unwrap_err();
        assert!(e.to_string().contains("world writable"), "{e}");
        assert!(matches!(e, DataDirError::Writable { mode: 0o777, .. }));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(secure(&data, &data).is_err());

        let fresh = tmp.path().join("new/data");
        secure(&fresh, &fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
