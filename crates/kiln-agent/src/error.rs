//! The agent's request error: a Connect code and a message for the client.
//! File-system errors name their path.

use std::io;
use std::path::Path;

use kiln_api::agent::Code;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// An I/O error on `path`, mapped to the code the SDK expects.
    pub fn io(what: &str, path: &Path, err: &io::Error) -> Self {
        let code = io_code(err);
        RpcError::new(code, format!("{what} {}: {err}", path.display()))
    }

    /// The HTTP status of this error on the plain HTTP endpoints (`/files`):
    /// a full disk is 507 there.
    pub fn http_status(&self) -> u16 {
        match self.code {
            Code::ResourceExhausted => 507,
            Code::PermissionDenied => 403,
            c => c.http_status(),
        }
    }
}

/// The Connect code of an I/O error.
pub fn io_code(err: &io::Error) -> Code {
    match err.raw_os_error() {
        Some(e) if e == libc_errno::ENOSPC || e == libc_errno::EDQUOT => {
            return Code::ResourceExhausted
        }
        Some(e)
            if e == libc_errno::ENOTDIR
                || e == libc_errno::EISDIR
                || e == libc_errno::ENAMETOOLONG
                || e == libc_errno::ELOOP
                || e == libc_errno::EINVAL
                || e == libc_errno::ENOTEMPTY
                || e == libc_errno::EXDEV =>
        {
            return Code::InvalidArgument
        }
        Some(e) if e == libc_errno::EROFS => return Code::PermissionDenied,
        _ => {}
    }
    match err.kind() {
        io::ErrorKind::NotFound => Code::NotFound,
        io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        io::ErrorKind::AlreadyExists => Code::AlreadyExists,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// errno values used above (Linux, all architectures we build for).
mod libc_errno {
    pub const EINVAL: i32 = rustix::io::Errno::INVAL.raw_os_error();
    pub const ENOSPC: i32 = rustix::io::Errno::NOSPC.raw_os_error();
    pub const EDQUOT: i32 = rustix::io::Errno::DQUOT.raw_os_error();
    pub const ENOTDIR: i32 = rustix::io::Errno::NOTDIR.raw_os_error();
    pub const EISDIR: i32 = rustix::io::Errno::ISDIR.raw_os_error();
    pub const ENAMETOOLONG: i32 = rustix::io::Errno::NAMETOOLONG.raw_os_error();
    pub const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();
    pub const ENOTEMPTY: i32 = rustix::io::Errno::NOTEMPTY.raw_os_error();
    pub const EXDEV: i32 = rustix::io::Errno::XDEV.raw_os_error();
    pub const EROFS: i32 = rustix::io::Errno::ROFS.raw_os_error();
}
