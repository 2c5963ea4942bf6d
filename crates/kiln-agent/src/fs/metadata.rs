//! User metadata on files, stored as `user.e2b.<key>` extended attributes
//! (set from `X-Metadata-<key>` upload headers, read into `EntryInfo`), and
//! the network-filesystem check for watches.

use std::collections::BTreeMap;
use std::path::Path;

use http::HeaderMap;

use crate::error::RpcError;

const XATTR_PREFIX: &str = "user.e2b.";
const HEADER_PREFIX: &str = "x-metadata-";
/// Longest metadata key: Linux allows 255 bytes of xattr name, prefix
/// included (envd's limit too).
pub const MAX_KEY_LEN: usize = 255 - XATTR_PREFIX.len();
/// Most metadata on one file, names (with the prefix) and values together:
/// ext4 keeps a file's xattrs in one 4 KiB block (envd's limit too).
pub const MAX_TOTAL_LEN: usize = 4096;

/// The metadata an upload carries in its `X-Metadata-*` headers, keys
/// lowercased, checked against the limits before anything is written.
/// Values must be printable ASCII.
pub fn from_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, RpcError> {
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            return Err(RpcError::invalid("empty metadata key"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(RpcError::invalid(format!(
                "metadata key of {} bytes is over the limit of {MAX_KEY_LEN} bytes",
                key.len()
            )));
        }
        let v = value
            .to_str()
            .ok()
            .filter(|v| v.bytes().all(|b| (0x20..=0x7e).contains(&b)))
            .ok_or_else(|| {
                RpcError::invalid(format!(
                    "metadata value for {key:?} must be printable ASCII"
                ))
            })?;
        total += XATTR_PREFIX.len() + key.len() + v.len();
        if total > MAX_TOTAL_LEN {
            return Err(RpcError::invalid(format!(
                "metadata over the limit of {MAX_TOTAL_LEN} bytes (keys with the \"{XATTR_PREFIX}\" prefix and values together)"
            )));
        }
        out.insert(key.to_ascii_lowercase(), v.to_string());
    }
    Ok(out)
}

/// Makes `meta` the file's whole metadata (run as the acting user): keys
/// the file had from an earlier upload and `meta` lacks are removed, as
/// envd does (truncating a file keeps its xattrs). A filesystem without
/// xattrs (/proc, /sys) keeps none and is no error, as in envd.
pub fn replace(
    file: &std::fs::File,
    path: &Path,
    meta: &BTreeMap<String, String>,
) -> Result<(), RpcError> {
    let fail = |k: &str, e: rustix::io::Errno| {
        let e = std::io::Error::from(e);
        RpcError::new(
            crate::error::io_code(&e),
            format!("storing metadata {k:?} on {} failed: {e}", path.display()),
        )
    };
    let unsupported = |e: rustix::io::Errno| e == rustix::io::Errno::NOTSUP;
    let mut names = vec![0u8; 1 << 16];
    let n = match rustix::fs::flistxattr(file, &mut names[..]) {
        Ok(n) => n,
        Err(e) if unsupported(e) => return Ok(()),
        Err(e) => return Err(fail("", e)),
    };
    for name in names[..n.min(names.len())].split(|b| *b == 0) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Some(key) = name.strip_prefix(XATTR_PREFIX) else {
            continue;
        };
        if meta.contains_key(key) {
            continue;
        }
        match rustix::fs::fremovexattr(file, name) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(fail(key, e)),
        }
    }
    for (k, v) in meta {
        match rustix::fs::fsetxattr(
            file,
            format!("{XATTR_PREFIX}{k}").as_str(),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(e) if unsupported(e) => return Ok(()),
            Err(e) => return Err(fail(k, e)),
        }
    }
    Ok(())
}

/// The `user.e2b.*` attributes of a path (not following a final symlink);
/// empty when there are none or the filesystem has no xattrs.
pub fn load(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(n) = rustix::fs::llistxattr_query(path) else {
        return out;
    };
    if n == 0 {
        return out;
    }
    let mut names = vec![0u8; n.min(1 << 16)];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return out;
    };
    for name in names[..n.min(names.len())].split(|b| *b == 0) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Some(key) = name.strip_prefix(XATTR_PREFIX) else {
            continue;
        };
        let mut val = vec![0u8; 4096];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut val[..]) {
            out.insert(
                key.to_string(),
                String::from_utf8_lossy(&val[..len.min(val.len())]).into_owned(),
            );
        }
    }
    out
}

/// The kind of network filesystem `path` is on, if it is on one.
pub fn network_fs(path: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(path).ok()?;
    network_fs_kind(st.f_type as i64)
}

fn network_fs_kind(magic: i64) -> Option<&'static str> {
    match magic as u32 {
        0x6969 => Some("NFS"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x517B => Some("SMB"),
        0x6573_5546 => Some("FUSE"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_magics() {
        assert_eq!(network_fs_kind(0x6969), Some("NFS"));
        assert_eq!(network_fs_kind(0x6573_5546), Some("FUSE"));
        assert_eq!(network_fs_kind(0xEF53), None); // ext4
        assert_eq!(network_fs(Path::new("/proc")), None);
    }

    #[test]
    fn headers_to_metadata() {
        let mut h = HeaderMap::new();
        h.insert("X-Metadata-Owner", "Team A".parse().expect("header"));
        h.insert("content-type", "x/y".parse().expect("header"));
        let m = from_headers(&h).expect("metadata");
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            [("owner".to_string(), "Team A".to_string())]
        );
    }

    #[test]
    fn metadata_limits_are_checked_first() {
        let header = |key: &str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(format!("x-metadata-{key}").as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
            h
        };
        assert!(from_headers(&header(&"k".repeat(MAX_KEY_LEN), "v")).is_ok());
        let e = from_headers(&header(&"k".repeat(MAX_KEY_LEN + 1), "v")).unwrap_err();
        assert!(e.message.contains("246"), "{}", e.message);
        let e = from_headers(&header("k", &"v".repeat(MAX_TOTAL_LEN))).unwrap_err();
        assert!(e.message.contains("4096"), "{}", e.message);
    }
}
