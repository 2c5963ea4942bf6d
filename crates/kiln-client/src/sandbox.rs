//! A handle on one sandbox: requests to its ports through kilnd's proxy.

use base64::Engine;
use kiln_api::agent::{ConnectErrorBody, AGENT_PORT};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connect::agent_error;
use crate::error::{Error, Result};
use crate::rest::Client;

/// One sandbox, reached through kilnd's proxy with the `E2b-Sandbox-Id` and
/// `E2b-Sandbox-Port` headers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SandboxConn {
    pub(crate) client: Client,
    pub id: String,
    /// The agent's access token (`X-Access-Token`).
    pub(crate) access_token: Option<String>,
    /// Token for ports other than the agent's when traffic is not public.
    pub(crate) traffic_token: Option<String>,
    /// Domain under which `<port>-<id>.<domain>` reaches a port.
    pub domain: Option<String>,
    /// The acting user (`Authorization: Basic base64("user:")`); `None`: the
    /// sandbox's default user.
    pub user: Option<String>,
}

impl SandboxConn {
    pub(crate) fn new(
        client: Client,
        id: String,
        access_token: Option<String>,
        domain: Option<String>,
    ) -> Self {
        Self {
            client,
            id,
            access_token,
            traffic_token: None,
            domain,
            user: None,
        }
    }

    /// Acts as `user` (e.g. `root`) in later calls.
    pub fn with_user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A URL reaching `port` in the sandbox by its Host name
    /// (`http://<port>-<id>.<domain>`), when kilnd reported a domain.
    pub fn host_url(&self, port: u16) -> Option<String> {
        let domain = self.domain.as_deref()?;
        Some(format!("http://{port}-{}.{domain}", self.id))
    }

    /// A request to `path` on `port` inside the sandbox.
    pub fn port_request(&self, method: Method, port: u16, path: &str) -> RequestBuilder {
        let mut rb = self
            .client
            .http
            .request(method, self.client.url(path))
            .header("E2b-Sandbox-Id", &self.id)
            .header("E2b-Sandbox-Port", port.to_string());
        if let Some(t) = &self.access_token {
            rb = rb.header("X-Access-Token", t);
        }
        if port != AGENT_PORT {
            if let Some(t) = &self.traffic_token {
                rb = rb.header("e2b-traffic-access-token", t);
            }
        }
        if let Some(u) = &self.user {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{u}:"));
            rb = rb.header("Authorization", format!("Basic {basic}"));
        }
        rb
    }

    pub(crate) fn agent(&self, method: Method, path: &str) -> RequestBuilder {
        self.port_request(method, AGENT_PORT, path)
    }

    /// Sends a request to a sandbox port; 502 from the proxy (sandbox gone or
    /// port closed) becomes [`Error::SandboxUnreachable`].
    pub(crate) async fn send(&self, rb: RequestBuilder, port: u16, path: &str) -> Result<Response> {
        let url = self.client.url(path);
        let resp = self.client.send(rb, &url).await?;
        if resp.status() == StatusCode::BAD_GATEWAY {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<kiln_api::rest::Error>(&text)
                .map(|e| e.message)
                .unwrap_or(text);
            return Err(Error::SandboxUnreachable {
                sandbox_id: self.id.clone(),
                port,
                message,
            });
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Agent {
                code: "unauthenticated".into(),
                message: text,
            });
        }
        Ok(resp)
    }

    /// A unary Connect call to the agent (`/<service>/<method>`).
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp> {
        let path = format!("/{service}/{method}");
        let rb = self
            .agent(Method::POST, &path)
            .header("Content-Type", "application/json")
            .header("Connect-Protocol-Version", "1")
            .json(req);
        let resp = self.send(rb, AGENT_PORT, &path).await?;
        let status = resp.status();
        let url = self.client.url(&path);
        let bytes = resp.bytes().await.map_err(|e| Error::Http {
            url: url.clone(),
            source: e,
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ConnectErrorBody>(&bytes) {
                Ok(e) => agent_error(e),
                Err(_) => Error::Agent {
                    code: status.as_u16().to_string(),
                    message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            url,
            message: format!("invalid JSON ({e})"),
        })
    }
}
