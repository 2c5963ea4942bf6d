//! `POST /init` to a sandbox's agent (E2B envd's shape), after create and
//! resume; and a template's start command (the code interpreter), started
//! through the agent's `process.Process/Start` and waited for until its
//! ready check answers.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kiln_core::templates::StartCommand;
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
            // Closed by kilnd before the agent's 30 s idle close (see the
            // proxy's UPSTREAM_IDLE).
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(crate::proxy::UPSTREAM_IDLE)
                .pool_timer(TokioTimer::new())
                .build(connector),
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

/// A Connect envelope (flags, big-endian length, message).
fn envelope(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Splits complete envelopes off the front of `buf`: (flags, message).
fn take_envelopes(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let flags = buf[0];
        let msg = buf[5..5 + len].to_vec();
        buf.drain(..5 + len);
        out.push((flags, msg));
    }
    out
}

/// The start request's JSON (`process.StartRequest`).
pub fn start_request(start: &StartCommand) -> serde_json::Value {
    let envs: serde_json::Map<String, serde_json::Value> = start
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    json!({
        "process": {
            "cmd": start.argv.first().cloned().unwrap_or_default(),
            "args": start.argv.get(1..).unwrap_or_default(),
            "envs": envs,
            "cwd": start.cwd,
        },
        "tag": "kiln-template-start",
        "stdin": false,
    })
}

/// The last few KiB of a process's output, for an error message.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const MAX: usize = 4096;

    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > Self::MAX {
            self.0.drain(..self.0.len() - Self::MAX);
        }
    }

    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.0).trim().to_owned();
        if t.is_empty() {
            "(no output)".into()
        } else {
            t
        }
    }
}

impl HttpAgentClient {
    async fn is_ready(&self, url: &str) -> bool {
        let Ok(req) = Request::get(url).body(Body::empty()) else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.request(req)).await,
            Ok(Ok(r)) if r.status() == StatusCode::OK
        )
    }
}

#[async_trait::async_trait]
impl AgentClient for HttpAgentClient {
    async fn start(
        &self,
        handle: &SandboxHandle,
        access_token: &str,
        start: &StartCommand,
    ) -> Result<(), String> {
        let what = start.argv.first().cloned().unwrap_or_default();
        let url = format!(
            "http://{}/process.Process/Start",
            std::net::SocketAddr::new(handle.ip, handle.agent_port)
        );
        let ready_url = format!(
            "http://{}{}",
            std::net::SocketAddr::new(handle.ip, start.ready_port),
            start.ready_path
        );
        let body = envelope(start_request(start).to_string().as_bytes());
        let user = base64::engine::general_purpose::STANDARD.encode(format!("{}:", start.user));
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header("X-Access-Token", access_token)
            .header(header::AUTHORIZATION, format!("Basic {user}"))
            .body(Body::from(body))
            .map_err(|e| format!("cannot build the start request: {e}"))?;
        let deadline = tokio::time::Instant::now() + start.ready_timeout;
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("starting {what} through the agent failed: {e}")),
            Err(_) => return Err(format!("starting {what}: the agent did not answer")),
        };
        let status = resp.status();
        let mut stream = resp.into_body();
        if !status.is_success() {
            let text = stream
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!(
                "starting {what}: the agent answered {status}: {text}"
            ));
        }
        let mut buf = Vec::new();
        let mut output = Tail::default();
        let mut stream_open = true;
        let mut pause = Duration::from_millis(5);
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                frame = stream.frame(), if stream_open => {
                    match frame {
                        Some(Ok(f)) => {
                            if let Some(d) = f.data_ref() {
                                buf.extend_from_slice(d);
                            }
                        }
                        Some(Err(_)) | None => stream_open = false,
                    }
                    for (flags, msg) in take_envelopes(&mut buf) {
                        let v: serde_json::Value = serde_json::from_slice(&msg).unwrap_or_default();
                        if flags & 0x02 != 0 {
                            if let Some(e) = v.get("error") {
                                return Err(format!("starting {what} failed: {}", e.get("message").and_then(|m| m.as_str()).unwrap_or("unknown error")));
                            }
                            stream_open = false;
                            continue;
                        }
                        let event = &v["event"];
                        for key in ["stdout", "stderr"] {
                            if let Some(b64) = event["data"][key].as_str() {
                                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                                    output.push(&bytes);
                                }
                            }
                        }
                        if let Some(end) = event.get("end") {
                            let st = end["status"].as_str().unwrap_or("ended");
                            return Err(format!(
                                "{what} exited ({st}) before it was ready; its output:\n{}",
                                output.text()
                            ));
                        }
                    }
                }
                () = tokio::time::sleep_until(next_check) => {
                    if self.is_ready(&ready_url).await {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "{what} was not ready ({ready_url} did not answer 200) within {} s; its output:\n{}",
                            start.ready_timeout.as_secs(),
                            output.text()
                        ));
                    }
                    next_check = tokio::time::Instant::now() + pause;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    async fn warm(
        &self,
        handle: &SandboxHandle,
        access_token: &str,
        req: &kiln_core::templates::WarmRequest,
    ) -> Result<(), String> {
        let url = format!(
            "http://{}{}",
            std::net::SocketAddr::new(handle.ip, req.port),
            req.path
        );
        let r = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Access-Token", access_token)
            .body(Body::from(req.body.clone()))
            .map_err(|e| format!("cannot build the warm-up request: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(120), async {
            let resp = self.client.request(r).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| format!("POST {url} got no answer within 120 s"))?
        .map_err(|e| format!("POST {url} failed: {e}"))?;
        let (status, body) = resp;
        let text = String::from_utf8_lossy(&body);
        // The interpreter streams NDJSON: an error is a line of its own.
        if !status.is_success() || text.lines().any(|l| l.contains("\"type\":\"error\"")) {
            return Err(format!("POST {url} answered {status}: {}", text.trim()));
        }
        Ok(())
    }

    async fn init(&self, handle: &SandboxHandle, init: &AgentInit) -> Result<(), String> {
        let url = format!(
            "http://{}/init",
            std::net::SocketAddr::new(handle.ip, handle.agent_port)
        );
        let body = init_body(init).to_string();
        let mut last_error;
        // The runtime returns once the agent listens, but the host's path to
        // a new sandbox (a fresh bridge port, neighbour entries) may lag,
        // more so on a loaded host: retry refused, unreachable and
        // unanswered connections for a while. `/init` only sets values, so
        // sending it twice is harmless.
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(15);
        let mut pause = Duration::from_millis(5);
        let mut attempts = 0u32;
        loop {
            let req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    "X-Access-Token",
                    init.previous_token.as_deref().unwrap_or(&init.access_token),
                )
                .body(Body::from(body.clone()))
                .map_err(|e| format!("cannot build the init request: {e}"))?;
            attempts += 1;
            let call = tokio::time::timeout(Duration::from_secs(5), self.client.request(req));
            match call.await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    if attempts > 1 {
                        tracing::warn!(
                            sandbox = %handle.id, attempts,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "the agent answered /init only after retries"
                        );
                    }
                    return Ok(());
                }
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
                Err(_) => last_error = format!("POST {url} got no answer within 5 s"),
            }
            tracing::debug!(sandbox = %handle.id, attempts, error = %last_error, "POST /init failed; retrying");
            if tokio::time::Instant::now() + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Err(format!(
            "{last_error} (after {attempts} attempts in {} ms)",
            started.elapsed().as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_in_pieces() {
        let mut buf = envelope(b"{\"a\":1}");
        buf.extend(envelope(b"{}"));
        let mut partial = buf.split_off(7);
        assert!(take_envelopes(&mut buf).is_empty());
        buf.append(&mut partial);
        let got = take_envelopes(&mut buf);
        assert_eq!(got, vec![(0, b"{\"a\":1}".to_vec()), (0, b"{}".to_vec())]);
        assert!(buf.is_empty());
    }

    #[test]
    fn start_request_splits_argv() {
        let v = start_request(&StartCommand {
            argv: vec!["/bin/x".into(), "--a".into(), "1".into()],
            user: "user".into(),
            cwd: "/home/user".into(),
            env: vec![("K".into(), "V".into())],
            ready_port: 1,
            ready_path: "/health".into(),
            ready_timeout: Duration::from_secs(1),
            warm: None,
        });
        assert_eq!(v["process"]["cmd"], "/bin/x");
        assert_eq!(v["process"]["args"], json!(["--a", "1"]));
        assert_eq!(v["process"]["envs"]["K"], "V");
        assert_eq!(v["stdin"], false);
    }
}
