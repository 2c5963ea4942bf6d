//! Test harness: runs the built kiln-agent on loopback in its own mount
//! namespace (temp passwd/group bind-mounted over /etc's, defining `user`
//! uid 1000 with a temp home) and talks Connect to it with hyper clients,
//! over HTTP/1.1 or h2c. Needs root.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

/// The agent under test: `KILN_AGENT_BIN` (the static build, as
/// scripts/test.sh exports it) if set, else the one cargo built for the tests.
pub fn agent_bin() -> String {
    std::env::var("KILN_AGENT_BIN")
        .ok()
        .filter(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_kiln-agent").to_string())
}

pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
}

#[derive(Default)]
pub struct Opts {
    /// Also a new pid namespace, where the agent is PID 1.
    pub pid_ns: bool,
    pub extra_env: Vec<(String, String)>,
    /// An fd (in this process, not close-on-exec) to pass as KILN_READY_FD.
    pub ready_fd: Option<i32>,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let home = dir.path().join("home/user");
        std::fs::create_dir_all(&home).expect("home");
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).expect("chown home");
        std::fs::write(
            dir.path().join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:{}:/bin/bash\n",
                home.display()
            ),
        )
        .expect("passwd");
        std::fs::write(dir.path().join("group"), "root:x:0:\nuser:x:1000:\n").expect("group");
        let script = format!(
            "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && exec \"$0\" --listen 127.0.0.1:0",
            d = dir.path().display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private"]);
        if opts.pid_ns {
            cmd.args(["--pid", "--fork", "--mount-proc"]);
        }
        cmd.args(["sh", "-c", &script, &agent_bin()]);
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        if let Some(fd) = opts.ready_fd {
            cmd.env("KILN_READY_FD", fd.to_string());
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn unshare");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("agent output");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|a| a.contains(':'))
            .unwrap_or_else(|| panic!("agent did not start: {line:?}"))
            .to_string();
        Agent {
            child,
            addr,
            dir,
            home,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The agent's pid on the host (the child of `unshare` with --fork).
    pub fn agent_pid(&self) -> i32 {
        let pid = self.child.id() as i32;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(pid)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.agent_pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn envelope(v: &Value) -> Vec<u8> {
    let raw = serde_json::to_vec(v).expect("json");
    let mut out = vec![0u8];
    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    out.extend_from_slice(&raw);
    out
}

pub fn end_envelope() -> Vec<u8> {
    vec![2, 0, 0, 0, 2, b'{', b'}']
}

/// Splits a buffer into envelopes; returns (flags, message) pairs and the
/// unconsumed rest.
pub fn split_envelopes(buf: &mut bytes::BytesMut) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let flags = buf[0];
        buf.advance(5);
        let msg = buf.split_to(len);
        out.push((flags, serde_json::from_slice(&msg).expect("envelope json")));
    }
    out
}

/// An HTTP/1.1 or h2c connection to the agent.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub async fn open(addr: &str, h2: bool) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let io = hyper_util::rt::TokioIo::new(tcp);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("h2c handshake");
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Response<hyper::body::Incoming> {
        match self {
            Conn::H1(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("request")
            }
            Conn::H2(s) => {
                s.ready().await.expect("ready");
                s.send_request(req).await.expect("request")
            }
        }
    }

    /// A unary call: (HTTP status, JSON body).
    pub async fn unary(&mut self, method: &str, body: Value) -> (u16, Value) {
        let req = Request::post(format!("http://agent/{method}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&body).expect("json"),
            )))
            .expect("request");
        let resp = self.send(req).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Opens a server stream; returns the response to read incrementally.
    pub async fn open_stream(
        &mut self,
        method: &str,
        body: Vec<u8>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let req = Request::post(format!("http://agent/{method}"))
            .header("content-type", "application/connect+json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = self.send(req).await;
        assert_eq!(resp.status(), 200);
        resp
    }

    /// A whole server stream: every envelope.
    pub async fn stream(&mut self, method: &str, msg: Value) -> Vec<(u8, Value)> {
        let resp = self.open_stream(method, envelope(&msg)).await;
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let out = split_envelopes(&mut buf);
        assert!(buf.is_empty(), "trailing bytes in stream");
        out
    }
}

/// Decodes a base64 bytes field.
pub fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .expect("base64")
}

/// Concatenated stdout of a process stream, its end event and the stream's
/// end-stream message.
pub fn collect_output(events: &[(u8, Value)]) -> (Vec<u8>, Value, Value) {
    let mut out = Vec::new();
    let mut end = Value::Null;
    let mut fin = Value::Null;
    for (flags, m) in events {
        if flags & 2 != 0 {
            fin = m.clone();
        } else if let Some(d) = m.pointer("/event/data/stdout") {
            out.extend(b64(d));
        } else if let Some(d) = m.pointer("/event/data/pty") {
            out.extend(b64(d));
        } else if let Some(e) = m.pointer("/event/end") {
            end = e.clone();
        }
    }
    (out, end, fin)
}

pub fn bash(cmd: &str) -> Value {
    serde_json::json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": false})
}
