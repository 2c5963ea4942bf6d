//! What can go wrong in a core call. kilnd maps these to HTTP statuses in one
//! place (`kiln_server::error`).

use kiln_runtime::RuntimeError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The caller's request is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The sandbox, template or key does not exist (or belongs to another team).
    #[error("{0}")]
    NotFound(String),
    /// The operation does not fit the sandbox's current state.
    #[error("{0}")]
    Conflict(String),
    /// The caller's team, or the host, has no room for this sandbox's
    /// limits (see `limits.rs`); the message names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// Kiln does not offer this yet.
    #[error("{0}")]
    NotImplemented(String),
    #[error("the sandbox runtime failed")]
    Runtime(#[from] RuntimeError),
    #[error("the sandbox's agent did not accept its initialisation: {0}")]
    Agent(String),
    #[error("the template's start command failed: {0}")]
    StartCommand(String),
    #[error("the store failed")]
    Store(#[from] StoreError),
}

impl CoreError {
    /// Whether the host's disk (the data directory's file system) is full:
    /// SQLite's SQLITE_FULL, or ENOSPC anywhere in the error's chain. Such a
    /// failure is the operator's to fix, not a bug, and is answered as such.
    pub fn is_disk_full(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>()
            {
                if f.code == rusqlite::ErrorCode::DiskFull {
                    return true;
                }
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(28) || io.kind() == std::io::ErrorKind::StorageFull {
                    return true;
                }
            }
            let text = e.to_string();
            if text.contains("No space left on device") || text.contains("database or disk is full")
            {
                return true;
            }
            next = e.source();
        }
        false
    }

    pub(crate) fn sandbox_not_found(id: &str) -> Self {
        CoreError::NotFound(format!("sandbox {id} not found"))
    }
}
