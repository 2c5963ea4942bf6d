//! The client against canned HTTP answers on loopback (no kilnd, no root):
//! every failure a user can meet becomes the error that says what to do.

use kiln_client::{Client, ClientConfig, Error, ProcessEvent, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `responses` in order, one per connection, and returns the base URL.
async fn serve(responses: Vec<Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        for resp in responses {
            let (mut s, _) = l.accept().await.unwrap();
            // Read the request head (and whatever body came with it).
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(&resp).await.unwrap();
            s.shutdown().await.ok();
        }
    });
    url
}

fn http(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn client(url: &str) -> Client {
    Client::new(ClientConfig::new(url, Some("e2b_00".into())).unwrap()).unwrap()
}

fn detail(id: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"templateID":"base","sandboxID":"{id}","clientID":"kiln","startedAt":"2026-01-01T00:00:00Z",
        "endAt":"2026-01-01T00:05:00Z","state":"running","cpuCount":2,"memoryMB":1024,"diskSizeMB":4096,
        "envdVersion":"0.6.4","metadata":{{}},"envdAccessToken":"tok"}}"#
    );
    http("200 OK", "application/json", body.as_bytes())
}

fn frame(flags: u8, json: &str) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(json.len() as u32).to_be_bytes());
    v.extend_from_slice(json.as_bytes());
    v
}

#[tokio::test]
async fn server_down_says_how_to_start_it() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let e = client(&url).list(Default::default()).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("kiln up"), "{e}");
}

#[tokio::test]
async fn no_key_and_rejected_key() {
    let c = Client::new(ClientConfig::new("http://127.0.0.1:9", None).unwrap()).unwrap();
    assert!(matches!(c.get("abc").await, Err(Error::NoApiKey)));
    let url = serve(vec![http(
        "401 Unauthorized",
        "application/json",
        br#"{"code":401,"message":"Invalid API key"}"#,
    )])
    .await;
    let e = client(&url).get("abc").await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("kiln keys create"), "{e}");
}

#[tokio::test]
async fn not_found_and_bad_ids() {
    let url = serve(vec![http(
        "404 Not Found",
        "application/json",
        br#"{"code":404,"message":"sandbox abc not found"}"#,
    )])
    .await;
    let e = client(&url).kill("abc").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), "sandbox abc was not found");
    let e = client(&url).get("../etc").await.unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
}

#[tokio::test]
async fn a_dead_sandbox_is_unreachable() {
    let url = serve(vec![
        detail("abc"),
        http(
            "502 Bad Gateway",
            "application/json",
            br#"{"code":502,"message":"The sandbox abc was not found"}"#,
        ),
    ])
    .await;
    let c = client(&url);
    let sbx = c.sandbox("abc").await.unwrap();
    let e = sbx.stat("/").await.unwrap_err();
    assert!(matches!(e, Error::SandboxUnreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn a_process_stream_is_read_in_order_and_its_error_surfaces() {
    let mut body = Vec::new();
    body.extend(frame(0, r#"{"event":{"start":{"pid":7}}}"#));
    body.extend(frame(0, r#"{"event":{"data":{"stdout":"aGkK"}}}"#));
    body.extend(frame(0, r#"{"event":{"keepalive":{}}}"#));
    body.extend(frame(0, r#"{"event":{"data":{"stderr":"ZXJyCg=="}}}"#));
    body.extend(frame(
        0,
        r#"{"event":{"end":{"exitCode":-1,"exited":false,"status":"signal: killed"}}}"#,
    ));
    body.extend(frame(2, "{}"));
    let mut broken = Vec::new();
    broken.extend(frame(0, r#"{"event":{"start":{"pid":8}}}"#));
    broken.extend(frame(
        2,
        r#"{"error":{"code":"deadline_exceeded","message":"timed out"}}"#,
    ));
    let url = serve(vec![
        detail("abc"),
        http("200 OK", "application/connect+json", &body),
        http("200 OK", "application/connect+json", &broken),
    ])
    .await;
    let c = client(&url);
    let sbx = c.sandbox("abc").await.unwrap();
    let opts = StartOptions {
        command: "x".into(),
        ..Default::default()
    };
    let mut s = sbx.start(&opts).await.unwrap();
    assert_eq!(s.started().await.unwrap(), 7);
    assert_eq!(
        s.next().await.unwrap(),
        Some(ProcessEvent::Stdout(b"hi\n".to_vec()))
    );
    assert_eq!(
        s.next().await.unwrap(),
        Some(ProcessEvent::Stderr(b"err\n".to_vec()))
    );
    match s.next().await.unwrap() {
        Some(ProcessEvent::Exited(x)) => assert_eq!(x.code, 137),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.next().await.unwrap(), None);

    let mut s = sbx.start(&opts).await.unwrap();
    assert_eq!(s.started().await.unwrap(), 8);
    let e = s.next().await.unwrap_err();
    assert!(
        matches!(&e, Error::Agent { code, .. } if code == "deadline_exceeded"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_truncated_stream_is_an_error_not_a_hang() {
    let mut body = frame(0, r#"{"event":{"start":{"pid":7}}}"#);
    body.extend_from_slice(&[0, 0, 0, 0, 50, b'{']);
    let url = serve(vec![
        detail("abc"),
        http("200 OK", "application/connect+json", &body),
    ])
    .await;
    let c = client(&url);
    let sbx = c.sandbox("abc").await.unwrap();
    let mut s = sbx.start(&StartOptions::default()).await.unwrap();
    s.started().await.unwrap();
    assert!(matches!(s.next().await, Err(Error::Protocol { .. })));
}
