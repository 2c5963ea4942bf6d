//! A small HTTP/1.1 client for kilnd: the control API, and the agent's
//! Connect and `/files` API through kilnd's proxy (the `E2b-Sandbox-Id` and
//! `E2b-Sandbox-Port` headers), as the E2B SDKs reach them.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The agent's port inside every sandbox.
pub const AGENT_PORT: u16 = 49983;
/// The code interpreter's port in a code-interpreter sandbox.
pub const INTERPRETER_PORT: u16 = 49999;

/// Every request gives up after this long: a hung kilnd fails the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A sandbox the harness created: what it needs to reach its agent.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub token: String,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        // Idle connections are dropped well before kilnd closes them (60 s):
        // one reused as kilnd closed it failed a request ("connection
        // closed before message completed") after a long pause.
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(std::time::Duration::from_secs(20))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(conn);
        Self {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        let what = format!("{} {}", req.method(), req.uri());
        let fut = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .with_context(|| format!("{what}: no answer in {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{what} failed"))
    }

    fn control(&self, method: Method, path: &str, body: Option<Value>) -> Request<Full<Bytes>> {
        let b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("x-api-key", &self.key);
        match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string()))),
            None => b.body(Full::new(Bytes::new())),
        }
        .expect("a valid request")
    }

    fn proxied(
        &self,
        sbx: &Sandbox,
        port: u16,
        method: Method,
        path: &str,
    ) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("e2b-sandbox-id", &sbx.id)
            .header("e2b-sandbox-port", port.to_string())
            .header("x-access-token", &sbx.token)
    }

    /// `GET /health` answers 200.
    pub async fn healthy(&self) -> bool {
        let req = Request::get(format!("{}/health", self.base))
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.http.request(req)).await,
            Ok(Ok(r)) if r.status() == StatusCode::OK
        )
    }

    /// `POST /sandboxes` (201).
    pub async fn create(&self, template: &str) -> Result<Sandbox> {
        self.create_on(template, None).await
    }

    /// `POST /sandboxes` on a runtime (Kiln's `runtime` field); an error
    /// says why the server refused (e.g. the runtime is not available).
    pub async fn create_on(&self, template: &str, runtime: Option<&str>) -> Result<Sandbox> {
        let mut body = json!({"templateID": template, "timeout": 600});
        if let Some(r) = runtime {
            body["runtime"] = json!(r);
        }
        let (status, body) = self
            .send(self.control(Method::POST, "/sandboxes", Some(body)))
            .await?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /sandboxes answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body).context("POST /sandboxes: not JSON")?;
        Ok(Sandbox {
            id: v["sandboxID"].as_str().unwrap_or_default().to_string(),
            token: v["envdAccessToken"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// A control call that must answer `want`; its JSON body (or null).
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> Result<Value> {
        let what = format!("{method} {path}");
        let (status, body) = self.send(self.control(method, path, body)).await?;
        if status != want {
            bail!(
                "{what} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `POST /sandboxes/{id}/pause` with or without memory.
    pub async fn pause(&self, id: &str, memory: bool) -> Result<()> {
        let path = format!("/sandboxes/{id}/pause");
        self.expect(
            Method::POST,
            &path,
            Some(json!({"memory": memory})),
            StatusCode::NO_CONTENT,
        )
        .await
        .map(|_| ())
    }

    /// `POST /v2/sandboxes/{id}/connect` of a paused sandbox (201: resumed).
    pub async fn resume(&self, id: &str) -> Result<()> {
        let path = format!("/v2/sandboxes/{id}/connect");
        self.expect(
            Method::POST,
            &path,
            Some(json!({"timeout": 600})),
            StatusCode::CREATED,
        )
        .await
        .map(|_| ())
    }

    /// `POST /sandboxes/{id}/snapshots`: (snapshot id, bytes on disk).
    pub async fn snapshot(&self, id: &str, memory: Option<bool>) -> Result<(String, u64)> {
        let path = format!("/sandboxes/{id}/snapshots");
        let body = match memory {
            Some(m) => json!({"memory": m}),
            None => json!({}),
        };
        let v = self
            .expect(Method::POST, &path, Some(body), StatusCode::CREATED)
            .await?;
        Ok((
            v["snapshotID"].as_str().unwrap_or_default().to_string(),
            v["sizeBytes"].as_u64().unwrap_or(0),
        ))
    }

    /// `DELETE /templates/{id}` of a snapshot.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let id = snapshot_id.trim_end_matches(":default");
        self.expect(
            Method::DELETE,
            &format!("/templates/{id}"),
            None,
            StatusCode::NO_CONTENT,
        )
        .await
        .map(|_| ())
    }

    /// `POST /sandboxes/{id}/fork`: the copies' ids (every copy must start).
    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<String>> {
        let path = format!("/sandboxes/{id}/fork");
        let v = self
            .expect(
                Method::POST,
                &path,
                Some(json!({"count": count, "timeout": 600})),
                StatusCode::CREATED,
            )
            .await?;
        let mut ids = Vec::new();
        for r in v.as_array().cloned().unwrap_or_default() {
            match r["sandbox"]["sandboxID"].as_str() {
                Some(id) => ids.push(id.to_string()),
                None => bail!("a fork copy failed: {}", r["error"]),
            }
        }
        Ok(ids)
    }

    /// `DELETE /sandboxes/{id}` (204; 404 counts as gone).
    pub async fn kill(&self, id: &str) -> Result<()> {
        let (status, body) = self
            .send(self.control(Method::DELETE, &format!("/sandboxes/{id}"), None))
            .await?;
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_FOUND {
            bail!(
                "DELETE /sandboxes/{id} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// Ids of every running or paused sandbox (`GET /v2/sandboxes`).
    pub async fn list(&self) -> Result<Vec<String>> {
        let (status, body) = self
            .send(self.control(
                Method::GET,
                "/v2/sandboxes?state=running,paused&limit=1000",
                None,
            ))
            .await?;
        if status != StatusCode::OK {
            bail!("GET /v2/sandboxes answered {status}");
        }
        let v: Value = serde_json::from_slice(&body)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["sandboxID"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Template ids and aliases (`GET /templates`).
    pub async fn templates(&self) -> Result<Vec<String>> {
        let (status, body) = self
            .send(self.control(Method::GET, "/templates", None))
            .await?;
        if status != StatusCode::OK {
            bail!("GET /templates answered {status}");
        }
        let v: Value = serde_json::from_slice(&body)?;
        let mut names = Vec::new();
        for t in v.as_array().into_iter().flatten() {
            if let Some(id) = t["templateID"].as_str() {
                names.push(id.to_string());
            }
            for key in ["aliases", "names"] {
                for a in t[key].as_array().into_iter().flatten() {
                    if let Some(a) = a.as_str() {
                        names.push(a.to_string());
                    }
                }
            }
        }
        Ok(names)
    }

    /// Runs `cmd args…` through the agent's `process.Process/Start` and
    /// waits for its end event; returns the exit code.
    pub async fn exec(&self, sbx: &Sandbox, cmd: &str, args: &[&str]) -> Result<i64> {
        let msg = json!({"process": {"cmd": cmd, "args": args}, "stdin": false});
        let raw = msg.to_string();
        let mut env = Vec::with_capacity(raw.len() + 5);
        env.push(0u8);
        env.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        env.extend_from_slice(raw.as_bytes());
        let req = self
            .proxied(sbx, AGENT_PORT, Method::POST, "/process.Process/Start")
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(Full::new(Bytes::from(env)))
            .expect("a valid request");
        let (status, body) = self.send(req).await?;
        if status != StatusCode::OK {
            bail!(
                "process.Process/Start answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let mut buf = BytesMut::from(&body[..]);
        while buf.len() >= 5 {
            let flags = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            buf.advance(5);
            let m: Value = serde_json::from_slice(&buf.split_to(len))?;
            if flags & 2 != 0 {
                if m.get("error").is_some() {
                    bail!("process.Process/Start ended with {m}");
                }
                continue;
            }
            if let Some(end) = m.pointer("/event/end") {
                return Ok(end["exitCode"].as_i64().unwrap_or(0));
            }
        }
        bail!("process.Process/Start: the stream ended without an end event")
    }

    /// `POST /files?path=…` with a raw body.
    pub async fn upload(&self, sbx: &Sandbox, path: &str, data: Bytes) -> Result<()> {
        let req = self
            .proxied(
                sbx,
                AGENT_PORT,
                Method::POST,
                &format!("/files?path={path}&username=user"),
            )
            .header("content-type", "application/octet-stream")
            .body(Full::new(data))
            .expect("a valid request");
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            bail!(
                "POST /files answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// `GET /files?path=…`; returns the number of bytes read.
    pub async fn download(&self, sbx: &Sandbox, path: &str) -> Result<usize> {
        let req = self
            .proxied(
                sbx,
                AGENT_PORT,
                Method::GET,
                &format!("/files?path={path}&username=user"),
            )
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let fut = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    n += d.len();
                }
            }
            anyhow::Ok((status, n))
        };
        let (status, n) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .context("GET /files: no answer in time")??;
        if status != StatusCode::OK {
            bail!("GET /files answered {status}");
        }
        Ok(n)
    }

    /// `POST /execute` on the code interpreter; returns the NDJSON lines.
    pub async fn run_code(&self, sbx: &Sandbox, code: &str) -> Result<String> {
        let req = self
            .proxied(sbx, INTERPRETER_PORT, Method::POST, "/execute")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json!({"code": code}).to_string())))
            .expect("a valid request");
        let (status, body) = self.send(req).await?;
        if status != StatusCode::OK {
            bail!(
                "POST /execute answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
