//! The HTTP surface the `e2b-code-interpreter` SDKs call on port 49999.
//!
//! - `GET /health` → 200 `OK`
//! - `POST /execute` `{code, context_id?, language?, env_vars?, timeout?}` →
//!   `application/x-ndjson` stream (see [`crate::output`])
//! - `POST /contexts` `{language?, cwd?}` → `{id, language, cwd}`
//! - `GET /contexts` → `[{id, language, cwd}]`
//! - `POST /contexts/{id}/restart`, `DELETE /contexts/{id}`
//!
//! Client errors come back as plain-text sentences with 400/404; a kernel that
//! fails to start is a 500 whose message names the kernel.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::context::{ContextError, Registry};
use crate::execute::{self, Cell, ExecuteError};

/// Every failure a handler can answer with, mapped to HTTP in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("give either context_id or language, not both")]
    ContextAndLanguage,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Context(ContextError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Context(ContextError::Start { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut message = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        if status.is_server_error() {
            tracing::error!("{message}");
        }
        (status, message).into_response()
    }
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(t)| t)
        .map_err(|e| ApiError::Body(e.body_text()))
}

pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/execute", post(execute_handler))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", axum::routing::delete(remove_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .with_state(registry)
}

#[derive(Debug, Deserialize)]
struct ExecuteBody {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    /// Seconds; the SDKs bound executions on the client side instead.
    #[serde(default)]
    timeout: Option<f64>,
}

async fn execute_handler(
    State(registry): State<Arc<Registry>>,
    headers: HeaderMap,
    payload: Result<Json<ExecuteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(payload)?;
    let context_id = request.context_id.filter(|c| !c.is_empty());
    let language = request.language.filter(|l| !l.is_empty());
    let mut cell = Cell::new(request.code, request.env_vars, request.timeout)?;
    let token = headers.get("x-access-token").and_then(|t| t.to_str().ok());
    cell.sandbox_env = registry.sandbox_env.current(token).await;
    let context = match (context_id, language) {
        (Some(_), Some(_)) => return Err(ApiError::ContextAndLanguage),
        (Some(id), None) => {
            let context = registry.get(&id)?;
            registry.ensure_started(&context).await?;
            context
        }
        (None, language) => registry.default_for(language.as_deref()).await?,
    };
    let lines =
        ReceiverStream::new(execute::spawn(context, cell)).map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct CreateContextBody {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

async fn create_context(
    State(registry): State<Arc<Registry>>,
    payload: Result<Json<CreateContextBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = match payload {
        Err(JsonRejection::MissingJsonContentType(_)) => CreateContextBody::default(),
        other => body(other)?,
    };
    let info = registry
        .create(request.language.as_deref(), request.cwd.as_deref())
        .await?;
    Ok(Json(info).into_response())
}

async fn list_contexts(State(registry): State<Arc<Registry>>) -> Response {
    Json(registry.list()).into_response()
}

async fn restart_context(
    State(registry): State<Arc<Registry>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    registry.restart(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_context(
    State(registry): State<Arc<Registry>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    registry.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::Catalog;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn empty_app() -> Router {
        let registry = Registry::new(
            Catalog::default(),
            std::env::temp_dir(),
            std::env::temp_dir(),
        );
        app(Arc::new(registry))
    }

    async fn call(app: Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn unknown_context_is_404() {
        let (status, text) = call(
            empty_app(),
            "POST",
            "/execute",
            r#"{"code":"1","context_id":"nope"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(text, "context nope not found");
        let (status, _) = call(empty_app(), "DELETE", "/contexts/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(empty_app(), "POST", "/contexts/nope/restart", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn unknown_language_is_400_and_says_so() {
        let (status, text) = call(
            empty_app(),
            "POST",
            "/execute",
            r#"{"code":"1","language":"cobol"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("unsupported language 'cobol'"), "{text}");
        let (status, text) = call(empty_app(), "POST", "/contexts", r#"{"language":"java"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("no kernel for language 'java'"), "{text}");
    }

    #[tokio::test]
    async fn bad_bodies_are_400() {
        for body in [
            "not json",
            r#"{"language":"python"}"#,
            r#"{"code":"1","language":"python","context_id":"x"}"#,
            r#"{"code":"1","env_vars":{"A B":"1"}}"#,
            r#"{"code":"1","timeout":-3}"#,
        ] {
            let (status, text) = call(empty_app(), "POST", "/execute", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            assert!(!text.is_empty());
        }
    }

    #[tokio::test]
    async fn list_starts_empty_and_health_answers() {
        assert_eq!(
            call(empty_app(), "GET", "/contexts", "").await,
            (StatusCode::OK, "[]".to_owned())
        );
        assert_eq!(
            call(empty_app(), "GET", "/health", "").await,
            (StatusCode::OK, "OK".to_owned())
        );
    }
}
