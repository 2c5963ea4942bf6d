//! `POST /init` to an agent stand-in on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use kiln_core::{AgentClient, AgentInit};
use kiln_runtime::SandboxHandle;
use kiln_server::agent_client::HttpAgentClient;

fn init() -> AgentInit {
    AgentInit {
        env_vars: BTreeMap::from([("A".into(), "1".into())]),
        access_token: "tok".into(),
        previous_token: None,
        timestamp: Utc::now(),
        default_user: "user".into(),
        default_workdir: "/home/user".into(),
    }
}

fn handle(port: u16) -> SandboxHandle {
    SandboxHandle {
        id: "abc".into(),
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        agent_port: port,
        pid: None,
    }
}

type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

fn agent(seen: Seen, status: StatusCode) -> Router {
    Router::new().route(
        "/init",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let token = headers
                    .get("x-access-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.lock()
                    .unwrap()
                    .push((token, serde_json::from_str(&body).unwrap()));
                status
            }
        }),
    )
}

#[tokio::test]
async fn sends_envd_init_and_retries_until_the_agent_listens() {
    // Reserve a port, start the agent on it only after a while.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let seen: Seen = Arc::default();
    let app = agent(seen.clone(), StatusCode::NO_CONTENT);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(l, app).await.unwrap();
    });
    HttpAgentClient::new()
        .init(&handle(port), &init())
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (token, body) = &seen[0];
    assert_eq!(token, "tok");
    assert_eq!(body["accessToken"], "tok");
    assert_eq!(body["envVars"]["A"], "1");
    assert_eq!(body["defaultUser"], "user");
    assert_eq!(body["defaultWorkdir"], "/home/user");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn a_refusal_is_an_error_at_once() {
    let seen: Seen = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let app = agent(seen.clone(), StatusCode::UNAUTHORIZED);
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let err = HttpAgentClient::new()
        .init(&handle(port), &init())
        .await
        .unwrap_err();
    assert!(err.contains("401"), "{err}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no retry after a definite answer"
    );
}
