//! kilnd's listener: HTTP/1.1 and h2c on one port, with the limits that keep
//! a slow, careless or hostile client from holding kilnd's memory or file
//! descriptors, and that make a request kilnd accepts one the agent accepts
//! too (a request the agent refuses mid-way through the proxy would reach
//! the client as a reset, not as the agent's answer).
//!
//! - a header block is at most [`MAX_HEADER_BYTES`] (the agent's own limit)
//!   and [`MAX_HEADERS`] fields: beyond, 431;
//! - a header block must arrive within [`HEADER_READ_TIMEOUT`] of the
//!   connection's start or of the previous response (HTTP/1.1; this is also
//!   how long a kept-alive connection may wait for its next request);
//! - a connection with no request in progress for [`IDLE_TIMEOUT`] is
//!   closed (GOAWAY for HTTP/2), whatever trickle of bytes it sends;
//! - at most [`Limits::max_connections_per_ip`] open connections per client
//!   address (upgraded ones included): one more is answered 429 and closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// The largest header block (request line included), as the agent allows
/// (HTTP/1.1 read buffer; HTTP/2 header list, counted as RFC 9113 does).
pub const MAX_HEADER_BYTES: usize = kiln_api::agent::MAX_HEADER_BYTES;
/// The most header fields in an HTTP/1.1 request (hyper's default, the
/// agent's and the interpreter's too).
pub const MAX_HEADERS: usize = 100;
/// How long a client may take to send a whole HTTP/1.1 header block.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay open with no request in progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections per client address unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;
/// How long a closing connection's requests in progress may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the listener enforces besides the fixed header limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets each connection finish what it is doing (bounded by
/// the caller) and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; a
                    // connection reset before accept is nothing.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small request/response exchanges (every RPC) must not wait for
        // delayed ACKs: no Nagle.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Some(slot) = Slot::take(&counts, peer.ip(), limits.max_connections_per_ip) else {
            tracing::debug!(client = %peer.ip(), "too many connections from one address");
            tokio::spawn(refuse(stream, limits.max_connections_per_ip));
            continue;
        };
        let io = Counted::new(stream, slot);
        tokio::spawn(connection(
            io,
            app.clone(),
            limits,
            stop_rx.clone(),
            done_tx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Every connection task holds a sender: this returns when all ended.
    let _ = done_rx.recv().await;
    Ok(())
}

/// The first bytes of an HTTP/2 connection with prior knowledge (h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One connection, from its first byte to its close.
async fn connection(
    io: Counted,
    app: Router,
    limits: Limits,
    stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    // Which protocol: the first bytes must come within the header timeout.
    let h2 =
        match tokio::time::timeout(limits.header_read_timeout, io.starts_with_h2_preface()).await {
            Ok(Ok(h2)) => h2,
            Ok(Err(_)) | Err(_) => return,
        };
    let activity = Arc::new(Activity::new());
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = activity.enter();
            let app = app.clone();
            async move {
                let resp = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                // The request counts as in progress until its response
                // body is done (or dropped), streams included.
                Ok::<_, Infallible>(resp.map(|inner| Body::new(Tracked { inner, _busy: busy })))
            }
        })
    };
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            // WebSockets over HTTP/2 (extended CONNECT), as axum::serve had it.
            .enable_connect_protocol();
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        drive(conn, |c| c.graceful_shutdown(), &activity, limits, stop).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Exact: the read buffer's limit alone lets a head that
            // arrives in one read grow past it.
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        drive(conn, |c| c.graceful_shutdown(), &activity, limits, stop).await;
    }
}

/// Runs a connection until it ends; closes it gracefully when kilnd stops
/// or when it has been idle too long, and for good a grace period later.
async fn drive<C>(
    conn: C,
    shut: impl Fn(Pin<&mut C>),
    activity: &Activity,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let wake = closing.unwrap_or_else(|| activity.idle_deadline(limits.idle_timeout));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if closing.is_none() => {
                shut(conn.as_mut());
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(wake) => {
                if closing.is_some() {
                    // Grace is over: dropping the connection closes it.
                    return;
                }
                if activity.idle_for(limits.idle_timeout) {
                    tracing::debug!("closing an idle connection");
                    shut(conn.as_mut());
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}

/// Answers a connection over the per-address limit and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"code\":429,\"message\":\"too many open connections from this address (at most {max}): close some and retry\"}}"
    );
    let resp = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client had sent, so that closing does not reset
        // the connection before it reads the answer.
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A connection's share of its client address's limit.
struct Slot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The socket with its slot: the slot goes when the socket does, also
/// after an upgrade hands the socket on to a spliced connection.
///
/// Dropped, it closes lingering (as nginx and Apache do): its write side
/// first, then it reads and discards what the client still sends, for at
/// most [`LINGER`]. A server that closes with unread bytes in its receive
/// buffer resets the connection, and the reset can overtake the answer it
/// has just written (a 431, 413 or 400 sent before the whole request was
/// read): the client would see "connection reset" instead.
struct Counted {
    inner: Option<TcpStream>,
    slot: Option<Slot>,
}

/// How long a closed connection goes on reading what its client sends.
const LINGER: Duration = Duration::from_secs(2);
/// The most a lingering close reads.
const LINGER_BYTES: usize = 64 << 20;

impl Counted {
    fn new(stream: TcpStream, slot: Slot) -> Self {
        Self {
            inner: Some(stream),
            slot: Some(slot),
        }
    }

    /// Whether the client opens with the HTTP/2 preface (h2c with prior
    /// knowledge), looking without consuming.
    async fn starts_with_h2_preface(&self) -> io::Result<bool> {
        let Some(stream) = self.inner.as_ref() else {
            return Ok(false);
        };
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 || buf[..n] != H2_PREFACE[..n] {
                return Ok(false);
            }
            if n == H2_PREFACE.len() {
                return Ok(true);
            }
            // Part of the preface: the rest is on its way.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stream(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut().inner.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "closed")),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let (Some(mut stream), slot) = (self.inner.take(), self.slot.take()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(LINGER, async {
                // hyper may have shut the write side already.
                let _ = stream.shutdown().await;
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0;
                while total < LINGER_BYTES {
                    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                Ok::<_, io::Error>(())
            })
            .await;
        });
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

/// Requests in progress on one connection, and since when there are none.
struct Activity {
    busy: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection will have been idle for `idle` if nothing
    /// starts (while busy: a later look).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.busy.load(Ordering::SeqCst) > 0 {
            Instant::now() + idle
        } else {
            self.since() + idle
        }
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.busy.load(Ordering::SeqCst) == 0 && self.since().elapsed() >= idle
    }
}

/// One request in progress.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_address_and_free_on_drop() {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = Slot::take(&counts, a, 2).unwrap();
        let two = Slot::take(&counts, a, 2).unwrap();
        assert!(Slot::take(&counts, a, 2).is_none(), "a third from a");
        let other = Slot::take(&counts, b, 2).expect("b has its own count");
        drop(one);
        let again = Slot::take(&counts, a, 2).expect("a slot was freed");
        drop((two, again, other));
        assert!(counts.lock().unwrap().is_empty());
        let _unlimited: Vec<_> = (0..10)
            .map(|_| Slot::take(&counts, a, 0).unwrap())
            .collect();
    }

    #[test]
    fn busy_connections_are_never_idle() {
        let activity = Arc::new(Activity::new());
        let busy = activity.enter();
        assert!(!activity.idle_for(Duration::ZERO));
        let second = activity.enter();
        drop(busy);
        assert!(!activity.idle_for(Duration::ZERO), "one still in progress");
        drop(second);
        assert!(activity.idle_for(Duration::ZERO));
        assert!(!activity.idle_for(Duration::from_secs(3600)));
    }
}
