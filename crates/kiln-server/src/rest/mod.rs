//! The E2B-compatible control API: one module per resource.

pub mod openapi;
pub mod sandboxes;
pub mod snapshots;
pub mod templates;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A `{sandboxID}` path segment, as E2B reads it: the id, or the older
/// SDKs' `<id>-<clientID>`; anything else is a 400, as every error here,
/// in the `{code, message}` body.
pub struct SandboxId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SandboxId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        kiln_core::ids::short_id(&raw)
            .map(|id| SandboxId(id.to_owned()))
            .ok_or_else(|| ApiError::bad_request(format!("invalid sandbox ID {raw:?}")))
    }
}

/// A single path parameter other than a sandbox id, rejected in the
/// `{code, message}` body.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(PathParam(raw))
    }
}

/// Parses a JSON body; an empty body is `T::default()` (the SDKs omit
/// optional bodies). Malformed JSON or wrong types are a 400.
pub(crate) fn json_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Like [`json_body`] for bodies that must be present.
pub(crate) fn required_json_body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON request body is required"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}
