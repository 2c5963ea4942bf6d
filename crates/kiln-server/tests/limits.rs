//! Bad input at kilnd's listener and through its proxy (issue 19): oversize
//! heads and bodies are refused by kilnd itself (431, 413) instead of being
//! cut off by the far end; `OPTIONS *` and CONNECT targets are a 400; a
//! malformed chunked body is the client's 400 whatever port it was for;
//! slow, idle and too many connections are closed; oversize environments
//! at create are a 400 naming the limit. Raw sockets where a client library
//! would refuse to send such bytes. The fake runtime's sandboxes live at
//! 127.0.0.1, so a "server inside the sandbox" is a loopback listener.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use kiln_server::listener::{self, Limits, MAX_HEADER_BYTES};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Bounds every wait, so that a regression fails instead of hanging; no
/// assertion depends on it being short.
const LONG: Duration = Duration::from_secs(60);

struct Setup {
    env: common::Env,
    kilnd: SocketAddr,
    sandbox: String,
}

/// kilnd's app behind kilnd's own listener, with one sandbox of `template`.
async fn setup_with(template: &str, limits: Limits) -> Setup {
    let env = common::env_with_templates(&["code-interpreter"]).await;
    let created = env
        .create(&env.key_a, json!({"templateID": template}))
        .await;
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kilnd = sock.local_addr().unwrap();
    let app = kiln_server::app(env.state.clone());
    tokio::spawn(listener::serve(sock, app, limits, std::future::pending()));
    Setup {
        sandbox: created["sandboxID"].as_str().unwrap().to_owned(),
        env,
        kilnd,
    }
}

async fn setup() -> Setup {
    setup_with("base", Limits::default()).await
}

/// A server "inside the sandbox" that counts the requests it gets.
async fn upstream(seen: Arc<AtomicUsize>, release: Arc<Notify>) -> SocketAddr {
    let counted = move |seen: Arc<AtomicUsize>| {
        move |req: Request| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                req
            }
        }
    };
    let app = Router::new()
        .route(
            "/headers",
            get({
                let count = counted(seen.clone());
                move |req: Request| async move {
                    let req = count(req).await;
                    let mut names: Vec<String> = req
                        .headers()
                        .keys()
                        .map(|k| k.as_str().to_owned())
                        .collect();
                    names.sort();
                    names.join(",")
                }
            }),
        )
        // Reads the whole body, as the agent's RPCs do, then answers.
        .route(
            "/sink",
            post({
                let count = counted(seen.clone());
                move |req: Request| async move {
                    let req = count(req).await;
                    match req.into_body().collect().await {
                        Ok(b) => (StatusCode::OK, format!("{} bytes", b.to_bytes().len())),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("upstream saw: {e}")),
                    }
                }
            }),
        )
        .route(
            "/stream",
            get(move || {
                let release = release.clone();
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<_, std::io::Error>>(2);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(axum::body::Bytes::from_static(b"first"))).await;
                        release.notified().await;
                        let _ = tx.send(Ok(axum::body::Bytes::from_static(b"second"))).await;
                    });
                    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                }
            }),
        );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// Writes `req` (ignoring a reset: kilnd may answer and close before it
/// read everything) and reads until kilnd closes or `LONG` passes.
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let _ = sock.write_all(req).await;
    read_to_close(&mut sock).await
}

/// Everything until kilnd closes the connection (panics if it does not).
async fn read_to_close(sock: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_bytes_to_close(sock).await).into_owned()
}

async fn read_bytes_to_close(sock: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(LONG, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "kilnd kept the connection open: {out:?}");
    out
}

/// The types of the HTTP/2 frames in `bytes`.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// Reads one response head (and whatever came with it).
async fn read_head(sock: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LONG, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

fn proxied(s: &Setup, port: u16, method: &str, target: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {}\r\nE2b-Sandbox-Port: {port}\r\nConnection: close\r\n{extra}\r\n",
        s.sandbox
    )
}

#[tokio::test]
async fn oversize_heads_are_431_from_kilnd_and_never_reach_the_sandbox() {
    let s = setup().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(seen.clone(), Arc::new(Notify::new())).await;
    let port = up.port();

    // One header over the agent's limit: kilnd's listener refuses it.
    let big = format!("X-Big: {}\r\n", "v".repeat(MAX_HEADER_BYTES));
    let resp = exchange(
        s.kilnd,
        proxied(&s, port, "GET", "/headers", &big).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    // More fields than an HTTP/1.1 server takes.
    let many: String = (0..120).map(|i| format!("X-F{i}: v\r\n")).collect();
    let resp = exchange(
        s.kilnd,
        proxied(&s, port, "GET", "/headers", &many).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 431, "{resp}");

    // Under the limit as bytes on the wire, over it as HTTP/2 counts a
    // header list (32 bytes more a field): what the agent would refuse on
    // an h2c connection, so the proxy refuses it first.
    let fields: String = (0..80)
        .map(|i| format!("x-h{i:02}: {}\r\n", "v".repeat(790)))
        .collect();
    let req = proxied(&s, port, "GET", "/headers", &fields);
    assert!(req.len() < MAX_HEADER_BYTES, "{}", req.len());
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert!(resp.contains("the limit is 65536"), "{resp}");

    // The control API has the same listener.
    let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{big}\r\n");
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a refused request was forwarded"
    );

    // A long metadata header (the files API's X-Metadata-*) is forwarded
    // as it is, for the agent to judge.
    let name = format!("x-metadata-{}", "k".repeat(247));
    let resp = exchange(
        s.kilnd,
        proxied(&s, port, "GET", "/headers", &format!("{name}: v\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains(&name), "{resp}");
}

#[tokio::test]
async fn bodies_over_the_far_ends_limit_are_413_before_forwarding() {
    let s = setup_with("code-interpreter", Limits::default()).await;
    // Port 49999 of a code-interpreter sandbox is the interpreter: a
    // declared length over its limit is answered at once (nothing listens
    // there in this test, so a forwarded request would be a 502).
    let over = kiln_interpreter::MAX_REQUEST_BODY + 1;
    let req = proxied(
        &s,
        kiln_interpreter::template::PORT,
        "POST",
        "/execute",
        &format!("Content-Type: application/json\r\nContent-Length: {over}\r\n"),
    );
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert!(resp.contains("code interpreter"), "{resp}");

    // The agent's Connect messages and /init likewise.
    let over = kiln_api::agent::MAX_RPC_MESSAGE + 1;
    let req = proxied(
        &s,
        kiln_api::agent::AGENT_PORT,
        "POST",
        "/filesystem.Filesystem/Stat",
        &format!("Content-Type: application/json\r\nContent-Length: {over}\r\n"),
    );
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    let over = kiln_api::agent::MAX_INIT_BODY + 1;
    let req = proxied(
        &s,
        kiln_api::agent::AGENT_PORT,
        "POST",
        "/init",
        &format!("Content-Length: {over}\r\n"),
    );
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_eq!(status_of(&resp), 413, "{resp}");

    // Port 49999 of another template is whatever the user runs there.
    let base = s
        .env
        .create(&s.env.key_a, json!({"templateID": "base"}))
        .await;
    let req = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {}\r\nE2b-Sandbox-Port: 49999\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        base["sandboxID"].as_str().unwrap(),
        kiln_interpreter::MAX_REQUEST_BODY + 1
    );
    let resp = exchange(s.kilnd, req.as_bytes()).await;
    assert_ne!(status_of(&resp), 413, "{resp}");
}

#[tokio::test]
async fn targets_that_are_not_paths_are_400() {
    let s = setup().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(seen.clone(), Arc::new(Notify::new())).await;
    for (method, target) in [
        ("OPTIONS", "*"),
        ("CONNECT", "example.com:443"),
        ("CONNECT", "127.0.0.1:22"),
    ] {
        let resp = exchange(
            s.kilnd,
            proxied(&s, up.port(), method, target, "").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 400, "{method} {target}: {resp}");
        assert!(
            resp.contains("is not a path") || resp.contains("CONNECT is not served"),
            "{resp}"
        );
    }
    // CONNECT with a path is no tunnel either (hyper's client would drop
    // the path and connect to the sandbox's port itself).
    let resp = exchange(
        s.kilnd,
        proxied(&s, up.port(), "CONNECT", "/headers", "").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    // Absolute-form names a path: forwarded (to the sandbox, whatever
    // authority it names).
    let resp = exchange(
        s.kilnd,
        proxied(&s, up.port(), "GET", "http://elsewhere.example/headers", "").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_through_the_proxy_as_at_the_api() {
    let s = setup().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let up = upstream(seen.clone(), Arc::new(Notify::new())).await;
    let chunked = "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n";
    for (what, body) in [
        ("bad size", "zz\r\n{}\r\n0\r\n\r\n"),
        ("negative size", "-1\r\n{}\r\n0\r\n\r\n"),
        (
            "overflowing size",
            "fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        ),
        ("missing CRLF", "2\r\n{}XX0\r\n\r\n"),
        ("LF without CR", "2\n{}\n0\n\n"),
    ] {
        let resp = exchange(
            s.kilnd,
            format!("{}{body}", proxied(&s, up.port(), "POST", "/sink", chunked)).as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 400, "proxy, {what}: {resp}");
        assert!(resp.contains("malformed request body"), "{what}: {resp}");
        let api = format!(
            "POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: {}\r\nConnection: close\r\n{chunked}\r\n{body}",
            s.env.key_a
        );
        let resp = exchange(s.kilnd, api.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "API, {what}: {resp}");
    }

    // Cut off: the client stops sending halfway through a chunk and
    // closes its side. Nothing to answer to, but never a 5xx.
    let mut sock = TcpStream::connect(s.kilnd).await.unwrap();
    let head = proxied(&s, up.port(), "POST", "/sink", chunked);
    sock.write_all(format!("{head}10\r\n{{\"a\":").as_bytes())
        .await
        .unwrap();
    sock.shutdown().await.unwrap();
    let resp = read_to_close(&mut sock).await;
    assert!(resp.is_empty() || status_of(&resp) == 400, "{resp}");

    // A well-formed chunked body still goes through.
    let resp = exchange(
        s.kilnd,
        format!(
            "{}2\r\n{{}}\r\n0\r\n\r\n",
            proxied(&s, up.port(), "POST", "/sink", chunked)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("2 bytes"), "{resp}");
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_but_busy_ones_are_not() {
    let s = setup_with(
        "base",
        Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    // An unfinished header block.
    let mut slow = TcpStream::connect(s.kilnd).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_to_close(&mut slow).await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    // Not a byte.
    let mut silent = TcpStream::connect(s.kilnd).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    // Kept alive after an answer, then nothing.
    let mut kept = TcpStream::connect(s.kilnd).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut kept).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // HTTP/2 (prior knowledge): the preface and settings, then nothing.
    let mut h2 = TcpStream::connect(s.kilnd).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let got = read_bytes_to_close(&mut h2).await;
    // kilnd's SETTINGS, then a GOAWAY (type 7) before the close.
    let types = h2_frame_types(&got);
    assert_eq!(types.first(), Some(&4), "{types:?}");
    assert!(types.contains(&7), "closed without a GOAWAY: {types:?}");

    // A response that streams for longer than the idle limit is not cut.
    let release = Arc::new(Notify::new());
    let up = upstream(Arc::new(AtomicUsize::new(0)), release.clone()).await;
    let mut streaming = TcpStream::connect(s.kilnd).await.unwrap();
    streaming
        .write_all(proxied(&s, up.port(), "GET", "/stream", "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut streaming).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release.notify_one();
    let rest = read_to_close(&mut streaming).await;
    assert!(
        format!("{head}{rest}").contains("second"),
        "a busy connection was closed: {head}{rest}"
    );
}

#[tokio::test]
async fn connections_per_client_address_are_capped() {
    let s = setup_with(
        "base",
        Limits {
            max_connections_per_ip: 3,
            ..Limits::default()
        },
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut sock = TcpStream::connect(s.kilnd).await.unwrap();
        sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut sock).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(sock);
    }
    let resp = exchange(s.kilnd, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&resp), 429, "{resp}");
    assert!(resp.contains("at most 3"), "{resp}");
    // One closes: room for one more.
    drop(open.pop());
    let mut ok = None;
    for _ in 0..100 {
        let resp = exchange(
            s.kilnd,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status_of(&resp) == 200 {
            ok = Some(resp);
            break;
        }
        // The server notices the close when it next reads that socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok.is_some(), "a freed slot was not reused");
}

#[tokio::test]
async fn oversize_environments_are_400_naming_the_limit() {
    let env = common::env().await;
    let one = "x".repeat(kiln_core::lifecycle::MAX_ENV_VAR_BYTES);
    let (status, _, body) = env
        .json(
            "POST",
            "/v2/sandboxes",
            &env.key_a,
            Some(json!({"templateID": "base", "envVars": {"BIG": one}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains(&kiln_core::lifecycle::MAX_ENV_VAR_BYTES.to_string()),
        "{msg}"
    );

    let vars: serde_json::Map<_, _> = (0..6)
        .map(|i| (format!("V{i}"), json!("y".repeat(100 * 1024))))
        .collect();
    let (status, _, body) = env
        .json(
            "POST",
            "/v2/sandboxes",
            &env.key_a,
            Some(json!({"templateID": "base", "envVars": vars})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains(&kiln_core::lifecycle::MAX_ENV_TOTAL_BYTES.to_string()),
        "{msg}"
    );
    // Nothing was started for either.
    let (_, _, list) = env.json("GET", "/v2/sandboxes", &env.key_a, None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // Just under both limits is fine.
    let vars: serde_json::Map<_, _> = (0..4)
        .map(|i| (format!("V{i}"), json!("y".repeat(100 * 1024))))
        .collect();
    env.create(&env.key_a, json!({"templateID": "base", "envVars": vars}))
        .await;
}
