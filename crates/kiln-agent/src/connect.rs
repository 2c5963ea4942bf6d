//! The Connect protocol with the JSON codec, on top of hyper: request
//! decoding, enveloped streams, errors. Unary calls are `POST` with
//! `application/json`; streams use `application/connect+json` with 5-byte
//! envelopes (flags, big-endian u32 length) and a final end-stream envelope
//! (flag 0x02) carrying `{}` or `{"error": {...}}`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kiln_api::agent::{Code, ConnectErrorBody, EndStream};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::RpcError;

/// Largest message accepted in one request (unary body or one envelope).
pub const MAX_MESSAGE: usize = 32 << 20;

const FLAG_END_STREAM: u8 = 0x02;
const FLAG_COMPRESSED: u8 = 0x01;

/// The response body type of every handler.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Unary,
    Stream,
}

/// The framing a request's content type asks for, or an error for a codec we
/// do not speak.
pub fn framing(headers: &HeaderMap) -> Result<Framing, RpcError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Framing::Unary),
        "application/connect+json" => Ok(Framing::Stream),
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("unsupported content type {other:?}: this agent speaks the Connect JSON codec"),
        )),
    }
}

/// Whether the request body is compressed in a way we cannot read.
pub fn check_encoding(headers: &HeaderMap, framing: Framing) -> Result<(), RpcError> {
    let name = match framing {
        Framing::Unary => "content-encoding",
        Framing::Stream => "connect-content-encoding",
    };
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        None | Some("identity") | Some("") => Ok(()),
        Some(other) => Err(RpcError::new(
            Code::Unimplemented,
            format!("unsupported compression {other:?}"),
        )),
    }
}

/// Parses one JSON message; an empty body is the empty message.
pub fn decode<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, RpcError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        RpcError::new(
            Code::InvalidArgument,
            format!("malformed request message: {e}"),
        )
    })
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, RpcError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("request body exceeds {limit} bytes"),
                ))
            } else {
                Err(RpcError::new(
                    Code::Canceled,
                    format!("reading the request body failed: {e}"),
                ))
            }
        }
    }
}

/// Reads the single message of a server-streaming request.
pub async fn read_stream_request<T: DeserializeOwned + Default>(
    body: Incoming,
) -> Result<T, RpcError> {
    let bytes = read_body(body, MAX_MESSAGE + 5).await?;
    let mut reader = EnvelopeReader::default();
    reader.push(&bytes);
    match reader.next()? {
        Some((flags, msg)) if flags & FLAG_END_STREAM == 0 => decode(&msg),
        Some(_) => Err(RpcError::new(
            Code::InvalidArgument,
            "the request stream ended before its message",
        )),
        None if bytes.is_empty() => Err(RpcError::new(
            Code::InvalidArgument,
            "the request stream carries no message",
        )),
        None => Err(RpcError::new(
            Code::InvalidArgument,
            "the request envelope is truncated",
        )),
    }
}

/// Splits a byte stream into envelopes.
#[derive(Default)]
pub struct EnvelopeReader {
    buf: BytesMut,
}

impl EnvelopeReader {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete envelope as (flags, payload), if one is buffered.
    pub fn next(&mut self) -> Result<Option<(u8, Bytes)>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if flags & FLAG_COMPRESSED != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        if len > MAX_MESSAGE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("message of {len} bytes exceeds the limit of {MAX_MESSAGE}"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some((flags, self.buf.split_to(len).freeze())))
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// One envelope holding `msg` as JSON.
pub fn envelope<T: Serialize>(msg: &T) -> Bytes {
    // Serializing our own message types cannot fail (no maps with non-string
    // keys); fall back to an empty message rather than panic.
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    raw_envelope(0, &json)
}

fn raw_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// The end-stream envelope, successful or carrying an error.
pub fn end_stream(err: Option<&RpcError>) -> Bytes {
    let end = EndStream {
        error: err.map(|e| ConnectErrorBody {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
        }),
    };
    let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
    raw_envelope(FLAG_END_STREAM, &json)
}

/// A unary success.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response<Body> {
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(json));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A unary error: the code's HTTP status and `{"code", "message"}`.
pub fn unary_error(err: &RpcError) -> Response<Body> {
    let body = ConnectErrorBody {
        code: err.code.as_str().to_string(),
        message: err.message.clone(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(json));
    *r.status_mut() =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn stream_response(body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    r
}

/// A stream that failed before it started: HTTP 200 with only the
/// end-stream envelope, as the protocol wants.
pub fn stream_error(err: &RpcError) -> Response<Body> {
    stream_response(full(end_stream(Some(err))))
}

/// The end of a client stream whose handler answered one message.
pub fn stream_single<T: Serialize>(msg: &T) -> Response<Body> {
    let mut b = BytesMut::new();
    b.extend_from_slice(&envelope(msg));
    b.extend_from_slice(&end_stream(None));
    stream_response(full(b.freeze()))
}

/// A server stream fed by a channel of ready envelopes. The producer sends
/// the end-stream envelope itself before dropping its sender. While the
/// channel is quiet, a keepalive envelope goes out every `keepalive`.
pub fn stream_from_channel(
    rx: mpsc::Receiver<Bytes>,
    keepalive: Option<(Duration, Bytes)>,
) -> Response<Body> {
    let body = ChannelBody {
        rx,
        keepalive: keepalive.map(|(every, bytes)| {
            let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (iv, bytes)
        }),
    };
    stream_response(body.boxed_unsync())
}

/// The keepalive interval the client asked for (`Keepalive-Ping-Interval`,
/// seconds), else 50 s; bounded to [1 s, 1 h].
pub fn keepalive_interval(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(50)
        .clamp(1, 3600);
    Duration::from_secs(secs)
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    keepalive: Option<(tokio::time::Interval, Bytes)>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                if let Some((iv, _)) = self.keepalive.as_mut() {
                    iv.reset();
                }
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Some((iv, bytes)) = self.keepalive.as_mut() {
            if iv.poll_tick(cx).is_ready() {
                return Poll::Ready(Some(Ok(Frame::data(bytes.clone()))));
            }
        }
        Poll::Pending
    }
}
