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
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::state::AppState;
use crate::upstream::SandboxConnector;

pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// Upstream HTTP clients (pooled connections to sandboxes, each closed
/// when its sandbox is gone: see [`crate::upstream`]).
#[derive(Clone)]
pub struct Proxy {
    http1: Client<SandboxConnector, Body>,
    http2: Client<SandboxConnector, Body>,
    connector: SandboxConnector,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

/// How long an idle pooled connection to a sandbox is kept: below the
/// agent's and the interpreter's 30 s header timeout, which also closes
/// their idle connections, so that kilnd never sends a request on a
/// connection the far end is closing (a reset, seen as a 502). The pool's
/// timer drops expired connections every `UPSTREAM_IDLE`, so one goes
/// between 10 and 20 s idle: kilnd's end closes first. That matters on
/// gVisor, whose checkpoint refuses a connection the sandbox closed first
/// (TIME_WAIT for a minute in its netstack).
pub(crate) const UPSTREAM_IDLE: Duration = Duration::from_secs(10);

impl Proxy {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = SandboxConnector::new(connector);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(UPSTREAM_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        Self {
            http1,
            http2,
            connector,
        }
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

    // Only origin-form targets (`/path?query`; absolute-form and HTTP/2
    // requests carry one too) name something inside the sandbox: not `*`
    // (OPTIONS) nor an authority (CONNECT).
    // CONNECT asks for a tunnel, which a sandbox's port is not (HTTP/2's
    // extended CONNECT, WebSockets over h2, is not proxied either).
    if req.method() == axum::http::Method::CONNECT {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"code": 400, "message": "CONNECT is not served through the sandbox proxy"}),
        );
    }
    let Some(path) = req
        .uri()
        .path_and_query()
        .filter(|p| p.as_str().starts_with('/'))
        .cloned()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"code": 400, "message": format!(
                "the request target {:?} is not a path: a sandbox's port takes /path?query targets only",
                req.uri().to_string()
            )}),
        );
    };
    let limit = body_limit(&route, port, path.path(), req.headers());
    if let Some((max, what)) = limit {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return too_large(max, what);
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
    let authority = match route.ip {
        std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    };
    let uri = Authority::try_from(authority.as_str())
        .map_err(axum::http::Error::from)
        .and_then(|a| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(a)
                .path_and_query(path)
                .build()
        });
    let Ok(uri) = uri else {
        // Every part was parsed already; this is not the client's doing.
        tracing::error!(sandbox = %id, port, "cannot build an upstream URI");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": 500, "message": "cannot build the upstream request"}),
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
    if let Some(refusal) = check_head(&parts, h2) {
        return refusal;
    }
    let fault = Arc::new(OnceLock::new());
    let body = Body::new(ClientBody {
        inner: body,
        limit,
        seen: 0,
        fault: fault.clone(),
    });
    let upstream_req = Request::from_parts(parts, body);
    let client = if h2 {
        &state.proxy.http2
    } else {
        &state.proxy.http1
    };
    let gone = route.gone.clone();
    state.proxy.connector.bind(route.ip, gone.clone());
    let sent = tokio::select! {
        r = client.request(upstream_req) => r,
        () = gone.clone().wait() => {
            tracing::debug!(sandbox = %id, port, "sandbox gone while proxying");
            return sandbox_not_found(id);
        }
    };
    let mut resp = match sent {
        Ok(r) => r,
        // The client's body was at fault (bad chunked framing, cut off,
        // over the far end's limit): the client's error, whatever the port.
        Err(e) if fault.get().is_some() => {
            tracing::debug!(sandbox = %id, port, error = %e, "the client's request body failed");
            return match fault.get() {
                Some(BodyFault::TooLarge(max, what)) => too_large(*max, what),
                Some(BodyFault::Malformed(why)) => error(
                    StatusCode::BAD_REQUEST,
                    json!({"code": 400, "message": format!("malformed request body: {why}")}),
                ),
                None => unreachable!("checked by the guard"),
            };
        }
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

/// The most a request to `port` of this sandbox may carry, and whose limit
/// that is: the agent's (Connect messages, `/init`) and the code
/// interpreter's. `None`: no limit known (file uploads stream to disk; a
/// user's server decides for itself).
fn body_limit(
    route: &kiln_core::Route,
    port: u16,
    path: &str,
    headers: &HeaderMap,
) -> Option<(usize, &'static str)> {
    use kiln_api::agent::{MAX_INIT_BODY, MAX_RPC_MESSAGE};
    if port == route.agent_port {
        if path == "/init" {
            return Some((MAX_INIT_BODY, "the agent's /init limit"));
        }
        let rpc = path.starts_with("/process.") || path.starts_with("/filesystem.");
        // A client stream (StreamInput) is as long as its process reads.
        if !rpc || path.ends_with("/StreamInput") {
            return None;
        }
        let streaming = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/connect+"));
        // A streaming request is one envelope: 5 bytes of header, then
        // the message.
        let max = if streaming {
            MAX_RPC_MESSAGE + 5
        } else {
            MAX_RPC_MESSAGE
        };
        return Some((max, "the agent's RPC message limit"));
    }
    if port == kiln_interpreter::template::PORT
        && route.template_id == kiln_interpreter::template::NAME
    {
        return Some((
            kiln_interpreter::MAX_REQUEST_BODY,
            "the code interpreter's request limit",
        ));
    }
    None
}

fn too_large(max: usize, what: &str) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"code": 413, "message": format!(
            "the request body is larger than {max} bytes ({what})"
        )}),
    )
}

/// Refuses (431) a request whose head, as forwarded, the far end would not
/// read: over the agent's header block limit counted the HTTP/1.1 way or
/// the HTTP/2 way (32 bytes more a field), or with more fields than an
/// HTTP/1.1 server takes. kilnd's listener has the same limits, so only a
/// request just at them gets here.
fn check_head(parts: &Parts, h2: bool) -> Option<Response> {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let method = parts.method.as_str().len();
    let fields = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len());
    let (h1_size, h2_size) = fields.fold(
        (method + 1 + target + " HTTP/1.1\r\n\r\n".len(), 0),
        |(a, b), n| (a + n + 4, b + n + 32),
    );
    // Pseudo-header fields: :method, :scheme, :authority, :path.
    let authority = parts.uri.authority().map_or(0, |a| a.as_str().len());
    let h2_size = h2_size + method + 7 + 32 + 4 + 7 + 32 + authority + 10 + 32 + target + 5 + 32;
    let size = if h2 { h2_size } else { h1_size.max(h2_size) };
    let max = crate::listener::MAX_HEADER_BYTES;
    if size > max {
        return Some(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            json!({"code": 431, "message": format!(
                "the request's header block takes {size} bytes; the limit is {max}"
            )}),
        ));
    }
    let count = parts.headers.len();
    if !h2 && count > crate::listener::MAX_HEADERS {
        return Some(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            json!({"code": 431, "message": format!(
                "the request has {count} header fields; the limit is {}",
                crate::listener::MAX_HEADERS
            )}),
        ));
    }
    None
}

/// What went wrong on the client's side of a proxied request body.
#[derive(Debug)]
enum BodyFault {
    /// Bad chunked framing, a cut-off body, a stream reset.
    Malformed(String),
    /// Over the far end's limit: (limit, whose).
    TooLarge(usize, &'static str),
}

/// The client's request body on its way to the sandbox: notes whether a
/// failure was the client's (framing, limit), so that it is answered as
/// the client's error (400, 413) and not as the sandbox's (502).
struct ClientBody {
    inner: Body,
    limit: Option<(usize, &'static str)>,
    seen: usize,
    fault: Arc<OnceLock<BodyFault>>,
}

impl hyper::body::Body for ClientBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((max, what))) = (frame.data_ref(), this.limit) {
                    this.seen = this.seen.saturating_add(data.len());
                    if this.seen > max {
                        let _ = this.fault.set(BodyFault::TooLarge(max, what));
                        return Poll::Ready(Some(Err(format!(
                            "the request body is larger than {max} bytes"
                        )
                        .into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(": ");
                    why.push_str(&s.to_string());
                    source = s.source();
                }
                let _ = this.fault.set(BodyFault::Malformed(why));
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
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

    /// The body a client streams, cut at the far end's limit: the error is
    /// noted as the client's (a 413), as is a failure of the client's own
    /// stream (a 400).
    #[tokio::test]
    async fn client_bodies_note_whose_fault_a_failure_is() {
        use http_body_util::BodyExt;
        let chunks = || {
            tokio_stream::iter(vec![
                Ok::<_, std::io::Error>(hyper::body::Bytes::from(vec![1u8; 600])),
                Ok(hyper::body::Bytes::from(vec![2u8; 600])),
            ])
        };
        let fault = Arc::new(OnceLock::new());
        let body = ClientBody {
            inner: Body::from_stream(chunks()),
            limit: Some((1000, "a test limit")),
            seen: 0,
            fault: fault.clone(),
        };
        assert!(body.collect().await.is_err());
        assert!(matches!(
            fault.get(),
            Some(BodyFault::TooLarge(1000, "a test limit"))
        ));

        let fault = Arc::new(OnceLock::new());
        let body = ClientBody {
            inner: Body::from_stream(chunks()),
            limit: Some((1200, "a test limit")),
            seen: 0,
            fault: fault.clone(),
        };
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1200);
        assert!(fault.get().is_none(), "at the limit is fine");

        let fault = Arc::new(OnceLock::new());
        let body = ClientBody {
            inner: Body::from_stream(tokio_stream::iter(vec![
                Ok(hyper::body::Bytes::from_static(b"{")),
                Err(std::io::Error::other("invalid chunk size")),
            ])),
            limit: None,
            seen: 0,
            fault: fault.clone(),
        };
        assert!(body.collect().await.is_err());
        assert!(
            matches!(fault.get(), Some(BodyFault::Malformed(m)) if m.contains("invalid chunk size")),
            "{:?}",
            fault.get()
        );
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
