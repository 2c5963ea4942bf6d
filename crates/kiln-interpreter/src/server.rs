//! The HTTP surface the `e2b-code-interpreter` SDKs call on port 49999.
//!
//! - `GET /health` → 200 `OK`
//! - `POST /execute` `{code, context_id?, language?, env_vars?, timeout?}` →
//!   `application/x-ndjson` stream (see [`crate::output`])
//! - `POST /contexts` `{language?, cwd?}` → `{id, language, cwd}`
//! - `GET /contexts` → `[{id, language, cwd}]`
//! - `POST /contexts/{id}/restart`, `DELETE /contexts/{id}`
//!
//! Client errors come back as plain-text sentences with 400/404 (413 for a
//! body over [`crate::MAX_REQUEST_BODY`]); a kernel that fails to start is a
//! 500 whose message names the kernel.
//!
//! [`serve`] is the listener: HTTP/1.1 (what kilnd's proxy and the SDKs
//! speak), a header block of at most [`MAX_HEADER_BYTES`] sent within
//! [`HEADER_READ_TIMEOUT`] of the connection's start or of the previous
//! answer (so an idle or stalled connection is closed too).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
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
    #[error("{0}")]
    TooLarge(String),
    #[error("give either context_id or language, not both")]
    ContextAndLanguage,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Context(ContextError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Context(ContextError::Start { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
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
    payload.map(|Json(t)| t).map_err(|e| match e {
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!(
                "the request body is larger than {} bytes",
                crate::MAX_REQUEST_BODY
            ))
        }
        e => ApiError::Body(e.body_text()),
    })
}

pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/execute", post(execute_handler))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", axum::routing::delete(remove_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .layer(DefaultBodyLimit::max(crate::MAX_REQUEST_BODY))
        .with_state(registry)
}

/// The largest header block (request line included): kilnd's and the
/// agent's limit.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a client may take to send a header block, counted from the
/// connection's start or the previous answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` completes; connections then
/// finish the request they are on, and this returns once all are closed
/// (the caller bounds the wait). A connection whose header block does
/// not arrive within `header_timeout` is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // NDJSON lines are small writes: without TCP_NODELAY each waits on
        // the client's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("failed to set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        match app.oneshot(req.map(Body::new)).await {
                            Ok(r) => Ok::<_, Infallible>(r),
                            Err(e) => match e {},
                        }
                    }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(MAX_HEADER_BYTES)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection ended: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
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
    async fn bodies_over_the_limit_are_413() {
        let code = "x".repeat(crate::MAX_REQUEST_BODY);
        let body = format!(r#"{{"code":"{code}"}}"#);
        let (status, _) = call(empty_app(), "POST", "/execute", &body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// Raw requests over a real socket, through [`serve`].
    async fn raw(header_timeout: Duration) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            empty_app(),
            header_timeout,
            std::future::pending(),
        ));
        addr
    }

    async fn read_all(sock: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        // Bounded only so that a regression fails instead of hanging.
        let _ = tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn an_unfinished_header_block_is_closed() {
        use tokio::io::AsyncWriteExt;
        let addr = raw(Duration::from_millis(300)).await;
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        let got = read_all(&mut sock).await;
        // hyper closes without an answer (or with 408): either way closed.
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
        // A connection that never sends a byte goes the same way.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_all(&mut silent).await, "");
    }

    #[tokio::test]
    async fn oversize_heads_are_431() {
        use tokio::io::AsyncWriteExt;
        let addr = raw(HEADER_READ_TIMEOUT).await;
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = "v".repeat(MAX_HEADER_BYTES);
        let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let _ = sock.write_all(req.as_bytes()).await;
        let got = read_all(&mut sock).await;
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut sock).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
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
