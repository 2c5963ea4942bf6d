//! Durable file operations: writes that a crash leaves either old or new,
//! never half, and copies of sparse disk images that cost what the image
//! holds, not its size.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::Digest;

use super::HostError;

/// fsyncs a directory, so that the entries made or renamed in it last.
pub fn fsync_dir(dir: &Path) -> Result<(), HostError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(HostError::io("fsync", dir))
}

/// fsyncs a file's data and metadata.
pub fn fsync_file(path: &Path) -> Result<(), HostError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(HostError::io("fsync", path))
}

/// Writes `bytes` to `path` so that a crash at any instant leaves either the
/// old file or the whole new one: a temporary file beside it, fsynced,
/// renamed over it, and the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(HostError::io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(HostError::io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(HostError::io("rename into place", path))?;
    fsync_dir(dir)
}

/// Renames `from` to `to` (a directory or a file) and fsyncs both parents.
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), HostError> {
    std::fs::rename(from, to).map_err(HostError::io("rename to", to))?;
    if let Some(p) = to.parent() {
        fsync_dir(p)?;
    }
    match from.parent() {
        Some(p) if Some(p) != to.parent() => fsync_dir(p),
        _ => Ok(()),
    }
}

/// What [`copy_sparse`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseCopy {
    /// Bytes of data copied (the holes are not).
    pub data_bytes: u64,
    /// SHA-256 over each data extent's offset and bytes, hex: the same for
    /// the same content, however the holes fall.
    pub content_hash: String,
}

const CHUNK: usize = 1 << 20;

/// Copies the data extents of `src` to a new file `dst` of the same length
/// (holes stay holes) and fsyncs it; hashes what it copies.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<SparseCopy, HostError> {
    let from = File::open(src).map_err(HostError::io("open", src))?;
    let len = from.metadata().map_err(HostError::io("stat", src))?.len();
    let to = File::create(dst).map_err(HostError::io("create", dst))?;
    to.set_len(len).map_err(HostError::io("size", dst))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) =
            next_extent(&from, pos, len).map_err(HostError::io("seek in", src))?
        else {
            break;
        };
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            from.read_exact_at(&mut buf[..n], at)
                .map_err(HostError::io("read", src))?;
            // An all-zero block hashes and copies as a hole would.
            if buf[..n].iter().any(|b| *b != 0) {
                hash.update(at.to_le_bytes());
                hash.update(&buf[..n]);
                to.write_all_at(&buf[..n], at)
                    .map_err(HostError::io("write", dst))?;
                copied += n as u64;
            }
            at += n as u64;
        }
        pos = end;
    }
    to.sync_all().map_err(HostError::io("fsync", dst))?;
    Ok(SparseCopy {
        data_bytes: copied,
        content_hash: hex::encode(hash.finalize()),
    })
}

/// The next data extent at or after `pos`: `(start, end)`, or `None` past
/// the last one. Falls back to "all data" where SEEK_DATA is not supported.
fn next_extent(f: &File, pos: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an fd we own, with integer arguments.
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, len))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(len))))
}

/// Bytes a file really occupies on disk (its allocated blocks).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copies_keep_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"hello", 4096).unwrap();
        f.write_all_at(b"world", 40 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst.img");
        let c = copy_sparse(&src, &dst).unwrap();
        assert!(c.data_bytes < 4 << 20, "copied {} bytes", c.data_bytes);
        let got = std::fs::read(&dst).unwrap();
        assert_eq!(got.len(), 64 << 20);
        assert_eq!(&got[4096..4101], b"hello");
        assert_eq!(&got[40 << 20..(40 << 20) + 5], b"world");
        assert!(allocated_bytes(&dst) < 8 << 20);
        // Same content, same hash; different content, different hash.
        let again = copy_sparse(&dst, &dir.path().join("again.img")).unwrap();
        assert_eq!(again.content_hash, c.content_hash);
        File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .write_all_at(b"!", 4096)
            .unwrap();
        let changed = copy_sparse(&src, &dir.path().join("changed.img")).unwrap();
        assert_ne!(changed.content_hash, c.content_hash);
    }

    #[test]
    fn atomic_writes_replace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
