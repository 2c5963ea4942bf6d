//! kilnd's control API: sandboxes and templates.

use kiln_api::rest::{
    ConnectSandbox, NewSandbox, Sandbox, SandboxDetail, SandboxState, SandboxTimeoutRequest,
    Template,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::sandbox::SandboxConn;

/// A connection to one kilnd. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) config: ClientConfig,
}

/// Which sandboxes [`Client::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListState {
    #[default]
    All,
    Running,
    Paused,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http {
                url: config.api_url.clone(),
                source: e,
            })?;
        Ok(Self { http, config })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.config.api_url, path)
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder> {
        let key = self.config.api_key.as_deref().ok_or(Error::NoApiKey)?;
        Ok(self
            .http
            .request(method, self.url(path))
            .header("X-API-KEY", key))
    }

    pub(crate) async fn send(&self, rb: RequestBuilder, url: &str) -> Result<Response> {
        rb.send().await.map_err(|e| {
            if e.is_connect() {
                Error::Unreachable {
                    url: self.config.api_url.clone(),
                    source: e,
                }
            } else {
                Error::Http {
                    url: url.to_string(),
                    source: e,
                }
            }
        })
    }

    /// Sends a control-API request and maps non-2xx answers to errors; `what`
    /// names the object for 404s ("sandbox abc").
    async fn call(&self, rb: RequestBuilder, path: &str, what: &str) -> Result<Response> {
        let url = self.url(path);
        let resp = self.send(rb, &url).await?;
        check(resp, &url, what).await
    }

    async fn json<T: DeserializeOwned>(resp: Response, url: &str) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| Error::Http {
            url: url.to_string(),
            source: e,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            url: url.to_string(),
            message: format!("invalid JSON ({e})"),
        })
    }

    /// `GET /health`: whether kilnd answers (no key needed).
    pub async fn health(&self) -> Result<()> {
        let url = self.url("/health");
        let resp = self.send(self.http.get(&url), &url).await?;
        check(resp, &url, "kilnd's health endpoint")
            .await
            .map(|_| ())
    }

    /// `POST /sandboxes`.
    pub async fn create(&self, req: &NewSandbox) -> Result<Sandbox> {
        let path = "/sandboxes";
        let rb = self.request(Method::POST, path)?.json(req);
        let what = format!("template {:?}", req.template_id);
        let resp = self.call(rb, path, &what).await?;
        Self::json(resp, &self.url(path)).await
    }

    /// `GET /v2/sandboxes`, every page.
    pub async fn list(&self, state: ListState) -> Result<Vec<SandboxDetail>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", "100".into())];
            match state {
                ListState::All => query.push(("state", "running,paused".into())),
                ListState::Running => query.push(("state", "running".into())),
                ListState::Paused => query.push(("state", "paused".into())),
            }
            if let Some(t) = &next {
                query.push(("nextToken", t.clone()));
            }
            let path = "/v2/sandboxes";
            let rb = self.request(Method::GET, path)?.query(&query);
            let resp = self.call(rb, path, "the sandbox list").await?;
            next = resp
                .headers()
                .get("x-next-token")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let page: Vec<SandboxDetail> = Self::json(resp, &self.url(path)).await?;
            let empty = page.is_empty();
            out.extend(page);
            if next.is_none() || empty {
                return Ok(out);
            }
        }
    }

    /// `GET /sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<SandboxDetail> {
        let path = format!("/sandboxes/{}", seg(id)?);
        let rb = self.request(Method::GET, &path)?;
        let resp = self.call(rb, &path, &format!("sandbox {id}")).await?;
        Self::json(resp, &self.url(&path)).await
    }

    /// `DELETE /sandboxes/{id}`.
    pub async fn kill(&self, id: &str) -> Result<()> {
        let path = format!("/sandboxes/{}", seg(id)?);
        let rb = self.request(Method::DELETE, &path)?;
        self.call(rb, &path, &format!("sandbox {id}")).await?;
        Ok(())
    }

    /// `POST /sandboxes/{id}/timeout`: the sandbox ends `secs` from now.
    pub async fn set_timeout(&self, id: &str, secs: i64) -> Result<()> {
        let path = format!("/sandboxes/{}/timeout", seg(id)?);
        let rb = self
            .request(Method::POST, &path)?
            .json(&SandboxTimeoutRequest { timeout: secs });
        self.call(rb, &path, &format!("sandbox {id}")).await?;
        Ok(())
    }

    /// `GET /templates`.
    pub async fn templates(&self) -> Result<Vec<Template>> {
        let path = "/templates";
        let rb = self.request(Method::GET, path)?;
        let resp = self.call(rb, path, "the template list").await?;
        Self::json(resp, &self.url(path)).await
    }

    /// `POST /sandboxes/{id}/pause`: freezes the sandbox; its timeout stops.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let path = format!("/sandboxes/{}/pause", seg(id)?);
        let rb = self.request(Method::POST, &path)?;
        self.call(rb, &path, &format!("sandbox {id}")).await?;
        Ok(())
    }

    /// `POST /sandboxes/{id}/connect`: resumes a paused sandbox (and keeps a
    /// running one at least `timeout` seconds more); returns it and whether
    /// it was resumed.
    pub async fn connect(&self, id: &str, timeout: Option<i64>) -> Result<(Sandbox, bool)> {
        let path = format!("/sandboxes/{}/connect", seg(id)?);
        let rb = self.request(Method::POST, &path)?.json(&ConnectSandbox {
            timeout,
            ..ConnectSandbox::default()
        });
        let resp = self.call(rb, &path, &format!("sandbox {id}")).await?;
        let resumed = resp.status() == StatusCode::CREATED;
        Ok((Self::json(resp, &self.url(&path)).await?, resumed))
    }

    /// A handle on a sandbox's agent (fetches its access token); a paused
    /// sandbox is resumed first, as the e2b SDKs' `connect` does.
    pub async fn sandbox(&self, id: &str) -> Result<SandboxConn> {
        let d = self.get(id).await?;
        if d.state == SandboxState::Paused {
            let (s, _) = self.connect(id, None).await?;
            return Ok(self.sandbox_from(&s));
        }
        Ok(SandboxConn::new(
            self.clone(),
            d.sandbox_id,
            d.envd_access_token,
            d.domain,
        ))
    }

    /// A handle on a sandbox just created.
    pub fn sandbox_from(&self, s: &Sandbox) -> SandboxConn {
        let mut c = SandboxConn::new(
            self.clone(),
            s.sandbox_id.clone(),
            Some(s.envd_access_token.clone()),
            s.domain.clone(),
        );
        c.traffic_token = s.traffic_access_token.clone();
        c
    }
}

/// A sandbox id as one path segment (ids are `[a-z0-9]`; anything else is
/// refused here rather than sent).
fn seg(id: &str) -> Result<&str> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::Invalid(format!(
            "{id:?} is not a sandbox id (see `kiln sandbox list`)"
        )));
    }
    Ok(id)
}

/// Maps a non-2xx answer of kilnd to an error.
pub(crate) async fn check(resp: Response, url: &str, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<kiln_api::rest::Error>(&text)
        .map(|e| e.message)
        .unwrap_or_else(|_| {
            let t = text.trim();
            if t.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                t.chars().take(500).collect()
            }
        });
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized { message },
        StatusCode::NOT_FOUND => Error::NotFound {
            what: what.to_string(),
            message,
        },
        _ => {
            let _ = url;
            Error::Api {
                status: status.as_u16(),
                message,
            }
        }
    })
}
