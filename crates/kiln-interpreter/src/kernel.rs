//! One running Jupyter kernel: its process, its ZeroMQ channels (through
//! `jupyter-zmq-client`), and the routing of its messages to the request that
//! caused them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, InterruptRequest, JupyterMessage, KernelInfoRequest,
    ShutdownRequest,
};
use jupyter_zmq_client::{
    ClientControlConnection, DealerSendConnection, KernelspecDir, RuntimeError,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// How long a kernel may take from spawn to answering `kernel_info_request`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one attempt to connect the kernel's channels may take.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("failed to write the connection file {path}")]
    ConnectionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start kernel {kernel}")]
    Spawn {
        kernel: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {kernel}: {source}")]
    Protocol {
        kernel: String,
        #[source]
        source: RuntimeError,
    },
    #[error("kernel {kernel} exited while starting ({status}){stderr}")]
    ExitedEarly {
        kernel: String,
        status: String,
        /// The end of what it wrote to stderr, as `: <text>`, or empty.
        stderr: String,
    },
    #[error("kernel {kernel} did not answer within {secs} s of starting")]
    StartTimeout { kernel: String, secs: u64 },
    #[error("the kernel is not running: {0}")]
    Dead(String),
}

/// A kernel's stderr, passed on to ours line by line, with its last lines
/// kept to explain a kernel that dies while starting.
struct StderrTail {
    lines: Arc<Mutex<std::collections::VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrTail {
    const KEEP: usize = 8;

    fn follow(child: &mut tokio::process::Child, kernel: &str) -> StderrTail {
        use tokio::io::AsyncBufReadExt;
        let lines: Arc<Mutex<std::collections::VecDeque<String>>> = Arc::default();
        let reader = child.stderr.take().map(|stderr| {
            let (lines, kernel) = (lines.clone(), kernel.to_owned());
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = stream.next_line().await {
                    eprintln!("[kernel {kernel}] {line}");
                    let mut kept = lines.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() == Self::KEEP {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            })
        });
        StderrTail { lines, reader }
    }

    /// What the kernel has written, as `: <last lines>`, once its stderr is
    /// closed (a second at most: a grandchild may hold it open).
    async fn text(mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = timeout(Duration::from_secs(1), reader).await;
        }
        let kept = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let text = kept.iter().map(|l| l.trim()).filter(|l| !l.is_empty());
        let text: Vec<&str> = text.collect();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {}", text.join(" | "))
        }
    }
}

/// What the kernel's channels deliver to the request that caused it.
#[derive(Debug)]
pub enum KernelEvent {
    /// A message from iopub or a reply from shell whose parent is the request.
    Message(Box<JupyterMessage>),
    /// The kernel process exited; the text says how.
    Died(String),
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<KernelEvent>>>>;

/// A request submitted to the kernel: its id and the stream of its messages.
pub struct Submitted {
    pub msg_id: String,
    pub events: mpsc::UnboundedReceiver<KernelEvent>,
}

pub struct Kernel {
    name: String,
    pgid: Pid,
    interrupt_by_message: bool,
    shell: tokio::sync::Mutex<DealerSendConnection>,
    control: tokio::sync::Mutex<ClientControlConnection>,
    routes: Routes,
    death: Arc<Mutex<Option<String>>>,
    tasks: Vec<JoinHandle<()>>,
    connection_file: PathBuf,
    /// The sandbox's env vars this kernel was given on top of the
    /// environment it inherited (see [`crate::envs`]).
    pub sandbox_env: Mutex<BTreeMap<String, String>>,
}

impl Kernel {
    /// Spawns the kernel described by `spec` in `cwd`, connects its channels
    /// and waits until it answers on both shell and iopub.
    pub async fn start(
        spec: &KernelspecDir,
        cwd: &Path,
        runtime_dir: &Path,
    ) -> Result<Kernel, KernelError> {
        let name = spec.kernel_name.clone();
        let protocol = |source| KernelError::Protocol {
            kernel: name.clone(),
            source,
        };
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (ports, listeners) = jupyter_zmq_client::peek_ports_with_listeners(ip, 5)
            .await
            .map_err(protocol)?;
        let info = ConnectionInfo {
            ip: ip.to_string(),
            transport: jupyter_protocol::connection_info::Transport::TCP,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: uuid::Uuid::new_v4().to_string(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: Some(name.clone()),
        };
        let connection_file = runtime_dir.join(format!("kernel-{}.json", uuid::Uuid::new_v4()));
        let body = serde_json::to_vec(&info).unwrap_or_default();
        tokio::fs::write(&connection_file, body)
            .await
            .map_err(|source| KernelError::ConnectionFile {
                path: connection_file.clone(),
                source,
            })?;

        let mut command = spec
            .clone()
            .command(&connection_file, Some(Stdio::piped()), Some(Stdio::null()))
            .map_err(protocol)?;
        command
            .current_dir(cwd)
            .process_group(0)
            .kill_on_drop(true)
            .env("PWD", cwd)
            // ipykernel warns on every start about frozen modules otherwise.
            .env("PYDEVD_DISABLE_FILE_VALIDATION", "1");
        let mut child = command.spawn().map_err(|source| KernelError::Spawn {
            kernel: name.clone(),
            source,
        })?;
        drop(listeners);
        let stderr_tail = StderrTail::follow(&mut child, &name);
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        let pgid = Pid::from_raw(pid);
        tracing::debug!(kernel = %name, pid, "kernel spawned");

        // Wait until the kernel has bound its shell port before connecting:
        // zeromq's own reconnect backs off exponentially, which would add up
        // to a second to every start.
        let started = Instant::now();
        let shell_addr = (Ipv4Addr::LOCALHOST, info.shell_port);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = tokio::fs::remove_file(&connection_file).await;
                return Err(KernelError::ExitedEarly {
                    kernel: name,
                    status: status.to_string(),
                    stderr: stderr_tail.text().await,
                });
            }
            if let Ok(probe) = tokio::net::TcpStream::connect(shell_addr).await {
                // Linux can connect a socket to itself when nothing listens on
                // a port of the ephemeral range: that is no kernel.
                if probe.local_addr().ok() != probe.peer_addr().ok() {
                    break;
                }
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = tokio::fs::remove_file(&connection_file).await;
                return Err(KernelError::StartTimeout {
                    kernel: name,
                    secs: STARTUP_TIMEOUT.as_secs(),
                });
            }
            sleep(Duration::from_millis(10)).await;
        }

        let session_id = uuid::Uuid::new_v4().to_string();
        let connect = || async {
            let iopub =
                jupyter_zmq_client::create_client_iopub_connection(&info, "", &session_id).await?;
            let identity = jupyter_zmq_client::peer_identity_for_session(&session_id)?;
            let shell = jupyter_zmq_client::create_client_shell_connection_with_identity(
                &info,
                &session_id,
                identity,
            )
            .await?;
            let control =
                jupyter_zmq_client::create_client_control_connection(&info, &session_id).await?;
            Ok::<_, RuntimeError>((iopub, shell, control))
        };
        // Some kernels (IRkernel) reset the first connections made while they
        // are still setting up their sockets: retry until the startup deadline.
        // Each attempt gets a few seconds: a handshake that stalls (seen under
        // load, right after the kernel bound its ports) is abandoned and
        // retried instead of eating the whole startup allowance.
        let connect = async {
            loop {
                let attempt = match timeout(CONNECT_ATTEMPT, connect()).await {
                    Ok(r) => r,
                    Err(_) => Err(RuntimeError::IoError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting to the kernel's channels timed out",
                    ))),
                };
                match attempt {
                    Ok(conns) => return Ok(conns),
                    Err(e)
                        if started.elapsed() < STARTUP_TIMEOUT
                            && !matches!(child.try_wait(), Ok(Some(_))) =>
                    {
                        tracing::debug!(kernel = %name, "connecting failed, retrying: {e}");
                        sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let (mut iopub, shell, control) = match timeout(STARTUP_TIMEOUT, connect).await {
            Ok(Ok(conns)) => conns,
            Ok(Err(source)) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = tokio::fs::remove_file(&connection_file).await;
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(KernelError::ExitedEarly {
                        kernel: name,
                        status: status.to_string(),
                        stderr: stderr_tail.text().await,
                    });
                }
                return Err(protocol(source));
            }
            Err(_) => {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = tokio::fs::remove_file(&connection_file).await;
                return Err(KernelError::StartTimeout {
                    kernel: name,
                    secs: STARTUP_TIMEOUT.as_secs(),
                });
            }
        };
        let (shell_tx, mut shell_rx) = shell.split();

        let routes: Routes = Arc::default();
        let death: Arc<Mutex<Option<String>>> = Arc::default();
        let mut tasks = Vec::new();

        // iopub and shell readers: deliver each message to its request.
        let r = routes.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match iopub.read().await {
                    Ok(message) => deliver(&r, message),
                    Err(e) => {
                        tracing::debug!("iopub read failed: {e}");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
        let r = routes.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match shell_rx.read().await {
                    Ok(message) => deliver(&r, message),
                    Err(e) => {
                        tracing::debug!("shell read failed: {e}");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
        // The process: when it exits, every waiting request hears of it.
        let (r, d, kernel_name) = (routes.clone(), death.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => format!("the kernel process exited ({status})"),
                Err(e) => format!("the kernel process could not be waited for: {e}"),
            };
            tracing::info!(kernel = %kernel_name, "{how}");
            *d.lock().unwrap_or_else(|p| p.into_inner()) = Some(how.clone());
            let waiting: Vec<_> = r
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            for (_, tx) in waiting {
                let _ = tx.send(KernelEvent::Died(how.clone()));
            }
        }));

        let kernel = Kernel {
            name: name.clone(),
            pgid,
            interrupt_by_message: spec.kernelspec.interrupt_mode.as_deref() == Some("message"),
            shell: tokio::sync::Mutex::new(shell_tx),
            control: tokio::sync::Mutex::new(control),
            routes,
            death,
            tasks,
            connection_file,
            sandbox_env: Mutex::default(),
        };
        kernel.wait_ready(started).await?;
        tracing::info!(kernel = %name, ms = started.elapsed().as_millis() as u64, "kernel ready");
        Ok(kernel)
    }

    /// Asks for kernel info until an iopub message for the request arrives:
    /// that proves the iopub subscription is live, so no output of the first
    /// cell is lost. A kernel that never publishes a status for kernel info
    /// is taken as ready after its third reply.
    async fn wait_ready(&self, started: Instant) -> Result<(), KernelError> {
        let mut replies = 0;
        loop {
            let mut request = self
                .submit(JupyterMessage::new(KernelInfoRequest {}, None))
                .await?;
            let deadline = Instant::now() + Duration::from_millis(1000);
            let (mut replied, mut published) = (false, false);
            while !published {
                match tokio::time::timeout_at(deadline, request.events.recv()).await {
                    Ok(Some(KernelEvent::Message(m))) => {
                        if m.header.msg_type == "kernel_info_reply" {
                            replied = true;
                        } else {
                            published = true;
                        }
                    }
                    Ok(Some(KernelEvent::Died(how))) => {
                        return Err(KernelError::ExitedEarly {
                            kernel: self.name.clone(),
                            status: how,
                            stderr: String::new(),
                        })
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            self.forget(&request.msg_id);
            replies += usize::from(replied);
            if published || replies >= 3 {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(KernelError::StartTimeout {
                    kernel: self.name.clone(),
                    secs: STARTUP_TIMEOUT.as_secs(),
                });
            }
        }
    }

    /// Why the kernel is not running, if it is not.
    pub fn death(&self) -> Option<String> {
        how_of(&self.death)
    }

    /// Sends a request on shell; its iopub messages and reply come on the
    /// returned channel until [`Kernel::forget`].
    pub async fn submit(&self, message: JupyterMessage) -> Result<Submitted, KernelError> {
        if let Some(how) = self.death() {
            return Err(KernelError::Dead(how));
        }
        let msg_id = message.header.msg_id.clone();
        let (tx, events) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(msg_id.clone(), tx);
        let sent = self.shell.lock().await.send(message).await;
        if let Err(source) = sent {
            self.forget(&msg_id);
            return Err(KernelError::Protocol {
                kernel: self.name.clone(),
                source,
            });
        }
        Ok(Submitted { msg_id, events })
    }

    /// Sends `code` for execution.
    pub async fn execute(&self, code: &str, silent: bool) -> Result<Submitted, KernelError> {
        let request = ExecuteRequest {
            code: code.to_owned(),
            silent,
            store_history: !silent,
            user_expressions: None,
            allow_stdin: false,
            stop_on_error: false,
        };
        self.submit(JupyterMessage::new(request, None)).await
    }

    /// Stops routing messages of a finished request.
    pub fn forget(&self, msg_id: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(msg_id);
    }

    /// Interrupts the running cell, as the kernelspec's `interrupt_mode` says:
    /// an `interrupt_request` on control, or SIGINT to the kernel's process group.
    pub async fn interrupt(&self) {
        tracing::debug!(kernel = %self.name, "interrupting");
        if self.interrupt_by_message {
            let mut control = self.control.lock().await;
            let message = JupyterMessage::new(InterruptRequest {}, None);
            if control.send(message).await.is_ok() {
                let _ = timeout(Duration::from_secs(2), control.read()).await;
            }
        } else if let Err(e) = killpg(self.pgid, Signal::SIGINT) {
            tracing::debug!(kernel = %self.name, "SIGINT failed: {e}");
        }
    }

    /// Asks the kernel to shut down, and kills its process group if it has
    /// not exited within a second.
    pub async fn shutdown(&self) {
        if self.death().is_none() {
            let mut control = self.control.lock().await;
            let message = JupyterMessage::new(ShutdownRequest { restart: false }, None);
            if control.send(message).await.is_ok() {
                let _ = timeout(Duration::from_millis(500), control.read()).await;
            }
            drop(control);
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.death().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }

    /// Kills the kernel's whole process group.
    pub fn kill(&self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.kill();
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.connection_file);
    }
}

fn deliver(routes: &Routes, message: JupyterMessage) {
    let Some(parent) = message.parent_header.as_ref().map(|h| h.msg_id.clone()) else {
        return;
    };
    let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = routes.get(&parent) {
        let _ = tx.send(KernelEvent::Message(Box::new(message)));
    }
}

fn how_of(death: &Mutex<Option<String>>) -> Option<String> {
    death.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
