//! What a host primitive can fail with, each carrying the path it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file-system call on `path` failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file (cgroups, sysctls) failed.
    #[error("failed to write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// A state change the kernel makes asynchronously did not happen.
    #[error("{} did not {what} in time", path.display())]
    Stuck { path: PathBuf, what: &'static str },
    /// An external tool failed on `path`; `stderr` is what it said.
    #[error("{tool} failed on {}: {stderr}", path.display())]
    Tool {
        tool: &'static str,
        path: PathBuf,
        stderr: String,
    },
    /// The host lacks something the primitive needs.
    #[error("{0}")]
    Unsupported(String),
}

impl HostError {
    /// A closure for `map_err` on an io::Result about `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| HostError::Io { op, path, source }
    }
}
