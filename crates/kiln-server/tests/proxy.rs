//! The sandbox proxy over real loopback sockets: kilnd's app in front of a
//! stand-in for a server inside a sandbox (the fake runtime's sandboxes live
//! at 127.0.0.1).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Version};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use common::env;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// A server "inside the sandbox".
async fn upstream(release: Arc<Notify>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/hello",
            get(|req: Request| async move {
                format!("hi {:?} {}", req.version(), req.uri().query().unwrap_or(""))
            }),
        )
        .route(
            "/headers",
            get(|req: Request| async move {
                let mut names: Vec<String> = req
                    .headers()
                    .keys()
                    .map(|k| k.as_str().to_owned())
                    .collect();
                names.sort();
                names.join(",")
            }),
        )
        .route(
            "/echo",
            post(|req: Request| async move { Body::new(req.into_body()) }),
        )
        .route(
            "/stream",
            get(move || {
                let release = release.clone();
                async move {
                    let stream = async_stream(release);
                    Body::from_stream(stream)
                }
            }),
        );
    serve(app).await
}

/// Yields "first", then waits until the test saw it, then "second".
fn async_stream(
    release: Arc<Notify>,
) -> tokio_stream::wrappers::ReceiverStream<Result<axum::body::Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(axum::body::Bytes::from_static(b"first"))).await;
        release.notified().await;
        let _ = tx.send(Ok(axum::body::Bytes::from_static(b"second"))).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A raw TCP server that accepts one upgrade and echoes what follows.
async fn upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.contains("upgrade: echo"), "{head}");
        sock.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            sock.write_all(&buf[..n]).await.unwrap();
        }
    });
    addr
}

/// Sends an `Upgrade: echo` request through kilnd to `port` of the sandbox
/// and reads the 101 answer; returns the spliced connection.
async fn open_upgrade(s: &Setup, port: u16) -> TcpStream {
    let mut sock = TcpStream::connect(s.kilnd).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {}\r\nE2b-Sandbox-Port: {port}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        s.sandbox,
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    sock
}

struct Setup {
    env: common::Env,
    kilnd: SocketAddr,
    sandbox: String,
    envd_token: String,
}

impl Setup {
    /// Kills the sandbox through the control API.
    async fn kill(&self) {
        let path = format!("/sandboxes/{}", self.sandbox);
        let (status, _, _) = self.env.json("DELETE", &path, &self.env.key_a, None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

async fn setup(create_body: serde_json::Value) -> Setup {
    let env = env().await;
    let created = env.create(&env.key_a, create_body).await;
    // kilnd's own listener (HTTP/1.1 and h2c, its limits), as kilnd runs.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kilnd = listener.local_addr().unwrap();
    tokio::spawn(kiln_server::listener::serve(
        listener,
        kiln_server::app(env.state.clone()),
        kiln_server::listener::Limits::default(),
        std::future::pending(),
    ));
    Setup {
        sandbox: created["sandboxID"].as_str().unwrap().to_owned(),
        envd_token: created["envdAccessToken"].as_str().unwrap().to_owned(),
        env,
        kilnd,
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(req: axum::http::Request<Body>) -> (StatusCode, String) {
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn proxies_by_headers_and_by_host() {
    let s = setup(json!({"templateID": "base"})).await;
    let up = upstream(Arc::new(Notify::new())).await;
    let req = axum::http::Request::get(format!("http://{}/hello?x=1", s.kilnd))
        .header("E2b-Sandbox-Id", &s.sandbox)
        .header("E2b-Sandbox-Port", up.port().to_string())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(req).await, (StatusCode::OK, "hi HTTP/1.1 x=1".into()));

    let req = axum::http::Request::get(format!("http://{}/hello", s.kilnd))
        .header(
            "host",
            format!("{}-{}.localhost:3000", up.port(), s.sandbox),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(req).await, (StatusCode::OK, "hi HTTP/1.1 ".into()));

    // Routing headers, the traffic token and the API key stay outside.
    let req = axum::http::Request::get(format!("http://{}/headers", s.kilnd))
        .header("E2b-Sandbox-Id", &s.sandbox)
        .header("E2b-Sandbox-Port", up.port().to_string())
        .header("X-API-KEY", &s.env.key_a)
        .header("e2b-traffic-access-token", "t")
        .header("X-Access-Token", "kept")
        .body(Body::empty())
        .unwrap();
    let (status, names) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(names.contains("x-access-token"), "{names}");
    for gone in [
        "e2b-sandbox-id",
        "e2b-sandbox-port",
        "x-api-key",
        "e2b-traffic-access-token",
    ] {
        assert!(
            !names.split(',').any(|n| n == gone),
            "{gone} forwarded: {names}"
        );
    }

    // Without sandbox headers the same listener is the control API.
    let req = axum::http::Request::get(format!("http://{}/v2/sandboxes", s.kilnd))
        .header("x-api-key", &s.env.key_a)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&s.sandbox));
    let _ = &s.envd_token;
}

#[tokio::test]
async fn streams_bodies_both_ways_without_buffering() {
    let s = setup(json!({"templateID": "base"})).await;
    let release = Arc::new(Notify::new());
    let up = upstream(release.clone()).await;

    let big = vec![7u8; 8 * 1024 * 1024];
    let req = axum::http::Request::post(format!("http://{}/echo", s.kilnd))
        .header("E2b-Sandbox-Id", &s.sandbox)
        .header("E2b-Sandbox-Port", up.port().to_string())
        .body(Body::from(big.clone()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed.as_ref() == big.as_slice(), "echo differs");

    // The upstream sends "second" only after we received "first": a proxy
    // that buffered the whole body would never deliver anything.
    let req = axum::http::Request::get(format!("http://{}/stream", s.kilnd))
        .header("E2b-Sandbox-Id", &s.sandbox)
        .header("E2b-Sandbox-Port", up.port().to_string())
        .body(Body::empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk did not arrive: the proxy buffers")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap().as_ref(), b"first");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest.as_ref(), b"second");
}

#[tokio::test]
async fn h2c_goes_on_as_h2c_for_grpc_and_as_http1_otherwise() {
    let s = setup(json!({"templateID": "base"})).await;
    let up = upstream(Arc::new(Notify::new())).await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    for (content_type, expected) in [
        ("application/grpc", &b"hi HTTP/2.0 "[..]),
        ("text/plain", &b"hi HTTP/1.1 "[..]),
    ] {
        let req = axum::http::Request::get(format!("http://{}/hello", s.kilnd))
            .version(Version::HTTP_2)
            .header("E2b-Sandbox-Id", &s.sandbox)
            .header("E2b-Sandbox-Port", up.port().to_string())
            .header("content-type", content_type)
            .body(Body::empty())
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2, "kilnd itself speaks h2c");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), expected, "{content_type}");
    }
}

#[tokio::test]
async fn upgrades_are_spliced() {
    let s = setup(json!({"templateID": "base"})).await;
    let up = upgrade_echo().await;
    let mut sock = open_upgrade(&s, up.port()).await;
    for msg in [&b"ping"[..], b"pong and more"] {
        sock.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

/// A killed sandbox's network goes with it, so nothing ever closes the
/// connections into it. The fake runtime's "sandbox" servers stay up after a
/// kill, which is exactly that: the proxy itself must end the response
/// streams, the requests still waiting and the upgraded connections.
#[tokio::test]
async fn a_killed_sandbox_ends_its_open_streams() {
    let s = setup(json!({"templateID": "base"})).await;
    let up = upstream(Arc::new(Notify::new())).await; // never released
    let req = |path: &str, port: u16| {
        axum::http::Request::get(format!("http://{}{path}", s.kilnd))
            .header("E2b-Sandbox-Id", &s.sandbox)
            .header("E2b-Sandbox-Port", port.to_string())
            .body(Body::empty())
            .unwrap()
    };
    // A response body halfway through.
    let resp = client().request(req("/stream", up.port())).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap().as_ref(), b"first");
    // A request whose answer never comes.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let conn = silent.accept().await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(conn);
    });
    let waiting = tokio::spawn(send(req("/", silent_port)));
    // An upgraded connection.
    let echo = upgrade_echo().await;
    let mut sock = open_upgrade(&s, echo.port()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    s.kill().await;

    let limit = Duration::from_secs(5);
    let cut = tokio::time::timeout(limit, body.frame())
        .await
        .expect("the response stream outlived its sandbox");
    assert!(
        !matches!(cut, Some(Ok(_))),
        "the stream went on after the kill"
    );
    let (status, text) = tokio::time::timeout(limit, waiting)
        .await
        .expect("the waiting request outlived its sandbox")
        .unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(text.contains("was not found"), "{text}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(limit, sock.read(&mut buf))
        .await
        .expect("the upgraded connection outlived its sandbox")
        .unwrap_or(0);
    assert_eq!(n, 0, "the upgraded connection still carries data");
    held.abort();
}

#[tokio::test]
async fn unknown_killed_and_closed_answer_what_the_sdk_recognises() {
    let s = setup(json!({"templateID": "base"})).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let get = |id: &str, port: u16| {
        axum::http::Request::get(format!("http://{}/health", s.kilnd))
            .header("E2b-Sandbox-Id", id)
            .header("E2b-Sandbox-Port", port.to_string())
            .body(Body::empty())
            .unwrap()
    };
    let (status, body) = send(get(&s.sandbox, closed.port())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("port is not open"), "{body}");

    let (status, body) = send(get("nosuchsandbox", 49983)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("was not found"), "{body}");

    s.kill().await;
    let (status, body) = send(get(&s.sandbox, 49983)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], 502);
    assert!(
        v["message"].as_str().unwrap().contains("was not found"),
        "{body}"
    );

    let req = axum::http::Request::get(format!("http://{}/x", s.kilnd))
        .header("E2b-Sandbox-Id", "abc")
        .header("E2b-Sandbox-Port", "nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn private_sandboxes_need_the_traffic_token() {
    let s = setup(json!({"templateID": "base", "network": {"allowPublicTraffic": false}})).await;
    let (_, _, created) = s
        .env
        .json(
            "GET",
            &format!("/sandboxes/{}", s.sandbox),
            &s.env.key_a,
            None,
        )
        .await;
    assert_eq!(created["sandboxID"], s.sandbox.as_str());
    let token = {
        use kiln_core::store::Store;
        s.env
            .store
            .get_sandbox(&s.sandbox)
            .await
            .unwrap()
            .unwrap()
            .traffic_access_token
            .expect("a private sandbox has a traffic token")
    };
    let up = upstream(Arc::new(Notify::new())).await;
    let req = |tok: Option<&str>| {
        let mut b = axum::http::Request::get(format!("http://{}/hello", s.kilnd))
            .header("E2b-Sandbox-Id", &s.sandbox)
            .header("E2b-Sandbox-Port", up.port().to_string());
        if let Some(t) = tok {
            b = b.header("e2b-traffic-access-token", t);
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(send(req(None)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(req(Some("wrong"))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(req(Some(&token))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn signed_file_urls_find_their_sandbox() {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let s = setup(json!({"templateID": "base"})).await;
    let sign = |token: &str| {
        let raw = format!("/home/user/f:read::{token}:4102444800");
        let d =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes()));
        format!("v1_{d}")
    };
    let get = |sig: String| {
        axum::http::Request::get(format!(
            "http://{}/files?path=%2Fhome%2Fuser%2Ff&signature={}&signature_expiration=4102444800",
            s.kilnd,
            sig.replace('+', "%2B").replace('/', "%2F")
        ))
        .body(Body::empty())
        .unwrap()
    };
    let (status, body) = send(get(sign("not-the-token"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("matches no running sandbox"), "{body}");
    // The right token routes to the sandbox's agent port (whatever answers
    // there, it is not kilnd's refusal).
    let (status, body) = send(get(sign(&s.envd_token))).await;
    assert!(
        !body.contains("matches no running sandbox") && !body.contains("no such endpoint"),
        "{status} {body}"
    );
}
