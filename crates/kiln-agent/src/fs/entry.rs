//! `EntryInfo` of a path: type, size, mode, owner, times, symlink target.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_api::agent::filesystem::{EntryInfo, FileType};

use crate::users::Names;

pub fn entry_info(path: &Path, names: &Names) -> io::Result<EntryInfo> {
    let lmeta = std::fs::symlink_metadata(path)?;
    let is_symlink = lmeta.file_type().is_symlink();
    let (meta, target) = if is_symlink {
        let target = std::fs::canonicalize(path)
            .or_else(|_| std::fs::read_link(path))
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        (std::fs::metadata(path).ok(), target)
    } else {
        (None, None)
    };
    let m: &Metadata = meta.as_ref().unwrap_or(&lmeta);
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::File
    };
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => "/".to_string(),
    };
    Ok(EntryInfo {
        name,
        kind,
        path: path.to_string_lossy().into_owned(),
        size: m.len() as i64,
        mode: lmeta.mode() & 0o777,
        permissions: permissions(&lmeta),
        owner: names.user(lmeta.uid()),
        group: names.group(lmeta.gid()),
        modified_time: Some(rfc3339(lmeta.mtime(), lmeta.mtime_nsec() as u32)),
        symlink_target: target,
        metadata: super::metadata::load(path),
        is_symlink,
    })
}

/// `ls`-style permissions as E2B shows them ("-rw-r--r--", "drwxr-xr-x",
/// "Lrwxrwxrwx" for symlinks).
fn permissions(m: &Metadata) -> String {
    let ft = m.file_type();
    let mut s = String::with_capacity(10);
    s.push(if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'L'
    } else {
        '-'
    });
    let mode = m.mode();
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// RFC 3339 in UTC with nanoseconds (google.protobuf.Timestamp's JSON).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(days_from_civil(2000, 2, 29), 951_782_400 / 86_400);
    }
}
