//! `POST /init` to a sandbox's agent (E2B envd's shape), after create and
//! resume.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kiln_core::{AgentClient, AgentInit};
use kiln_runtime::SandboxHandle;
use serde_json::json;

pub struct HttpAgentClient {
    client: Client<HttpConnector, Body>,
}

impl Default for HttpAgentClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpAgentClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// The JSON body of `POST /init`.
pub fn init_body(init: &AgentInit) -> serde_json::Value {
    json!({
        "envVars": init.env_vars,
        "accessToken": init.access_token,
        "timestamp": init.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "defaultUser": init.default_user,
        "defaultWorkdir": init.default_workdir,
    })
}

#[async_trait::async_trait]
impl AgentClient for HttpAgentClient {
    async fn init(&self, handle: &SandboxHandle, init: &AgentInit) -> Result<(), String> {
        let url = format!(
            "http://{}/init",
            std::net::SocketAddr::new(handle.ip, handle.agent_port)
        );
        let body = init_body(init).to_string();
        let mut last_error;
        // The runtime returns once the agent listens, but the host's path to
        // a new sandbox (a fresh bridge port, neighbour entries) may lag a
        // little: retry refused or unreachable connections for a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_millis(5);
        loop {
            let req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("X-Access-Token", &init.access_token)
                .body(Body::from(body.clone()))
                .map_err(|e| format!("cannot build the init request: {e}"))?;
            let call = tokio::time::timeout(Duration::from_secs(10), self.client.request(req));
            match call.await {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(()),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let text = resp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                        .unwrap_or_default();
                    // A definite answer: do not retry.
                    if status != StatusCode::SERVICE_UNAVAILABLE {
                        return Err(format!("POST {url} answered {status}: {text}"));
                    }
                    last_error = format!("POST {url} answered {status}: {text}");
                }
                Ok(Err(e)) => last_error = format!("POST {url} failed: {e:?}"),
                Err(_) => return Err(format!("POST {url} timed out")),
            }
            if tokio::time::Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(last_error)
    }
}
