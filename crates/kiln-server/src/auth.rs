//! `X-API-KEY` authentication: an extractor giving the caller's team.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kiln_core::Team;

use crate::error::ApiError;
use crate::state::AppState;

pub const API_KEY_HEADER: &str = "x-api-key";

/// The team of the request's API key; rejects with 401 otherwise.
pub struct Auth(pub Team);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok());
        Ok(Auth(state.core.authenticate(key).await?))
    }
}
