//! Files in a sandbox: `filesystem.Filesystem` (stat, list, mkdir, remove)
//! and the agent's streamed `GET|POST /files`.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use kiln_api::agent::filesystem::{
    self as wire, EntryInfo, EntryResponse, ListDirRequest, ListDirResponse, PathRequest,
};
use kiln_api::agent::AGENT_PORT;
use reqwest::{Method, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::sandbox::SandboxConn;

/// Called with the number of bytes moved so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

const CHUNK: usize = 256 << 10;

fn files_path(remote: &str) -> String {
    let q = percent_encoding::utf8_percent_encode(remote, percent_encoding::NON_ALPHANUMERIC);
    format!("/files?path={q}")
}

impl SandboxConn {
    /// Metadata of one path.
    pub async fn stat(&self, path: &str) -> Result<EntryInfo> {
        let r: EntryResponse = self
            .unary(wire::SERVICE, "Stat", &PathRequest { path: path.into() })
            .await?;
        r.entry
            .ok_or_else(|| Error::Invalid(format!("no entry for {path}")))
    }

    /// The entries of a directory, `depth` levels down (1 = its children).
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>> {
        let r: ListDirResponse = self
            .unary(
                wire::SERVICE,
                "ListDir",
                &ListDirRequest {
                    path: path.into(),
                    depth,
                },
            )
            .await?;
        Ok(r.entries)
    }

    /// Creates a directory and its parents.
    pub async fn make_dir(&self, path: &str) -> Result<()> {
        match self
            .unary::<_, EntryResponse>(wire::SERVICE, "MakeDir", &PathRequest { path: path.into() })
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Agent { code, .. }) if code == "already_exists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a file or a directory tree.
    pub async fn remove(&self, path: &str) -> Result<()> {
        let _: wire::Empty = self
            .unary(wire::SERVICE, "Remove", &PathRequest { path: path.into() })
            .await?;
        Ok(())
    }

    async fn files_response(
        &self,
        rb: reqwest::RequestBuilder,
        path: &str,
        remote: &str,
    ) -> Result<Response> {
        let resp = self.send(rb, AGENT_PORT, path).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<kiln_api::agent::HttpError>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        Err(if status == reqwest::StatusCode::NOT_FOUND {
            Error::NotFound {
                what: format!("{remote} in sandbox {}", self.id),
                message,
            }
        } else {
            Error::Agent {
                code: status.as_u16().to_string(),
                message,
            }
        })
    }

    /// Reads a whole file into memory.
    pub async fn read_bytes(&self, remote: &str) -> Result<Vec<u8>> {
        let path = files_path(remote);
        let resp = self
            .files_response(self.agent(Method::GET, &path), &path, remote)
            .await?;
        let url = self.client.url(&path);
        let b = resp
            .bytes()
            .await
            .map_err(|e| Error::Http { url, source: e })?;
        Ok(b.to_vec())
    }

    /// Streams a file to `local`, calling `progress` as bytes arrive; returns
    /// the number of bytes.
    pub async fn download(
        &self,
        remote: &str,
        local: &Path,
        progress: Option<Progress>,
    ) -> Result<u64> {
        let path = files_path(remote);
        let resp = self
            .files_response(self.agent(Method::GET, &path), &path, remote)
            .await?;
        let url = self.client.url(&path);
        let mut out = tokio::fs::File::create(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Http {
                url: url.clone(),
                source: e,
            })?;
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(local, e))?;
            n += chunk.len() as u64;
            if let Some(p) = &progress {
                p(n);
            }
        }
        out.flush().await.map_err(|e| Error::io(local, e))?;
        Ok(n)
    }

    /// Writes `data` to a file (parents are created).
    pub async fn write_bytes(&self, remote: &str, data: Vec<u8>) -> Result<()> {
        let path = files_path(remote);
        let rb = self
            .agent(Method::POST, &path)
            .header("Content-Type", "application/octet-stream")
            .body(data);
        self.files_response(rb, &path, remote).await.map(|_| ())
    }

    /// Streams the local file `local` to `remote` (parents are created),
    /// calling `progress` as bytes leave; returns the number of bytes.
    pub async fn upload(
        &self,
        local: &Path,
        remote: &str,
        progress: Option<Progress>,
    ) -> Result<u64> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::io(local, e))?
            .len();
        let local_owned = local.to_path_buf();
        let stream = futures_util::stream::unfold(
            (file, 0u64, progress),
            move |(mut file, sent, progress)| {
                let local = local_owned.clone();
                async move {
                    let mut buf = vec![0u8; CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            let sent = sent + n as u64;
                            if let Some(p) = &progress {
                                p(sent);
                            }
                            Some((Ok(buf), (file, sent, progress)))
                        }
                        Err(e) => Some((
                            Err(std::io::Error::new(
                                e.kind(),
                                format!("{}: {e}", local.display()),
                            )),
                            (file, sent, progress),
                        )),
                    }
                }
            },
        );
        let path = files_path(remote);
        let rb = self
            .agent(Method::POST, &path)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string())
            .body(reqwest::Body::wrap_stream(stream));
        self.files_response(rb, &path, remote).await?;
        Ok(len)
    }
}
