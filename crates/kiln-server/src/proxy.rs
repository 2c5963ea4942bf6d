//! The per-sandbox proxy. A request carrying `E2b-Sandbox-Id` and
//! `E2b-Sandbox-Port`, or with Host `<port>-<sandbox id>.<domain>`, goes to
//! that port inside the sandbox: HTTP/1.1 as HTTP/1.1, h2c as h2c to the agent
//! and to gRPC servers (as HTTP/1.1 to other servers), WebSocket (and any
//! other upgrade) spliced both ways. Bodies stream; nothing is
//! buffered whole.
//!
//! The agent's port is passed through as is (the agent checks the access
//! token). Other ports need the sandbox's traffic token unless it is public.
//! Errors use the 502 messages the SDKs recognise: "... was not found" for a
//! sandbox that does not run, "... port is not open" for a closed port.
//!
//! A sandbox's network namespace goes with it, so a connection into a killed
//! sandbox never sees a FIN or a reset. Every proxied request, response body
//! and upgraded connection therefore also waits on the sandbox's `Gone`
//! signal and ends when it fires, instead of hanging.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::state::AppState;

pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// Upstream HTTP clients (pooled connections to sandboxes).
#[derive(Clone)]
pub struct Proxy {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Below the agent's 30 s idle close, so that a pooled connection
        // is never reused just as the agent closes it.
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(20))
            .build(connector);
        Self { http1, http2 }
    }
}

/// Where a request should go, if it is for a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sandbox {
        id: String,
        port: u16,
    },
    /// Sandbox headers were present but unusable.
    Invalid(String),
    /// Meant for a sandbox, but refused before any lookup of a target.
    Rejected(StatusCode, String),
}

/// Reads the target from the E2B headers or from the Host.
pub fn target_of(headers: &HeaderMap, uri: &Uri) -> Option<Target> {
    if let Some(id) = headers.get(SANDBOX_ID_HEADER) {
        // The id, or the older SDKs' `<id>-<clientID>`.
        let id = match id.to_str().ok().and_then(kiln_core::ids::short_id) {
            Some(id) => id.to_owned(),
            None => return Some(Target::Invalid("invalid E2b-Sandbox-Id header".into())),
        };
        let port = headers
            .get(SANDBOX_PORT_HEADER)
            .and_then(|p| p.to_str().ok())
            .and_then(|p| p.trim().parse::<u16>().ok());
        return Some(match port {
            Some(port) if port > 0 => Target::Sandbox { id, port },
            _ => Target::Invalid("E2b-Sandbox-Port header missing or not a port number".into()),
        });
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    parse_host(host)
}

/// `<port>-<id>.<anything>`, or the older SDKs' `<port>-<id>-<clientID>.<anything>`
/// (an optional `:port` suffix is ignored).
fn parse_host(host: &str) -> Option<Target> {
    let (label, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = kiln_core::ids::short_id(id)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    Some(Target::Sandbox {
        id: id.to_owned(),
        port,
    })
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn sandbox_not_found(id: &str) -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        json!({
            "code": 502,
            "message": format!("The sandbox {id} was not found"),
            "sandboxId": id,
        }),
    )
}

fn port_not_open(id: &str, port: u16) -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        json!({
            "code": 502,
            "message": format!("The sandbox {id} is running but port is not open"),
            "sandboxId": id,
            "port": port,
        }),
    )
}

/// A signed `/files` URL (`Sandbox.download_url` / `upload_url`) arrives
/// without sandbox headers: find the sandbox whose access token produced the
/// signature (E2B's v1 scheme: base64 of sha256 over
/// `path:operation:user:token[:expiration]`). The agent checks it again.
fn signed_files_target(state: &AppState, method: &axum::http::Method, uri: &Uri) -> Option<Target> {
    if uri.path() != "/files" {
        return None;
    }
    let mut path = None;
    let mut user = String::new();
    let mut signature = None;
    let mut expiration = None;
    for (k, v) in form_urlencoded::parse(uri.query()?.as_bytes()) {
        match &*k {
            "path" => path = Some(v.into_owned()),
            "username" => user = v.into_owned(),
            "signature" => signature = Some(v.into_owned()),
            "signature_expiration" => expiration = Some(v.into_owned()),
            _ => {}
        }
    }
    let signature = signature?;
    let unknown = || {
        Some(Target::Rejected(
            StatusCode::UNAUTHORIZED,
            "the file URL's signature matches no running sandbox".into(),
        ))
    };
    let Some(digest) = signature.strip_prefix("v1_") else {
        return unknown();
    };
    let path = path.unwrap_or_default();
    let operation = if method == axum::http::Method::GET {
        "read"
    } else {
        "write"
    };
    let id = state.core.find_running_by_access_token(|token| {
        let raw = match &expiration {
            Some(exp) => format!("{path}:{operation}:{user}:{token}:{exp}"),
            None => format!("{path}:{operation}:{user}:{token}"),
        };
        let ours =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes()));
        kiln_core::ids::constant_time_eq(&ours, digest)
    });
    let Some(id) = id else {
        return unknown();
    };
    Some(Target::Sandbox {
        id,
        port: kiln_runtime::AGENT_PORT,
    })
}

/// Middleware in front of the control API: sandbox requests go to the proxy,
/// everything else on to the router.
pub async fn dispatch(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let target = target_of(req.headers(), req.uri())
        .or_else(|| signed_files_target(&state, req.method(), req.uri()));
    match target {
        None => next.run(req).await,
        Some(Target::Invalid(message)) => error(
            StatusCode::BAD_REQUEST,
            json!({"code": 400, "message": message}),
        ),
        Some(Target::Rejected(status, message)) => {
            error(status, json!({"code": status.as_u16(), "message": message}))
        }
        Some(Target::Sandbox { id, port }) => forward(&state, &id, port, req).await,
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and Kiln's routing headers.
const STRIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    SANDBOX_ID_HEADER,
    SANDBOX_PORT_HEADER,
    TRAFFIC_TOKEN_HEADER,
    // Never hand the team's API key to code in a sandbox.
    crate::auth::API_KEY_HEADER,
];

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

async fn forward(state: &AppState, id: &str, port: u16, mut req: Request) -> Response {
    let Some(route) = state.core.route_or_resume(id).await else {
        return sandbox_not_found(id);
    };
    if port != route.agent_port {
        if let Some(expected) = &route.traffic_access_token {
            let given = req
                .headers()
                .get(TRAFFIC_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !kiln_core::ids::constant_time_eq(given, expected) {
                return error(
                    StatusCode::FORBIDDEN,
                    json!({"code": 403, "message": format!(
                        "sandbox {id} is private: send its traffic access token in the {TRAFFIC_TOKEN_HEADER} header"
                    )}),
                );
            }
        }
    }

    let upgrade = is_upgrade(req.headers());
    tracing::debug!(sandbox = %id, port, version = ?req.version(), upgrade, "proxying");
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upgrade_headers = upgrade.then(|| {
        (
            parts.headers.get(header::UPGRADE).cloned(),
            HeaderValue::from_static("upgrade"),
        )
    });
    for h in STRIPPED {
        parts.headers.remove(*h);
    }
    if let Some((Some(proto), conn)) = upgrade_headers {
        parts.headers.insert(header::UPGRADE, proto);
        parts.headers.insert(header::CONNECTION, conn);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authority = match route.ip {
        std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    };
    let Ok(uri) = format!("http://{authority}{path}").parse::<Uri>() else {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"code": 400, "message": "invalid request path"}),
        );
    };
    parts.uri = uri;
    // h2c upstream only where the far end surely speaks it: the agent, and
    // gRPC servers. Other HTTP/2 requests (e.g. a browser through a TLS
    // front) go on as HTTP/1.1, which every server in a sandbox speaks.
    let h2 = parts.version == Version::HTTP_2
        && !upgrade
        && (port == route.agent_port || is_grpc(&parts.headers));
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if !h2 && !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let upstream_req = Request::from_parts(parts, body);
    let client = if h2 {
        &state.proxy.http2
    } else {
        &state.proxy.http1
    };
    let gone = route.gone.clone();
    let sent = tokio::select! {
        r = client.request(upstream_req) => r,
        () = gone.clone().wait() => {
            tracing::debug!(sandbox = %id, port, "sandbox gone while proxying");
            return sandbox_not_found(id);
        }
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            tracing::debug!(sandbox = %id, port, error = %e, "port not open");
            return port_not_open(id, port);
        }
        Err(e) => {
            tracing::debug!(sandbox = %id, port, error = ?e, "proxying failed");
            // The sandbox may have died mid-request.
            if state.core.route(id).is_none() {
                return sandbox_not_found(id);
            }
            return error(
                StatusCode::BAD_GATEWAY,
                json!({"code": 502, "message": format!(
                    "the connection to sandbox {id} port {port} failed"
                )}),
            );
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let id = id.to_owned();
            let gone = gone.clone();
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client_io, upstream_io)) => {
                        let mut a = TokioIo::new(client_io);
                        let mut b = TokioIo::new(upstream_io);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                            () = gone.wait() => {
                                tracing::debug!(sandbox = %id, "sandbox gone: closing an upgraded connection");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(sandbox = %id, error = %e, "upgrade failed"),
                }
            });
        }
    }

    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            parts.headers.remove(h);
        }
    }
    parts.headers.remove(HeaderName::from_static("trailer"));
    let body = UntilGone {
        inner: body,
        gone: Box::pin(gone.wait()),
        ended: false,
        id: id.to_owned(),
    };
    Response::from_parts(parts, Body::new(body))
}

/// A sandbox's response body that ends with an error once the sandbox is
/// gone: the client sees its stream cut (as when a machine dies) rather than
/// waiting forever on a connection nobody will close.
struct UntilGone {
    inner: hyper::body::Incoming,
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
    id: String,
}

impl hyper::body::Body for UntilGone {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // What the sandbox sent before it went is still delivered.
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.gone.as_mut().poll(cx).is_ready() {
            this.ended = true;
            tracing::debug!(sandbox = %this.id, "sandbox gone: ending a proxied response");
            return Poll::Ready(Some(Err(format!("sandbox {} is gone", this.id).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routing() {
        assert_eq!(
            parse_host("49983-abc123.localhost:3000"),
            Some(Target::Sandbox {
                id: "abc123".into(),
                port: 49983
            })
        );
        assert_eq!(
            parse_host("49983-abc123-6532622b.localhost:3000"),
            Some(Target::Sandbox {
                id: "abc123".into(),
                port: 49983
            }),
            "the older SDKs' <id>-<clientID>"
        );
        assert_eq!(parse_host("localhost:3000"), None);
        assert_eq!(parse_host("127.0.0.1:3000"), None);
        assert_eq!(parse_host("api.example.com"), None);
        assert_eq!(parse_host("80-abc"), None);
        assert_eq!(parse_host("99999-abc.x"), None);
        assert_eq!(parse_host("0-abc.x"), None);
    }

    #[test]
    fn header_routing() {
        let mut h = HeaderMap::new();
        h.insert(SANDBOX_ID_HEADER, HeaderValue::from_static("abc"));
        let uri: Uri = "/x".parse().unwrap();
        assert!(matches!(target_of(&h, &uri), Some(Target::Invalid(_))));
        h.insert(SANDBOX_PORT_HEADER, HeaderValue::from_static("8000"));
        assert_eq!(
            target_of(&h, &uri),
            Some(Target::Sandbox {
                id: "abc".into(),
                port: 8000
            })
        );
    }
}
