//! Processes in a sandbox (`process.Process`): start and stream output, send
//! input, resize a PTY, signal.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_api::agent::process::{
    self as wire, EventResponse, ProcessConfig, ProcessInput, ProcessSelector, Pty, PtySize,
    SendInputRequest, SendSignalRequest, Signal, StartRequest, UpdateRequest,
};
use kiln_api::agent::AGENT_PORT;
use reqwest::Method;

use crate::connect::{envelope, StreamReader};
use crate::error::{Error, Result};
use crate::sandbox::SandboxConn;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// A shell command line, run as `/bin/bash -l -c <command>`.
    pub command: String,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// A PTY of this size (cols, rows) instead of pipes; the command then
    /// runs as given (use `/bin/bash -i -l` for a shell).
    pub pty: Option<(u16, u16)>,
    /// Keep stdin open for [`SandboxConn::send_stdin`].
    pub stdin: bool,
    /// The agent kills the process after this long.
    pub timeout: Option<Duration>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal number when a signal killed it
    /// (as a shell reports it).
    pub code: i32,
    /// The agent's description (`exit status 1`, `signal: killed`).
    pub status: String,
    /// Set when the agent could not run or watch the process.
    pub error: Option<String>,
}

/// One event of a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    Started { pid: u32 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    Exited(ExitStatus),
}

/// The output of a started process, in order.
pub struct ProcessStream {
    reader: StreamReader,
    pub pid: Option<u32>,
}

/// The signal number in the agent's `signal: <name>` status.
fn signal_number(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    Some(match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "broken pipe" => 13,
        "terminated" => 15,
        other => other.strip_prefix("signal ")?.parse().ok()?,
    })
}

impl From<wire::EndEvent> for ExitStatus {
    fn from(e: wire::EndEvent) -> Self {
        let code = if e.exited {
            e.exit_code
        } else {
            signal_number(&e.status)
                .map(|s| 128 + s)
                .unwrap_or(e.exit_code)
        };
        ExitStatus {
            code,
            status: e.status,
            error: e.error,
        }
    }
}

impl ProcessStream {
    /// The next event; `None` after [`ProcessEvent::Exited`] (or if the
    /// stream ended without one).
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>> {
        loop {
            let Some(msg) = self.reader.next::<EventResponse>().await? else {
                return Ok(None);
            };
            let Some(ev) = msg.event else { continue };
            if let Some(s) = ev.start {
                self.pid = Some(s.pid);
                return Ok(Some(ProcessEvent::Started { pid: s.pid }));
            }
            if let Some(d) = ev.data {
                if let Some(b) = d.stdout {
                    return Ok(Some(ProcessEvent::Stdout(b)));
                }
                if let Some(b) = d.stderr {
                    return Ok(Some(ProcessEvent::Stderr(b)));
                }
                if let Some(b) = d.pty {
                    return Ok(Some(ProcessEvent::Pty(b)));
                }
                continue;
            }
            if let Some(end) = ev.end {
                return Ok(Some(ProcessEvent::Exited(end.into())));
            }
        }
    }

    /// Waits for the start event and returns the pid.
    pub async fn started(&mut self) -> Result<u32> {
        match self.next().await? {
            Some(ProcessEvent::Started { pid }) => Ok(pid),
            other => Err(Error::Invalid(format!(
                "the process did not start (first event: {other:?})"
            ))),
        }
    }
}

/// Everything a finished command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitStatus,
}

fn select(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        pid: Some(pid),
        tag: None,
    })
}

impl SandboxConn {
    /// `process.Process/Start`: starts a process and streams its events.
    pub async fn start(&self, opts: &StartOptions) -> Result<ProcessStream> {
        let (cmd, args) = if opts.pty.is_some() && opts.command.is_empty() {
            ("/bin/bash".to_string(), vec!["-i".into(), "-l".into()])
        } else {
            (
                "/bin/bash".to_string(),
                vec!["-l".into(), "-c".into(), opts.command.clone()],
            )
        };
        let mut envs = opts.envs.clone();
        if opts.pty.is_some() {
            envs.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
        }
        let req = StartRequest {
            process: Some(ProcessConfig {
                cmd,
                args,
                envs,
                cwd: opts.cwd.clone(),
            }),
            pty: opts.pty.map(|(cols, rows)| Pty {
                size: Some(PtySize {
                    cols: cols.into(),
                    rows: rows.into(),
                }),
            }),
            tag: None,
            stdin: Some(opts.stdin),
        };
        let path = format!("/{}/Start", wire::SERVICE);
        let mut rb = self
            .agent(Method::POST, &path)
            .header("Content-Type", "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .body(envelope(&req));
        if let Some(t) = opts.timeout {
            rb = rb.header("Connect-Timeout-Ms", t.as_millis().to_string());
        }
        let resp = self.send(rb, AGENT_PORT, &path).await?;
        let url = self.client.url(&path);
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(
                match serde_json::from_str::<kiln_api::agent::ConnectErrorBody>(&text) {
                    Ok(e) => crate::connect::agent_error(e),
                    Err(_) => Error::Agent {
                        code: status.as_u16().to_string(),
                        message: text,
                    },
                },
            );
        }
        Ok(ProcessStream {
            reader: StreamReader::new(resp, url),
            pid: None,
        })
    }

    /// Runs a command to its end and collects its output.
    pub async fn run(&self, opts: &StartOptions) -> Result<CommandOutput> {
        let mut s = self.start(opts).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(ev) = s.next().await? {
            match ev {
                ProcessEvent::Stdout(b) | ProcessEvent::Pty(b) => stdout.extend(b),
                ProcessEvent::Stderr(b) => stderr.extend(b),
                ProcessEvent::Exited(exit) => {
                    return Ok(CommandOutput {
                        stdout,
                        stderr,
                        exit,
                    })
                }
                ProcessEvent::Started { .. } => {}
            }
        }
        Err(Error::Invalid(
            "the process's stream ended before it exited".into(),
        ))
    }

    async fn input(&self, pid: u32, input: ProcessInput) -> Result<()> {
        let req = SendInputRequest {
            process: select(pid),
            input: Some(input),
        };
        let _: wire::Empty = self.unary(wire::SERVICE, "SendInput", &req).await?;
        Ok(())
    }

    /// Writes to a process's stdin (started with `stdin: true`).
    pub async fn send_stdin(&self, pid: u32, data: Vec<u8>) -> Result<()> {
        self.input(
            pid,
            ProcessInput {
                stdin: Some(data),
                pty: None,
            },
        )
        .await
    }

    /// Types into a process's PTY.
    pub async fn send_pty(&self, pid: u32, data: Vec<u8>) -> Result<()> {
        self.input(
            pid,
            ProcessInput {
                stdin: None,
                pty: Some(data),
            },
        )
        .await
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        let req = wire::CloseStdinRequest {
            process: select(pid),
        };
        let _: wire::Empty = self.unary(wire::SERVICE, "CloseStdin", &req).await?;
        Ok(())
    }

    /// Resizes a process's PTY.
    pub async fn resize_pty(&self, pid: u32, cols: u16, rows: u16) -> Result<()> {
        let req = UpdateRequest {
            process: select(pid),
            pty: Some(Pty {
                size: Some(PtySize {
                    cols: cols.into(),
                    rows: rows.into(),
                }),
            }),
        };
        let _: wire::Empty = self.unary(wire::SERVICE, "Update", &req).await?;
        Ok(())
    }

    /// Sends SIGKILL (`kill: true`) or SIGTERM to a process.
    pub async fn signal(&self, pid: u32, kill: bool) -> Result<()> {
        let req = SendSignalRequest {
            process: select(pid),
            signal: if kill {
                Signal::Sigkill
            } else {
                Signal::Sigterm
            },
        };
        let _: wire::Empty = self.unary(wire::SERVICE, "SendSignal", &req).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_become_shell_exit_codes() {
        let e = wire::EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: None,
        };
        assert_eq!(ExitStatus::from(e).code, 137);
        let e = wire::EndEvent {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: None,
        };
        assert_eq!(ExitStatus::from(e).code, 3);
        assert_eq!(signal_number("signal: signal 10"), Some(10));
    }
}
