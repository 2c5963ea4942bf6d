//! The Connect protocol's JSON codec: unary calls are plain JSON; server
//! streams are `application/connect+json` bodies of 5-byte-framed messages
//! (1 flag byte, 4 bytes big-endian length), the last one flagged 0x02 and
//! carrying `{"error": ...}` when the call failed.

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use kiln_api::agent::{ConnectErrorBody, EndStream};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Flag of the end-of-stream message.
pub const END_STREAM: u8 = 0x02;
/// Largest message accepted (the agent's output chunks are far smaller).
const MAX_MESSAGE: usize = 64 << 20;

/// Frames one message.
pub fn envelope<T: Serialize>(msg: &T) -> Vec<u8> {
    let raw = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(5 + raw.len());
    out.push(0);
    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    out.extend_from_slice(&raw);
    out
}

/// Reads the messages of a server stream one by one.
pub struct StreamReader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: BytesMut,
    url: String,
    done: bool,
}

impl StreamReader {
    pub fn new(resp: reqwest::Response, url: String) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: BytesMut::new(),
            url,
            done: false,
        }
    }

    /// The next message; `None` at a clean end of the stream; an error when
    /// the end message carries one or the body breaks off.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(self.protocol(format!("a {len}-byte stream message")));
                }
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let raw = self.buf.split_to(len);
                    if flags & END_STREAM != 0 {
                        self.done = true;
                        let end: EndStream = serde_json::from_slice(&raw).unwrap_or_default();
                        return match end.error {
                            Some(e) => Err(agent_error(e)),
                            None => Ok(None),
                        };
                    }
                    if flags & 0x01 != 0 {
                        return Err(self.protocol("a compressed stream message".into()));
                    }
                    return serde_json::from_slice(&raw)
                        .map(Some)
                        .map_err(|e| self.protocol(format!("invalid message ({e})")));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::Http {
                        url: self.url.clone(),
                        source: e,
                    })
                }
                None => {
                    self.done = true;
                    return Err(self.protocol("the stream ended without an end message".into()));
                }
            }
        }
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            url: self.url.clone(),
            message,
        }
    }
}

pub(crate) fn agent_error(e: ConnectErrorBody) -> Error {
    Error::Agent {
        code: e.code,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_flag_and_big_endian_length() {
        let e = envelope(&serde_json::json!({"a": 1}));
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&e[5..], br#"{"a":1}"#);
    }
}
