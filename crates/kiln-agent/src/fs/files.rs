//! `GET /files` (download, gzip when asked) and `POST /files` (multipart with
//! one or more files, or a raw `application/octet-stream` body, optionally
//! gzip-encoded). Bodies stream between the socket and the disk through a
//! small bounded queue; files are never held in memory.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kiln_api::agent::{Code, HttpError, WriteInfo};
use tokio::sync::mpsc;

use super::creds::as_user;
use crate::connect::{full, Body};
use crate::error::RpcError;
use crate::state::{resolve_os_path, AgentState};
use crate::users::{self, User};

const CHUNK: usize = 256 * 1024;
const QUEUE: usize = 4;

/// A plain-HTTP error answer: `{"code": <status>, "message": ...}`.
pub fn http_error(status: u16, message: impl Into<String>) -> Response<Body> {
    let body = HttpError {
        code: status,
        message: message.into(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(full(json));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn rpc_http_error(e: &RpcError) -> Response<Body> {
    http_error(e.http_status(), e.message.clone())
}

/// Query parameters, decoded to bytes (paths need not be UTF-8).
pub fn query_params(query: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| -> Vec<u8> {
            let plus = s.replace('+', " ");
            percent_encoding::percent_decode_str(&plus).collect()
        };
        out.push((String::from_utf8_lossy(&dec(k)).into_owned(), dec(v)));
    }
    out
}

fn param<'a>(params: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// The acting user: `username` query parameter, else `Authorization`, else
/// the default user.
fn acting_user(
    state: &AgentState,
    params: &[(String, Vec<u8>)],
    headers: &HeaderMap,
) -> Result<User, RpcError> {
    if let Some(u) = param(params, "username").filter(|u| !u.is_empty()) {
        let name = std::str::from_utf8(u)
            .map_err(|_| RpcError::new(Code::Unauthenticated, "username is not UTF-8"))?;
        return users::lookup(name);
    }
    let name = users::basic_auth_user(headers)?;
    state.user(name.as_deref())
}

fn request_path(params: &[(String, Vec<u8>)], user: &User) -> Result<Option<PathBuf>, RpcError> {
    match param(params, "path") {
        Some(p) if !p.is_empty() => Ok(Some(resolve_os_path(
            Path::new(&OsString::from_vec(p.to_vec())),
            user,
        )?)),
        _ => Ok(None),
    }
}

pub async fn get(
    state: &Arc<AgentState>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    match download(state, query, headers).await {
        Ok(r) => r,
        Err(e) => rpc_http_error(&e),
    }
}

async fn download(
    state: &Arc<AgentState>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Body>, RpcError> {
    let params = query_params(query);
    let user = acting_user(state, &params, headers)?;
    let path = request_path(&params, &user)?
        .ok_or_else(|| RpcError::invalid("the path query parameter is required"))?;
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',').any(|e| {
                e.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("gzip")
            })
        })
        .unwrap_or(false);

    let u = user.clone();
    let p = path.clone();
    let (file, len) = tokio::task::spawn_blocking(move || {
        as_user(&u, || -> Result<(File, u64), RpcError> {
            let f = File::open(&p).map_err(|e| RpcError::io("opening", &p, &e))?;
            let m = f.metadata().map_err(|e| RpcError::io("reading", &p, &e))?;
            if m.is_dir() {
                return Err(RpcError::invalid(format!(
                    "{} is a directory, not a file",
                    p.display()
                )));
            }
            Ok((f, m.len()))
        })
    })
    .await
    .map_err(|e| RpcError::internal(format!("opening the file failed: {e}")))??;

    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let res = if gzip {
            let mut enc = flate2::write::GzEncoder::new(
                ChannelWriter(tx.clone()),
                flate2::Compression::fast(),
            );
            copy(file, &mut enc).and_then(|_| enc.finish().map(|_| ()))
        } else {
            copy(file, &mut ChannelWriter(tx.clone()))
        };
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|r| r.map(hyper::body::Frame::data));
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    } else if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        let quoted: String = name
            .chars()
            .filter(|c| *c != '"' && !c.is_control())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{quoted}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

fn copy(mut f: File, w: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return w.flush();
        }
        w.write_all(&buf[..n])?;
    }
}

/// Sends everything written to it down a channel, in chunks.
struct ChannelWriter(mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub async fn post(
    state: &Arc<AgentState>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Incoming,
) -> Response<Body> {
    let mut body = Some(body);
    match upload(state, query, headers, &mut body).await {
        Ok(infos) => {
            let json = serde_json::to_vec(&infos).unwrap_or_default();
            let mut r = Response::new(full(json));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            // Refused before the body was read: read it anyway, so that
            // the refusal, not a reset, reaches the client.
            if let Some(body) = body.take() {
                crate::server::drain(body).await;
            }
            rpc_http_error(&e)
        }
    }
}

/// Takes the body out of `body` (left `None` once read, so that
/// [`post`] knows whether a refusal must drain it).
fn take_body(body: &mut Option<Incoming>) -> Result<Incoming, RpcError> {
    body.take()
        .ok_or_else(|| RpcError::invalid("the request body was read already"))
}

async fn upload(
    state: &Arc<AgentState>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &mut Option<Incoming>,
) -> Result<Vec<WriteInfo>, RpcError> {
    let params = query_params(query);
    let user = acting_user(state, &params, headers)?;
    let path = request_path(&params, &user)?;
    let meta = super::metadata::from_headers(headers)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") => true,
        Some(e) => {
            return Err(RpcError::invalid(format!(
                "unsupported Content-Encoding {e:?}"
            )))
        }
    };

    if mime == "multipart/form-data" {
        let boundary = multer::parse_boundary(&ct)
            .map_err(|e| RpcError::invalid(format!("bad multipart Content-Type: {e}")))?;
        let stream = take_body(body)?.into_data_stream();
        let mut mp = multer::Multipart::new(stream, boundary);
        let mut out = Vec::new();
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(RpcError::invalid(format!("malformed multipart body: {e}"))),
            };
            let target = match (&path, field.file_name()) {
                (Some(p), _) => p.clone(),
                (None, Some(name)) if !name.is_empty() => resolve_os_path(Path::new(name), &user)?,
                _ => return Err(RpcError::invalid(
                    "a multipart file part needs a filename (its path) or the path query parameter",
                )),
            };
            let chunks =
                field.map(|c| c.map_err(|e| std::io::Error::other(format!("multipart: {e}"))));
            out.push(write_stream(&user, target, false, &meta, chunks).await?);
        }
        if out.is_empty() {
            return Err(RpcError::invalid("the multipart body holds no file"));
        }
        Ok(out)
    } else if mime == "application/octet-stream" || mime.is_empty() {
        let target = path.ok_or_else(|| {
            RpcError::invalid(
                "the path query parameter is required for an application/octet-stream upload",
            )
        })?;
        let chunks = take_body(body)?
            .into_data_stream()
            .map(|c| c.map_err(|e| std::io::Error::other(format!("request body: {e}"))));
        Ok(vec![
            write_stream(&user, target, gzip, &meta, chunks).await?,
        ])
    } else {
        Err(RpcError::invalid(format!(
            "unsupported Content-Type {mime:?}: use multipart/form-data or application/octet-stream"
        )))
    }
}

/// Writes a stream of chunks to `path` as `user` (creating parent
/// directories), through a blocking writer thread.
async fn write_stream(
    user: &User,
    path: PathBuf,
    gzip: bool,
    meta: &std::collections::BTreeMap<String, String>,
    mut chunks: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin,
) -> Result<WriteInfo, RpcError> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let u = user.clone();
    let p = path.clone();
    let m = meta.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), RpcError> {
        let file = as_user(&u, || open_for_write(&p, &u))?;
        let write_err = |e: std::io::Error| RpcError::io("writing", &p, &e);
        let file = if gzip {
            // Errors without an errno come from the decoder: a corrupt body.
            let gz_err = |e: std::io::Error| {
                if e.raw_os_error().is_some() {
                    write_err(e)
                } else {
                    RpcError::invalid(format!("the gzip body for {} is corrupt: {e}", p.display()))
                }
            };
            let mut dec = flate2::write::GzDecoder::new(file);
            while let Some(b) = rx.blocking_recv() {
                dec.write_all(&b).map_err(gz_err)?;
            }
            dec.try_finish().map_err(gz_err)?;
            dec.finish().map_err(gz_err)?
        } else {
            let mut file = file;
            while let Some(b) = rx.blocking_recv() {
                file.write_all(&b).map_err(write_err)?;
            }
            file.flush().map_err(write_err)?;
            file
        };
        // Always: an overwrite drops the old file's metadata.
        as_user(&u, || super::metadata::replace(&file, &p, &m))?;
        Ok(())
    });
    let mut body_err = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                body_err = Some(e);
                break;
            }
        }
    }
    drop(tx);
    writer
        .await
        .map_err(|e| RpcError::internal(format!("writing {} failed: {e}", path.display())))??;
    if let Some(e) = body_err {
        return Err(RpcError::invalid(format!(
            "upload of {} was cut short: {e}",
            path.display()
        )));
    }
    Ok(WriteInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file".to_string(),
        path: path.to_string_lossy().into_owned(),
        metadata: {
            // What the file holds (a filesystem without xattrs keeps none).
            let stored = super::metadata::load(&path);
            (!stored.is_empty()).then_some(stored)
        },
    })
}

/// Opens `p` for writing, truncated, creating it and its parents. The
/// inotify events match envd's for the same upload (it chowns the file to
/// the user: an existing file before it opens it, a new one after), so a
/// watcher sees CHMOD between CREATE and WRITE, as with E2B. Here the file
/// already is the user's: the chown changes nothing but the event.
fn open_for_write(p: &Path, user: &User) -> Result<File, RpcError> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::fs::Uid::from_raw(user.uid);
    let gid = rustix::fs::Gid::from_raw(user.gid);
    let existing = std::fs::metadata(p).ok();
    if let Some(m) = &existing {
        if m.is_dir() {
            return Err(RpcError::invalid(format!(
                "{} is a directory: cannot write a file there",
                p.display()
            )));
        }
        if m.uid() == user.uid && m.gid() == user.gid {
            let _ = rustix::fs::chown(p, Some(uid), Some(gid));
        }
    }
    if let Some(parent) = p.parent() {
        super::tree::create_dir_all(parent)
            .map_err(|e| RpcError::io("creating directory", parent, &e))?;
    }
    let f = File::create(p).map_err(|e| RpcError::io("creating", p, &e))?;
    if existing.is_none() {
        let _ = rustix::fs::fchown(&f, Some(uid), Some(gid));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_bytes() {
        let p = query_params(Some("path=%2Fa%20b%2B%FF&username=root&x"));
        assert_eq!(param(&p, "path"), Some(&b"/a b+\xff"[..]));
        assert_eq!(param(&p, "username"), Some(&b"root"[..]));
        assert_eq!(param(&p, "x"), Some(&b""[..]));
        assert_eq!(param(&p, "nope"), None);
    }

    #[test]
    fn full_disk_is_507() {
        let e = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert_eq!(
            RpcError::io("writing", Path::new("/x"), &e).http_status(),
            507
        );
    }
}
