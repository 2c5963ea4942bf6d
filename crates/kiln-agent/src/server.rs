//! Routing: the Connect services, the plain HTTP endpoints, the access
//! token check. HTTP/1.1 and h2c are served on one port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kiln_api::agent::{Code, InitRequest};
use tokio::net::TcpListener;

use crate::connect::{self, full, Body};
use crate::error::RpcError;
use crate::fs::files::{self, http_error};
use crate::state::AgentState;

/// Largest header block accepted (HTTP/1.1 and HTTP/2).
const MAX_HEADERS: usize = 64 * 1024;
/// How long a connection may take to send a request's header block, from
/// its first byte or, between requests, from the end of the last answer
/// (an HTTP/1.1 connection idle that long is closed too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2: a ping this often, and a peer that does not answer one within
/// `H2_PING_TIMEOUT` is gone.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the client has sent enough to tell HTTP/1.1 from h2c, at
/// most `HEADER_TIMEOUT` (hyper's own header timeout starts only after
/// that). False when the client sent nothing in time or closed.
async fn first_bytes(stream: &tokio::net::TcpStream) -> bool {
    let wait = async {
        let mut buf = [0u8; 24];
        loop {
            if stream.readable().await.is_err() {
                return false;
            }
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] => return true,
                // A prefix of the h2c preface: wait for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(HEADER_TIMEOUT, wait)
        .await
        .unwrap_or(false)
}

/// Accepts connections until the task is dropped.
/// Accepts and serves connections. While `closed` says so, the listening
/// socket is closed (see [`kiln_api::agent::CLOSE_LISTENER_SIGNAL`]): it is
/// bound again on the same address once `closed` is false.
pub async fn serve(
    mut listener: TcpListener,
    state: Arc<AgentState>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some(accepted) = accepted else {
            listener = reopen(listener, &mut closed).await;
            continue;
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("kiln-agent: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            if !first_bytes(&stream).await {
                return;
            }
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .max_buf_size(MAX_HEADERS.max(8192))
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .max_header_list_size(MAX_HEADERS as u32)
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(2 << 20);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Closes `listener`, waits until `closed` is false, and binds its address
/// again (retrying: the port may take a moment to be free).
async fn reopen(
    listener: TcpListener,
    closed: &mut tokio::sync::watch::Receiver<bool>,
) -> TcpListener {
    let addr = listener.local_addr();
    drop(listener);
    eprintln!("kiln-agent: listener closed");
    let _ = closed.wait_for(|c| !*c).await;
    let Ok(addr) = addr else {
        // Never seen: a bound socket knows its address.
        std::process::exit(1);
    };
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                eprintln!("kiln-agent: listening again on {addr}");
                return l;
            }
            Err(e) => {
                eprintln!("kiln-agent: binding {addr} again failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

pub async fn handle(state: Arc<AgentState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);

    if path == "/health" {
        drain(body).await;
        let mut r = Response::new(connect::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }
    let signed = if path == "/files" {
        signed_url(&state, &parts.method, query.as_deref())
    } else {
        None
    };
    if signed != Some(Ok(())) && !state.authorized(&parts.headers) {
        // A signed URL that fails says why, in envd's words (the SDKs and
        // browsers show it).
        let why = match signed {
            Some(Err(why)) => why,
            _ => "missing or wrong X-Access-Token",
        };
        let e = RpcError::new(Code::Unauthenticated, why);
        drain(body).await;
        return if path.starts_with("/process.") || path.starts_with("/filesystem.") {
            match connect::framing(&parts.headers) {
                Ok(connect::Framing::Stream) => connect::stream_error(&e),
                _ => connect::unary_error(&e),
            }
        } else {
            http_error(401, e.message)
        };
    }

    match (&parts.method, path.as_str()) {
        (&Method::GET, "/files") => files::get(&state, query.as_deref(), &parts.headers).await,
        (&Method::POST, "/files") => {
            files::post(&state, query.as_deref(), &parts.headers, body).await
        }
        (&Method::GET, "/envs") => {
            let env = state.settings().env_vars;
            json_response(&env)
        }
        (&Method::POST, "/init") => init(&state, body).await,
        (&Method::GET, "/metrics") => metrics(),
        (_, "/files" | "/envs" | "/init" | "/metrics") => {
            drain(body).await;
            http_error(405, format!("{} is not allowed on {path}", parts.method))
        }
        (method, p) => {
            let Some((service, rpc)) = p
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .filter(|(s, m)| s.contains('.') && !m.is_empty() && !m.contains('/'))
            else {
                drain(body).await;
                return http_error(404, format!("no route for {p}"));
            };
            if service != kiln_api::agent::process::SERVICE
                && service != kiln_api::agent::filesystem::SERVICE
            {
                // envd's mux has no route for it: 404, as connect-go's.
                drain(body).await;
                let mut r = connect::unary_error(&RpcError::new(
                    Code::Unimplemented,
                    format!("unknown service {service}"),
                ));
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
            if method != Method::POST {
                drain(body).await;
                let mut r = connect::unary_error(&RpcError::new(
                    Code::Unimplemented,
                    "Connect RPCs are POST requests",
                ));
                *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            let framing = match connect::framing(&parts.headers) {
                Ok(f) => f,
                Err(e) => {
                    drain(body).await;
                    return media_error(&e);
                }
            };
            if let Err(e) = connect::check_encoding(&parts.headers, framing) {
                drain(body).await;
                return match framing {
                    connect::Framing::Unary => media_error(&e),
                    connect::Framing::Stream => connect::stream_error(&e),
                };
            }
            let res = if service == kiln_api::agent::process::SERVICE {
                crate::process::rpc::call(&state, rpc, &parts.headers, body, framing).await
            } else {
                crate::fs::rpc::call(&state, rpc, &parts.headers, body, framing).await
            };
            match res {
                // A unary `unimplemented` from a service is a request in
                // the wrong framing or encoding for its method: 415, as
                // connect-go's handlers answer (not 501, a server fault).
                Some(r) if r.status() == StatusCode::NOT_IMPLEMENTED => {
                    let mut r = r;
                    *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                    r
                }
                Some(r) => r,
                None => {
                    let e = RpcError::new(
                        Code::Unimplemented,
                        format!("unknown method {service}/{rpc}"),
                    );
                    match framing {
                        connect::Framing::Unary => {
                            let mut r = connect::unary_error(&e);
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                        connect::Framing::Stream => connect::stream_error(&e),
                    }
                }
            }
        }
    }
}

/// Whether a `/files` URL's signature lets it through: E2B's v1 scheme,
/// `v1_` + unpadded base64 of sha256("path:operation:user:token[:expiration]"),
/// unexpired. Lets a browser download or upload without the token header.
/// `None` when the URL carries no signature; otherwise why it is refused,
/// in envd's words (`invalid signature`, `signature is already expired`).
fn signed_url(
    state: &AgentState,
    method: &Method,
    query: Option<&str>,
) -> Option<Result<(), &'static str>> {
    use base64::Engine;
    use sha2::Digest;
    let params = files::query_params(query);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let sig = get("signature")?;
    let Some(token) = state.settings().access_token else {
        return Some(Err("invalid signature"));
    };
    let op = match *method {
        Method::GET => "read",
        Method::POST => "write",
        _ => return Some(Err("invalid signature")),
    };
    let path = get("path").unwrap_or_default();
    let user = get("username").unwrap_or_default();
    let expiration = get("signature_expiration").filter(|e| !e.is_empty());
    let raw = match &expiration {
        Some(exp) => format!("{path}:{op}:{user}:{token}:{exp}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let want = format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    );
    let matches = want.len() == sig.len()
        && want
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
    if !matches {
        return Some(Err("invalid signature"));
    }
    if let Some(exp) = expiration {
        // Signed, so the number is the signer's; check it only now.
        let Ok(exp_secs) = exp.parse::<u64>() else {
            return Some(Err("invalid signature"));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        if exp_secs < now {
            return Some(Err("signature is already expired"));
        }
    }
    Some(Ok(()))
}

fn json_response<T: serde::Serialize>(v: &T) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `/init`: checks every field, then applies them all, or answers why not
/// and changes nothing.
async fn init(state: &Arc<AgentState>, body: Incoming) -> Response<Body> {
    let bytes = match connect::read_body(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => return http_error(400, e.message),
    };
    let req: InitRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return http_error(400, format!("malformed /init body: {e}")),
        }
    };
    if let Some(u) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        if let Err(e) = crate::users::lookup(u) {
            return http_error(400, e.message);
        }
    }
    if let Some(w) = req.default_workdir.as_deref().filter(|w| !w.is_empty()) {
        if w.contains('\0') || w.len() > 4096 {
            return http_error(
                400,
                "defaultWorkdir must be a path of at most 4096 bytes without NUL",
            );
        }
    }
    if let Some(ts) = req.timestamp.as_deref() {
        if crate::clock::parse_rfc3339(ts).is_none() {
            return http_error(400, format!("timestamp {ts:?} is not an RFC 3339 time"));
        }
    }
    let mut s = state.settings.write().unwrap_or_else(|p| p.into_inner());
    let mut env_vars = s.env_vars.clone();
    if let Some(env) = req.env_vars {
        if let Err(e) = crate::process::limits::check_env(env.iter()) {
            return http_error(400, e.message);
        }
        env_vars.extend(env);
        if let Err(e) = crate::process::limits::check_env(env_vars.iter()) {
            return http_error(400, e.message);
        }
    }
    let token = match req.access_token {
        // Once set, the token can be changed (by a caller who holds it:
        // the request passed the check) but never removed, which would
        // switch authentication off.
        Some(t) if t.is_empty() => {
            if s.access_token.is_some() {
                return http_error(401, "access token reset not authorized");
            }
            None
        }
        Some(t) => {
            if !t.bytes().all(|b| b.is_ascii_graphic()) || t.len() > 4096 {
                return http_error(
                    400,
                    "accessToken must be at most 4096 printable ASCII characters",
                );
            }
            Some(t)
        }
        None => s.access_token.clone(),
    };
    // Everything checked: apply.
    if let Some(ts) = req.timestamp.as_deref() {
        crate::clock::sync(ts);
    }
    s.env_vars = env_vars;
    s.access_token = token;
    if let Some(u) = req.default_user.filter(|u| !u.is_empty()) {
        s.default_user = Some(u);
    }
    if let Some(w) = req.default_workdir.filter(|w| !w.is_empty()) {
        s.default_workdir = Some(w);
    }
    drop(s);
    let mut r = Response::new(connect::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// A minimal `/metrics`: the sandbox's clock, CPUs and memory.
fn metrics() -> Response<Body> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (mut total, mut avail) = (0u64, 0u64);
    if let Ok(m) = std::fs::read_to_string("/proc/meminfo") {
        for line in m.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("MemTotal:") {
                total = kb(line);
            } else if line.starts_with("MemAvailable:") {
                avail = kb(line);
            }
        }
    }
    json_response(&serde_json::json!({
        "ts": ts,
        "cpu_count": cpus,
        "mem_total": total,
        "mem_used": total.saturating_sub(avail),
    }))
}

/// A unary Connect error about how the request is encoded: 415.
fn media_error(e: &RpcError) -> Response<Body> {
    let mut r = connect::unary_error(e);
    *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    r
}

/// Most of an unread request body the agent reads before answering early
/// (a refusal, an unknown route), and for how long.
const DRAIN_MAX: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads and drops what is left of a request body the answer does not
/// need: a connection closed with unread bytes is reset by the kernel, and
/// a reset can reach the client (through kilnd's proxy: a 502) before the
/// answer does. A body over [`DRAIN_MAX`] is cut off as before.
pub(crate) async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += data.len();
                if read > DRAIN_MAX {
                    break;
                }
            }
        }
    })
    .await;
}
