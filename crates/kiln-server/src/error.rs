//! The one place where errors become HTTP answers: `{"code": <status>,
//! "message": "..."}`, the body the E2B SDKs parse. Client errors go back as
//! they are; internal ones are logged and answered without their details.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_core::CoreError;
use kiln_runtime::RuntimeError;

/// An answer other than success.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(what: &str, error: &dyn std::error::Error) -> Self {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "{what}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, what)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        if e.is_disk_full() {
            tracing::error!(error = %e, "the host's disk is full");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the host's disk is full: free space in Kiln's data directory and try again",
            );
        }
        match e {
            CoreError::InvalidArgument(m) => Self::new(StatusCode::BAD_REQUEST, m),
            CoreError::Unauthorized(m) => Self::new(StatusCode::UNAUTHORIZED, m),
            CoreError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            CoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            CoreError::NotImplemented(m) => Self::new(StatusCode::NOT_IMPLEMENTED, m),
            CoreError::LimitExceeded(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, m),
            CoreError::Runtime(RuntimeError::InvalidSpec(m)) => Self::new(
                StatusCode::BAD_REQUEST,
                format!("invalid sandbox spec: {m}"),
            ),
            CoreError::Runtime(RuntimeError::NotFound(id)) => {
                Self::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
            }
            CoreError::Runtime(ref r @ RuntimeError::SnapshotNotFound(_)) => {
                Self::new(StatusCode::NOT_FOUND, r.to_string())
            }
            CoreError::Runtime(RuntimeError::WrongState(m)) => Self::new(StatusCode::CONFLICT, m),
            CoreError::Runtime(ref r @ RuntimeError::Unsupported { .. }) => {
                Self::new(StatusCode::BAD_REQUEST, r.to_string())
            }
            CoreError::Runtime(ref r @ RuntimeError::Unavailable { .. }) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, r.to_string())
            }
            ref e @ CoreError::Runtime(_) => Self::internal("the sandbox runtime failed", e),
            ref e @ CoreError::Agent(_) => Self::internal("the sandbox's agent did not start", e),
            // The sandbox's own process failed (its output is in the
            // message): nothing of the host to hide, and the user needs it.
            ref e @ CoreError::StartCommand(_) => {
                tracing::error!(error = %e, "a template's start command failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            ref e @ CoreError::Store(_) => Self::internal("the store failed", e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            // Too large (413) or unreadable (400).
            JsonRejection::BytesRejection(b) => b.into(),
            // Malformed JSON, wrong types and a missing content type are
            // all the caller's mistake: 400 with serde's explanation.
            r => Self::bad_request(format!("invalid request body: {}", r.body_text())),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        // Too large (413) or unreadable (400): keep the status, use our body.
        Self::new(
            r.status(),
            format!("cannot read the request body: {}", r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = kiln_api::rest::Error {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Catches unknown paths.
pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

/// Catches known paths called with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
