//! The proxy's connections to sandboxes, each tied to the sandbox it was
//! made to: when that sandbox is gone, the connection reads as closed, so
//! the client pool drops it at once.
//!
//! Without this a pooled keep-alive connection outlived its sandbox
//! whenever the sandbox's end vanished without a FIN or a reset (a gVisor
//! sandbox's network stack is a process: killing it closes nothing), and
//! the next sandbox given the same address (network namespaces are reused)
//! had its first request sent on it: a reset, seen as a 502.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use kiln_core::Gone;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects like [`HttpConnector`], to the sandbox that holds the address
/// now (as the proxy last said with [`SandboxConnector::bind`]).
#[derive(Clone)]
pub struct SandboxConnector {
    http: HttpConnector,
    sandboxes: Arc<Mutex<HashMap<IpAddr, Gone>>>,
}

impl SandboxConnector {
    pub fn new(http: HttpConnector) -> Self {
        Self {
            http,
            sandboxes: Arc::default(),
        }
    }

    /// Says which sandbox `ip` belongs to, before a request is sent there.
    /// One entry per address, replaced by the next sandbox given it: the
    /// map is as large as the networks' address pools, never larger.
    pub fn bind(&self, ip: IpAddr, gone: Gone) {
        let mut map = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(ip, gone);
    }
}

impl tower::Service<Uri> for SandboxConnector {
    type Response = SandboxIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SandboxIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let gone = uri
            .host()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            .and_then(|ip| {
                let map = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
                map.get(&ip).cloned()
            });
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(SandboxIo {
                io,
                gone: gone.map(|g| Box::pin(g.wait()) as GoneFuture),
                ended: false,
            })
        })
    }
}

type GoneFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection to a sandbox: reads end (EOF) and writes fail once the
/// sandbox is gone.
pub struct SandboxIo {
    io: TokioIo<TcpStream>,
    gone: Option<GoneFuture>,
    ended: bool,
}

impl SandboxIo {
    /// Whether the sandbox is gone; registers for the news otherwise.
    fn gone(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended {
            if let Some(g) = &mut self.gone {
                self.ended = g.as_mut().poll(cx).is_ready();
            }
        }
        self.ended
    }
}

impl Read for SandboxIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.gone(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for SandboxIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.gone(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.gone(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for SandboxIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
