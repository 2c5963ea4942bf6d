//! `kiln shell <id>`: an interactive shell on a PTY in the sandbox. Our
//! terminal goes to raw mode; keys go to the PTY, its output comes back; a
//! resize of our window (SIGWINCH) resizes the PTY. The terminal is restored
//! when the shell exits, when the connection fails, and on SIGTERM/SIGHUP.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{bail, Context};
use kiln_client::{ProcessEvent, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use super::connection::ClientArgs;

#[derive(clap::Args, Debug)]
pub struct ShellArgs {
    /// Sandbox id (see `kiln sandbox list`).
    pub id: String,
    /// Run as this user (default: the sandbox's, `user`).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory (default: the user's home).
    #[arg(long, short = 'w')]
    pub cwd: Option<String>,
    /// Run this command on the PTY instead of a login shell.
    #[arg(long, short = 'c')]
    pub command: Option<String>,
}

/// Raw mode for as long as it lives.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn size() -> (u16, u16) {
    crossterm::terminal::size().unwrap_or((80, 24))
}

pub async fn run(args: ShellArgs, client_args: &ClientArgs) -> anyhow::Result<i32> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "kiln shell needs a terminal on stdin; for scripts use `kiln exec {} -- <command>`",
            args.id
        );
    }
    let client = client_args.client()?;
    let sbx = client.sandbox(&args.id).await?.with_user(args.user.clone());
    let mut envs = BTreeMap::new();
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t != "dumb")
        .unwrap_or_else(|| "xterm-256color".into());
    envs.insert("TERM".to_string(), term);
    let (cols, rows) = size();
    let opts = StartOptions {
        command: args.command.clone().unwrap_or_default(),
        envs,
        cwd: args.cwd.clone(),
        pty: Some((cols, rows)),
        stdin: false,
        timeout: None,
    };
    let mut stream = sbx.start(&opts).await?;
    let pid = stream.started().await?;

    let mut winch = signal(SignalKind::window_change())?;
    let mut term_sig = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;

    let raw = RawMode::enable()?;
    // Keys: one task, so they arrive in order.
    let keys = {
        let sbx = sbx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 4096];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sbx.send_pty(pid, buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut out = tokio::io::stdout();
    let result: anyhow::Result<i32> = loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Ok(Some(ProcessEvent::Pty(b))) | Ok(Some(ProcessEvent::Stdout(b))) | Ok(Some(ProcessEvent::Stderr(b))) => {
                    if out.write_all(&b).await.is_err() || out.flush().await.is_err() {
                        break Ok(1);
                    }
                }
                Ok(Some(ProcessEvent::Exited(x))) => break Ok(x.code),
                Ok(Some(ProcessEvent::Started { .. })) => {}
                Ok(None) => break Err(anyhow::anyhow!("the connection to the sandbox ended before the shell did")),
                Err(e) => break Err(e.into()),
            },
            _ = winch.recv() => {
                let (c, r) = size();
                let _ = sbx.resize_pty(pid, c, r).await;
            }
            _ = term_sig.recv() => {
                let _ = sbx.signal(pid, true).await;
                break Ok(143);
            }
            _ = hup.recv() => {
                let _ = sbx.signal(pid, true).await;
                break Ok(129);
            }
        }
    };
    keys.abort();
    drop(raw);
    result
}
