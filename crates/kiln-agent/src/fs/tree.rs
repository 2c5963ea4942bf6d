//! Walks over directory trees that a request names: listing, collecting
//! the directories of a recursive watch, creating parents, removing a tree.
//! All of them loop over an explicit stack, never recurse, so a tree of any
//! depth (the agent is the sandbox's init: a stack overflow would end the
//! sandbox) costs heap, bounded by the limits here, not stack.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Deepest level a ListDir may ask for: no path of at most 4096 bytes
/// (what the agent takes) reaches deeper.
pub const MAX_LIST_DEPTH: u32 = 2048;
/// Most entries one ListDir answers with.
pub const MAX_LIST_ENTRIES: usize = 200_000;
/// Most directories one recursive watch covers.
pub const MAX_WATCH_DIRS: usize = 16_384;

/// A tree walk that went past a limit.
#[derive(Debug)]
pub struct TooMany;

/// The entries under `root` down to `depth` levels (1: its children), in
/// sorted order level by level within each directory (depth first, like a
/// recursive walk would give), not following symlinks. Directories that
/// cannot be read are skipped. More than `max` entries is an error.
pub fn list(root: &Path, depth: u32, max: usize) -> Result<Vec<(PathBuf, u32)>, TooMany> {
    let mut out = Vec::new();
    // Each frame: a directory's children still to visit, reversed (pop
    // takes the next), and their level.
    let mut stack: Vec<(Vec<PathBuf>, u32)> = vec![(sorted_children(root), 1)];
    while let Some((children, level)) = stack.last_mut() {
        let level = *level;
        let Some(child) = children.pop() else {
            stack.pop();
            continue;
        };
        if out.len() >= max {
            return Err(TooMany);
        }
        let descend = level < depth
            && std::fs::symlink_metadata(&child)
                .map(|m| m.is_dir())
                .unwrap_or(false);
        if descend {
            stack.push((sorted_children(&child), level + 1));
        }
        out.push((child, level));
    }
    Ok(out)
}

fn sorted_children(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v.reverse();
    v
}

/// Every directory under `root` (not `root` itself, not through symlinks),
/// parents before children. More than `max` is an error.
pub fn subdirs(root: &Path, max: usize) -> Result<Vec<PathBuf>, TooMany> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if out.len() >= max {
                    return Err(TooMany);
                }
                let p = e.path();
                out.push(p.clone());
                todo.push(p);
            }
        }
    }
    Ok(out)
}

/// `mkdir -p`: creates `path` and its missing parents, without recursion.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", p.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                match p.parent() {
                    Some(parent) => p = parent,
                    None => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `rm -rf`: removes `path` (a file, a symlink, not followed, or a tree of
/// any depth). A path that does not exist is removed already. Holds one
/// directory open at a time and climbs back through `..`, checking that each
/// parent is still the directory it came from (so a tree moved during the
/// removal stops it instead of sending it elsewhere).
pub fn remove_all(path: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !m.is_dir() {
        return ignore_missing(std::fs::remove_file(path));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove /",
        ));
    };
    let pfd = open_dir(rustix::fs::CWD, parent, false)?;
    empty_tree(&pfd, name)?;
    ignore_missing(rustix::fs::unlinkat(&pfd, name, AtFlags::REMOVEDIR).map_err(io::Error::from))
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn open_dir<Fd: std::os::fd::AsFd>(at: Fd, name: &Path, nofollow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(rustix::fs::openat(at, name, flags, Mode::empty())?)
}

fn dev_ino(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Removes everything inside the directory `name` of `top`.
fn empty_tree(top: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let mut cur = match open_dir(top, Path::new(name), true) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // The (dev, inode) of each directory entered, and the name of each
    // one below the first in its parent.
    let mut ids = vec![dev_ino(&cur)?];
    let mut names: Vec<OsString> = Vec::new();
    loop {
        let mut sub = None;
        for entry in rustix::fs::Dir::read_from(&cur)? {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            let n = OsStr::from_bytes(n).to_os_string();
            let is_dir = match entry.file_type() {
                rustix::fs::FileType::Directory => true,
                rustix::fs::FileType::Unknown => {
                    rustix::fs::statat(&cur, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| {
                            rustix::fs::FileType::from_raw_mode(st.st_mode)
                                == rustix::fs::FileType::Directory
                        })
                        .unwrap_or(false)
                }
                _ => false,
            };
            if is_dir {
                sub = Some(n);
                break;
            }
            ignore_missing(
                rustix::fs::unlinkat(&cur, n.as_os_str(), AtFlags::empty())
                    .map_err(io::Error::from),
            )?;
        }
        if let Some(n) = sub {
            match open_dir(&cur, Path::new(&n), true) {
                Ok(child) => {
                    ids.push(dev_ino(&child)?);
                    names.push(n);
                    cur = child;
                }
                // Gone since the listing: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // `cur` is empty now: climb to its parent and remove it there.
        let Some(n) = names.pop() else {
            return Ok(());
        };
        let up = open_dir(&cur, Path::new(".."), true)?;
        ids.pop();
        if ids.last() != Some(&dev_ino(&up)?) {
            return Err(io::Error::other(
                "the tree was moved while it was being removed",
            ));
        }
        ignore_missing(
            rustix::fs::unlinkat(&up, n.as_os_str(), AtFlags::REMOVEDIR).map_err(io::Error::from),
        )?;
        cur = up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `depth` nested directories `d/d/d/...` under `base`,
    /// made with relative paths (deeper than PATH_MAX allows by name).
    fn deep_tree(base: &Path, depth: usize) {
        let mut fd = open_dir(rustix::fs::CWD, base, false).unwrap();
        for i in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            if i % 100 == 0 {
                std::fs::write(
                    format!("/proc/self/fd/{}/f", {
                        use std::os::fd::AsRawFd;
                        fd.as_raw_fd()
                    }),
                    b"x",
                )
                .unwrap();
            }
            fd = open_dir(&fd, Path::new("d"), true).unwrap();
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-tree-{name}-{}", std::process::id()));
        let _ = remove_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn removes_a_tree_deeper_than_the_stack_and_path_max() {
        let base = tmp("rm");
        deep_tree(&base, 5000);
        // On a small stack, as the agent's blocking threads have.
        let b = base.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_all(&b.join("d")).unwrap())
            .unwrap()
            .join()
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["f"]);
        remove_all(&base).unwrap();
        assert!(!base.exists());
        // Missing: already removed.
        remove_all(&base).unwrap();
    }

    #[test]
    fn lists_deep_trees_iteratively_and_in_order() {
        let base = tmp("ls");
        deep_tree(&base, 1500);
        let b = base.clone();
        let all = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || list(&b, 1600, MAX_LIST_ENTRIES).unwrap())
            .unwrap()
            .join()
            .unwrap();
        // 1500 directories, and a file at every 100th level (15 files).
        assert_eq!(all.len(), 1515);
        assert!(list(&base, 1600, 100).is_err());
        let two = list(&base, 2, 100).unwrap();
        let names: Vec<_> = two
            .iter()
            .map(|(p, l)| (p.strip_prefix(&base).unwrap().to_path_buf(), *l))
            .collect();
        assert_eq!(
            names,
            [
                (PathBuf::from("d"), 1),
                (PathBuf::from("d/d"), 2),
                (PathBuf::from("f"), 1)
            ]
        );
        assert!(subdirs(&base, 100).is_err());
        assert_eq!(subdirs(&base, 2000).unwrap().len(), 1500);
        remove_all(&base).unwrap();
    }

    #[test]
    fn creates_parents() {
        let base = tmp("mk");
        let deep: PathBuf = base.join("a/b/c/d");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        std::fs::write(base.join("file"), b"").unwrap();
        assert!(create_dir_all(&base.join("file/x")).is_err());
        remove_all(&base).unwrap();
    }
}
