//! The `process.Process` RPC handlers.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response};
use hyper::body::Incoming;
use kiln_api::agent::process::{
    CloseStdinRequest, ConnectRequest, Empty, EventResponse, KeepAlive, ListResponse, ProcessEvent,
    SendInputRequest, SendSignalRequest, Signal, StartRequest, StreamInputRequest, UpdateRequest,
};
use kiln_api::agent::Code;

use crate::connect::{self, Body, EnvelopeReader, Framing};
use crate::error::RpcError;
use crate::state::{resolve_path, AgentState};

use super::spawn::SpawnSpec;
use super::StartSpec;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Dispatches one call; `None` when the method does not exist.
pub async fn call(
    state: &Arc<AgentState>,
    method: &str,
    headers: &HeaderMap,
    body: Incoming,
    framing: Framing,
) -> Option<Response<Body>> {
    Some(match method {
        "Start" | "Connect" => {
            if framing != Framing::Stream {
                return Some(connect::unary_error(&wrong_framing(method)));
            }
            let res = if method == "Start" {
                start(state, headers, body).await
            } else {
                connect_to(state, body).await
            };
            match res {
                Ok(rx) => connect::stream_from_channel(
                    rx,
                    Some((connect::keepalive_interval(headers), keepalive())),
                ),
                Err(e) => connect::stream_error(&e),
            }
        }
        "StreamInput" => {
            if framing != Framing::Stream {
                return Some(connect::unary_error(&wrong_framing(method)));
            }
            match stream_input(state, body).await {
                Ok(()) => connect::stream_single(&Empty {}),
                Err(e) => connect::stream_error(&e),
            }
        }
        "List" | "SendInput" | "SendSignal" | "CloseStdin" | "Update" => {
            if framing != Framing::Unary {
                return Some(connect::stream_error(&wrong_framing(method)));
            }
            let res = match connect::read_body(body, connect::MAX_MESSAGE).await {
                Ok(bytes) => unary(state, method, &bytes).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(r) => r,
                Err(e) => connect::unary_error(&e),
            }
        }
        _ => return None,
    })
}

fn wrong_framing(method: &str) -> RpcError {
    RpcError::new(
        Code::Unimplemented,
        format!("process.Process/{method} called with the wrong stream type for its content type"),
    )
}

fn keepalive() -> bytes::Bytes {
    connect::envelope(&EventResponse {
        event: Some(ProcessEvent {
            keepalive: Some(KeepAlive {}),
            ..Default::default()
        }),
    })
}

async fn unary(
    state: &Arc<AgentState>,
    method: &str,
    bytes: &[u8],
) -> Result<Response<Body>, RpcError> {
    let procs = &state.processes;
    match method {
        "List" => Ok(connect::unary_ok(&ListResponse {
            processes: procs.list(),
        })),
        "SendInput" => {
            let req: SendInputRequest = connect::decode(bytes)?;
            let p = procs.find(req.process.as_ref())?;
            let input = req
                .input
                .ok_or_else(|| RpcError::invalid("input is required"))?;
            write_input(&p, input).await?;
            Ok(connect::unary_ok(&Empty {}))
        }
        "SendSignal" => {
            let req: SendSignalRequest = connect::decode(bytes)?;
            let p = procs.find(req.process.as_ref())?;
            let sig = match req.signal {
                Signal::Sigkill => nix::sys::signal::Signal::SIGKILL,
                Signal::Sigterm => nix::sys::signal::Signal::SIGTERM,
                Signal::Unspecified => {
                    return Err(RpcError::invalid(
                        "signal is required (SIGNAL_SIGTERM or SIGNAL_SIGKILL)",
                    ))
                }
            };
            p.signal(sig)?;
            Ok(connect::unary_ok(&Empty {}))
        }
        "CloseStdin" => {
            let req: CloseStdinRequest = connect::decode(bytes)?;
            procs.find(req.process.as_ref())?.close_stdin().await?;
            Ok(connect::unary_ok(&Empty {}))
        }
        "Update" => {
            let req: UpdateRequest = connect::decode(bytes)?;
            let p = procs.find(req.process.as_ref())?;
            if let Some(size) = req.pty.and_then(|p| p.size) {
                p.resize(size.cols, size.rows)?;
            }
            Ok(connect::unary_ok(&Empty {}))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("unknown method {method}"),
        )),
    }
}

async fn write_input(
    p: &super::Proc,
    input: kiln_api::agent::process::ProcessInput,
) -> Result<(), RpcError> {
    match (input.stdin, input.pty) {
        (Some(d), None) => p.write_stdin(&d).await,
        (None, Some(d)) => p.write_pty(&d).await,
        (None, None) => Ok(()),
        (Some(_), Some(_)) => Err(RpcError::invalid("input sets both stdin and pty")),
    }
}

async fn start(
    state: &Arc<AgentState>,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, RpcError> {
    let req: StartRequest = connect::read_stream_request(body).await?;
    let user = state.rpc_user(headers)?;
    let config = req
        .process
        .ok_or_else(|| RpcError::invalid("process config is required"))?;
    if config.cmd.is_empty() {
        return Err(RpcError::invalid("process cmd is empty"));
    }
    super::limits::check_args(std::iter::once(&config.cmd).chain(config.args.iter()))?;
    let settings = state.settings();
    let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => resolve_path(c, &user)?,
        None => match settings.default_workdir.as_deref() {
            Some(w) => resolve_path(w, &user)?,
            None => user.home.clone(),
        },
    };
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(RpcError::invalid(format!(
                "cwd {} is not a directory",
                cwd.display()
            )))
        }
        Err(e) => return Err(RpcError::invalid(format!("cwd {}: {e}", cwd.display()))),
    }

    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.clone()),
        ("PATH".into(), DEFAULT_PATH.into()),
    ];
    let pty = match &req.pty {
        Some(p) => {
            let size = p.size.clone().unwrap_or_default();
            let cols = size.cols.clamp(1, u16::MAX as u32) as u16;
            let rows = size.rows.clamp(1, u16::MAX as u32) as u16;
            env.push(("TERM".into(), "xterm-256color".into()));
            Some((
                if size.cols == 0 { 80 } else { cols },
                if size.rows == 0 { 24 } else { rows },
            ))
        }
        None => None,
    };
    super::limits::check_env(config.envs.iter())?;
    for (k, v) in settings.env_vars.iter().chain(config.envs.iter()) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    super::limits::check_env(env.iter().map(|(k, v)| (k, v)))?;

    let timeout = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);

    let spec = StartSpec {
        spawn: SpawnSpec {
            cmd: config.cmd.clone(),
            args: config.args.clone(),
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            pty,
            stdin: req.stdin.unwrap_or(true),
        },
        config,
        tag: req.tag,
        timeout,
    };
    state.processes.start(spec)
}

async fn connect_to(
    state: &Arc<AgentState>,
    body: Incoming,
) -> Result<tokio::sync::mpsc::Receiver<bytes::Bytes>, RpcError> {
    let req: ConnectRequest = connect::read_stream_request(body).await?;
    let p = state.processes.find(req.process.as_ref())?;
    Ok(p.subscribe())
}

/// A client stream: the first message selects the process, the next ones
/// carry input, written in order.
async fn stream_input(state: &Arc<AgentState>, mut body: Incoming) -> Result<(), RpcError> {
    use http_body_util::BodyExt;
    let mut reader = EnvelopeReader::default();
    let mut target: Option<Arc<super::Proc>> = None;
    loop {
        while let Some((flags, msg)) = reader.next()? {
            if flags & 0x02 != 0 {
                return Ok(());
            }
            let req: StreamInputRequest = connect::decode(&msg)?;
            if let Some(start) = req.start {
                target = Some(state.processes.find(start.process.as_ref())?);
            } else if let Some(data) = req.data {
                let p = target.as_ref().ok_or_else(|| {
                    RpcError::invalid(
                        "the input stream must start with a start message selecting the process",
                    )
                })?;
                if let Some(input) = data.input {
                    write_input(p, input).await?;
                }
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    reader.push(d);
                }
            }
            Some(Err(e)) => {
                return Err(RpcError::new(
                    Code::Canceled,
                    format!("reading the input stream failed: {e}"),
                ))
            }
            None => {
                if reader.is_empty() {
                    return Ok(());
                }
                return Err(RpcError::invalid("the input stream ended inside a message"));
            }
        }
    }
}
