//! Shifting a root filesystem's ownership into the sandboxes' uid range.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::TemplateError;

/// Adds `offset` to the uid and gid of every file under `root` (not
/// following symlinks), so that a tree built by host root appears owned by
/// root inside sandboxes whose uid 0 maps to `offset`. Keeps setuid/setgid
/// bits (chown clears them). Files already at or above `offset` are left
/// alone, so running it twice is harmless. Blocking.
pub fn shift_ownership(root: &Path, offset: u32) -> Result<(), TemplateError> {
    let io = |p: &Path| {
        let context = format!("failed to shift the ownership of {}", p.display());
        move |source| TemplateError::Io { context, source }
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                stack.push(e.map_err(io(&p))?.path());
            }
        }
        let (uid, gid) = (meta.uid(), meta.gid());
        if uid >= offset && gid >= offset {
            continue;
        }
        let nuid = if uid < offset { uid + offset } else { uid };
        let ngid = if gid < offset { gid + offset } else { gid };
        std::os::unix::fs::lchown(&p, Some(nuid), Some(ngid)).map_err(io(&p))?;
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))?;
        }
    }
    Ok(())
}
