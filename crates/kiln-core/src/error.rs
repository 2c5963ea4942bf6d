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
    pub(crate) fn sandbox_not_found(id: &str) -> Self {
        CoreError::NotFound(format!("sandbox {id} not found"))
    }
}
