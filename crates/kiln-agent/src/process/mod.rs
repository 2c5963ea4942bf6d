//! `process.Process`: starting processes, streaming their output to any
//! number of attached streams, input, signals, PTY resize.

pub mod limits;
pub mod reaper;
pub mod rpc;
pub mod spawn;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kiln_api::agent::process::{
    DataEvent, EndEvent, EventResponse, ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector,
    StartEvent,
};
use kiln_api::agent::Code;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::connect::{end_stream, envelope};
use crate::error::RpcError;
use reaper::{ExitStatus, Reaper};

/// Events buffered per attached stream before the process is slowed down.
const SUBSCRIBER_QUEUE: usize = 16;
/// Read size for process output.
const READ_CHUNK: usize = 32 * 1024;
/// How long output is still collected after the process exited, for
/// descendants that keep its stdout open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// A PTY master, readable and writable without blocking the runtime.
pub type PtyMaster = Arc<AsyncFd<OwnedFd>>;

enum Input {
    None,
    Pipe(pipe::Sender),
    Pty(PtyMaster),
}

pub struct Proc {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    pty: Option<PtyMaster>,
    input: tokio::sync::Mutex<Input>,
    subscribers: Mutex<Vec<mpsc::Sender<Bytes>>>,
}

impl Proc {
    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            config: Some(self.config.clone()),
            pid: self.pid,
            tag: self.tag.clone(),
        }
    }

    /// A new stream of this process's events, starting with `start{pid}`.
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let _ = tx.try_send(event_envelope(ProcessEvent {
            start: Some(StartEvent { pid: self.pid }),
            ..Default::default()
        }));
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), RpcError> {
        let mut input = self.input.lock().await;
        let res = match &mut *input {
            Input::Pipe(p) => p.write_all(data).await,
            Input::Pty(m) => write_pty(m, data).await,
            Input::None => {
                return Err(RpcError::new(
                    Code::FailedPrecondition,
                    format!(
                        "process {} has no stdin (start it with stdin enabled)",
                        self.pid
                    ),
                ))
            }
        };
        res.map_err(|e| {
            RpcError::new(
                Code::FailedPrecondition,
                format!("writing to the input of process {} failed: {e}", self.pid),
            )
        })
    }

    pub async fn write_pty(&self, data: &[u8]) -> Result<(), RpcError> {
        match &self.pty {
            Some(m) => write_pty(m, data).await.map_err(|e| {
                RpcError::new(
                    Code::FailedPrecondition,
                    format!("writing to the PTY of process {} failed: {e}", self.pid),
                )
            }),
            None => Err(RpcError::invalid(format!(
                "process {} has no PTY",
                self.pid
            ))),
        }
    }

    pub async fn close_stdin(&self) -> Result<(), RpcError> {
        let mut input = self.input.lock().await;
        match &*input {
            Input::Pty(_) => Err(RpcError::invalid(format!(
                "process {} reads from a PTY: send Ctrl-D (0x04) instead of closing stdin",
                self.pid
            ))),
            _ => {
                *input = Input::None;
                Ok(())
            }
        }
    }

    pub fn resize(&self, cols: u32, rows: u32) -> Result<(), RpcError> {
        let Some(m) = &self.pty else {
            return Err(RpcError::invalid(format!(
                "process {} has no PTY",
                self.pid
            )));
        };
        if cols == 0 || rows == 0 || cols > u16::MAX as u32 || rows > u16::MAX as u32 {
            return Err(RpcError::invalid(format!("invalid PTY size {cols}x{rows}")));
        }
        spawn::resize(m.get_ref(), cols as u16, rows as u16)
            .map_err(|e| RpcError::internal(format!("resizing the PTY failed: {e}")))
    }

    /// Sends `sig` to the process's group (it leads its own session), or to
    /// the process alone if that fails.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), RpcError> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::killpg(pid, sig)
            .or_else(|_| nix::sys::signal::kill(pid, sig))
            .map_err(|e| {
                RpcError::not_found(format!("signalling process {} failed: {e}", self.pid))
            })
    }
}

async fn write_pty(m: &PtyMaster, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = m.writable().await?;
        match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(Into::into)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

fn event_envelope(event: ProcessEvent) -> Bytes {
    envelope(&EventResponse { event: Some(event) })
}

/// A started process's description, from the request.
pub struct StartSpec {
    pub spawn: spawn::SpawnSpec,
    pub config: ProcessConfig,
    pub tag: Option<String>,
    /// Kill the process after this long (the request's Connect timeout).
    pub timeout: Option<Duration>,
}

pub struct Processes {
    reaper: Arc<Reaper>,
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
}

impl Processes {
    pub fn new(reaper: Arc<Reaper>) -> Processes {
        Processes {
            reaper,
            procs: Mutex::new(HashMap::new()),
        }
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ProcessInfo> = procs.values().map(|p| p.info()).collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    pub fn find(&self, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, RpcError> {
        let sel = sel.ok_or_else(|| RpcError::invalid("process selector is required"))?;
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pid) = sel.pid {
            return procs
                .get(&pid)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with pid {pid} not found")));
        }
        if let Some(tag) = &sel.tag {
            return procs
                .values()
                .find(|p| p.tag.as_deref() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("process with tag {tag:?} not found")));
        }
        Err(RpcError::invalid("process selector needs a pid or a tag"))
    }

    /// Starts a process; returns the stream of its events (the first one
    /// being `start{pid}`).
    pub fn start(self: &Arc<Self>, spec: StartSpec) -> Result<mpsc::Receiver<Bytes>, RpcError> {
        let (pid, io, exit) = self
            .reaper
            .spawn_registered(|| spawn::spawn(&spec.spawn))
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::TOOBIG.raw_os_error()) {
                    return limits::too_big(&spec.spawn.cmd);
                }
                let code = match e.kind() {
                    std::io::ErrorKind::NotFound => Code::NotFound,
                    std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                    _ => Code::Internal,
                };
                RpcError::new(code, format!("starting {:?} failed: {e}", spec.spawn.cmd))
            })?;

        let pty = match io.pty_master {
            Some(m) => {
                Some(Arc::new(spawn::nonblocking_async_fd(m).map_err(|e| {
                    RpcError::internal(format!("PTY setup failed: {e}"))
                })?))
            }
            None => None,
        };
        let input = match (&pty, io.stdin) {
            (Some(m), _) => Input::Pty(m.clone()),
            (None, Some(fd)) => match pipe::Sender::from_owned_fd(fd) {
                Ok(s) => Input::Pipe(s),
                Err(_) => Input::None,
            },
            (None, None) => Input::None,
        };
        let proc = Arc::new(Proc {
            pid,
            tag: spec.tag,
            config: spec.config,
            pty: pty.clone(),
            input: tokio::sync::Mutex::new(input),
            subscribers: Mutex::new(Vec::new()),
        });
        let rx = proc.subscribe();
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, proc.clone());

        // Output readers feed one ordered queue; the pump fans it out.
        let (ev_tx, ev_rx) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
        let mut readers = Vec::new();
        if let Some(m) = pty {
            readers.push(tokio::spawn(read_pty(m, ev_tx.clone())));
        }
        for (fd, is_err) in [(io.stdout, false), (io.stderr, true)] {
            if let Some(fd) = fd {
                if let Ok(r) = pipe::Receiver::from_owned_fd(fd) {
                    readers.push(tokio::spawn(read_pipe(r, is_err, ev_tx.clone())));
                }
            }
        }
        drop(ev_tx);

        if let Some(t) = spec.timeout {
            let p = proc.clone();
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                if let Some(me) = weak.upgrade() {
                    let still = me
                        .procs
                        .lock()
                        .unwrap_or_else(|x| x.into_inner())
                        .contains_key(&p.pid);
                    if still {
                        let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
                    }
                }
            });
        }

        let me = self.clone();
        tokio::spawn(async move {
            let end = pump(&proc, ev_rx, exit, readers).await;
            me.procs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&proc.pid);
            let subs =
                std::mem::take(&mut *proc.subscribers.lock().unwrap_or_else(|p| p.into_inner()));
            let end_ev = event_envelope(ProcessEvent {
                end: Some(end),
                ..Default::default()
            });
            let fin = end_stream(None);
            for s in subs {
                if s.send(end_ev.clone()).await.is_ok() {
                    let _ = s.send(fin.clone()).await;
                }
            }
        });
        Ok(rx)
    }

    /// Signals every running process started by the agent.
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) {
        let procs: Vec<Arc<Proc>> = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for p in procs {
            let _ = p.signal(sig);
        }
    }
}

/// Fans output out to the attached streams in order until the process has
/// exited and its output is drained; returns its end event.
async fn pump(
    proc: &Proc,
    mut events: mpsc::Receiver<Bytes>,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) -> EndEvent {
    let mut exit = Some(exit);
    let mut status: Option<Result<ExitStatus, ()>> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let ev = tokio::select! {
            biased;
            ev = events.recv() => ev,
            st = async { exit.as_mut().expect("guarded by is_some").await }, if exit.is_some() => {
                exit = None;
                status = Some(st.map_err(|_| ()));
                deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                continue;
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded by is_some")).await }, if deadline.is_some() => {
                None
            }
        };
        let Some(ev) = ev else { break };
        let subs: Vec<mpsc::Sender<Bytes>> = proc
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut dead = Vec::new();
        for s in subs {
            if s.send(ev.clone()).await.is_err() {
                dead.push(s);
            }
        }
        if !dead.is_empty() {
            proc.subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| !dead.iter().any(|d| d.same_channel(s)));
        }
    }
    for r in readers {
        r.abort();
    }
    // Output ended before the exit status arrived: wait for it.
    if status.is_none() {
        if let Some(exit) = exit {
            status = Some(exit.await.map_err(|_| ()));
        }
    }
    match status {
        Some(Ok(ExitStatus::Exited(code))) => EndEvent {
            exit_code: code,
            exited: true,
            status: format!("exit status {code}"),
            error: None,
        },
        Some(Ok(ExitStatus::Signaled(sig))) => EndEvent {
            exit_code: -1,
            exited: false,
            status: format!("signal: {}", signal_name(sig)),
            error: None,
        },
        _ => EndEvent {
            exit_code: -1,
            exited: false,
            status: "unknown".to_string(),
            error: Some("the exit status of the process was lost".to_string()),
        },
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

async fn read_pipe(mut r: pipe::Receiver, is_err: bool, tx: mpsc::Sender<Bytes>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let ev = if is_err {
                    DataEvent {
                        stderr: Some(data),
                        ..Default::default()
                    }
                } else {
                    DataEvent {
                        stdout: Some(data),
                        ..Default::default()
                    }
                };
                let env = event_envelope(ProcessEvent {
                    data: Some(ev),
                    ..Default::default()
                });
                if tx.send(env).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn read_pty(m: PtyMaster, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let Ok(mut guard) = m.readable().await else {
            break;
        };
        match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
            Ok(Ok(0)) | Ok(Err(_)) => break, // EIO: every slave end is closed
            Ok(Ok(n)) => {
                let ev = DataEvent {
                    pty: Some(buf[..n].to_vec()),
                    ..Default::default()
                };
                let env = event_envelope(ProcessEvent {
                    data: Some(ev),
                    ..Default::default()
                });
                if tx.send(env).await.is_err() {
                    break;
                }
            }
            Err(_would_block) => continue,
        }
    }
}
