//! Starting and stopping kilnd for real (fake runtime, loopback, temp dir).

use std::time::Duration;

use kiln_server::config::Config;
use kiln_server::serve;

fn config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        runtime: kiln_server::config::RuntimeConfig {
            default: kiln_runtime::RuntimeKind::Fake,
            ..Default::default()
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn first_start_creates_a_key_once_and_ctrl_c_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve::prepare(&config(dir.path())).await.unwrap();
    let key = first
        .new_api_key
        .clone()
        .expect("first start creates a key");
    assert!(kiln_core::keys::is_sdk_form(&key));
    let addr = first.addr;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(first, async move {
        let _ = stop_rx.await;
    }));

    // The key works over the socket.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /v2/sandboxes HTTP/1.1\r\nHost: x\r\nX-API-KEY: {key}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    stop_tx.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("kilnd did not stop");
    stopped.unwrap().unwrap();

    // A second start finds the key and prints none.
    let second = serve::prepare(&config(dir.path())).await.unwrap();
    assert!(second.new_api_key.is_none());
}

#[tokio::test]
async fn configured_key_is_accepted_and_no_other_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.api_key = Some("e2b_00112233445566778899aabbccddeeff00112233".into());
    let p = serve::prepare(&cfg).await.unwrap();
    assert!(p.new_api_key.is_none());
    let team = p
        .state
        .core
        .authenticate(Some("e2b_00112233445566778899aabbccddeeff00112233"))
        .await
        .unwrap();
    assert_eq!(team.id, "default");
    assert_eq!(p.state.core.store().list_keys().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(dir.path());
    cfg.listen = taken.local_addr().unwrap();
    let err = serve::prepare(&cfg).await.err().expect("bind must fail");
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}
