//! User metadata on files, stored as `user.e2b.<key>` extended attributes
//! (set from `X-Metadata-<key>` upload headers, read into `EntryInfo`), and
//! the network-filesystem check for watches.

use std::collections::BTreeMap;
use std::path::Path;

use http::HeaderMap;

use crate::error::RpcError;

const XATTR_PREFIX: &str = "user.e2b.";
const HEADER_PREFIX: &str = "x-metadata-";

/// The metadata an upload carries in its `X-Metadata-*` headers, keys
/// lowercased. Values must be printable ASCII.
pub fn from_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, RpcError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            return Err(RpcError::invalid("empty metadata key"));
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
        out.insert(key.to_ascii_lowercase(), v.to_string());
    }
    Ok(out)
}

/// Stores `meta` on the file (run as the acting user).
pub fn store(path: &Path, meta: &BTreeMap<String, String>) -> Result<(), RpcError> {
    for (k, v) in meta {
        rustix::fs::setxattr(
            path,
            format!("{XATTR_PREFIX}{k}").as_str(),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| {
            let e = std::io::Error::from(e);
            RpcError::new(
                crate::error::io_code(&e),
                format!("storing metadata {k:?} on {} failed: {e}", path.display()),
            )
        })?;
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
}
