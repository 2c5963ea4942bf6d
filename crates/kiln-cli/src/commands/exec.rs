//! `kiln exec <id> -- cmd…`: runs a command, streams its stdout and stderr
//! to ours, and exits with its exit code (128 + n when signal n killed it).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use kiln_client::{ProcessEvent, StartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

use super::connection::ClientArgs;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Sandbox id (see `kiln sandbox list`).
    pub id: String,
    /// Working directory in the sandbox (default: the user's home).
    #[arg(long, short = 'w')]
    pub cwd: Option<String>,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (default: the sandbox's, `user`).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Kill the command after this many seconds (default: no limit).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Pass our stdin to the command.
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// The command; one argument is run by bash as it is (`'echo $HOME'`),
    /// several are quoted first.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Quotes one word for bash unless it is made of safe characters.
pub fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

async fn stop(sbx: &kiln_client::SandboxConn, pid: u32, signalled: &mut bool) {
    let _ = sbx.signal(pid, *signalled).await;
    *signalled = true;
}

async fn write<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

/// Runs the command; returns its exit code.
pub async fn run(args: ExecArgs, client_args: &ClientArgs) -> anyhow::Result<i32> {
    let mut envs = BTreeMap::new();
    for e in &args.env {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--env {e:?} must be KEY=VALUE");
        };
        envs.insert(k.to_string(), v.to_string());
    }
    let command = if args.command.len() == 1 {
        args.command[0].clone()
    } else {
        args.command
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let client = client_args.client()?;
    let sbx = client.sandbox(&args.id).await?.with_user(args.user.clone());
    let opts = StartOptions {
        command,
        envs,
        cwd: args.cwd.clone(),
        pty: None,
        stdin: args.stdin,
        timeout: args.timeout.map(Duration::from_secs),
    };
    let mut stream = sbx.start(&opts).await?;
    let pid = stream.started().await?;
    let feeder = args.stdin.then(|| {
        let sbx = sbx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sbx.send_stdin(pid, buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sbx.close_stdin(pid).await;
        })
    });
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    // Ctrl-C, SIGTERM or SIGHUP here: SIGTERM to the command (SIGKILL the
    // second time), and keep relaying until it ends.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut signalled = false;
    let code = loop {
        let ev = tokio::select! {
            ev = stream.next() => ev?,
            _ = int.recv() => { stop(&sbx, pid, &mut signalled).await; continue }
            _ = term.recv() => { stop(&sbx, pid, &mut signalled).await; continue }
            _ = hup.recv() => { stop(&sbx, pid, &mut signalled).await; continue }
        };
        let written = match ev {
            Some(ProcessEvent::Stdout(b)) | Some(ProcessEvent::Pty(b)) => write(&mut out, &b).await,
            Some(ProcessEvent::Stderr(b)) => write(&mut err, &b).await,
            Some(ProcessEvent::Exited(x)) => {
                if let Some(e) = x.error {
                    eprintln!("kiln: {e}");
                }
                break x.code;
            }
            Some(ProcessEvent::Started { .. }) => Ok(()),
            None => bail!("the connection to the sandbox ended before the command did"),
        };
        match written {
            Ok(()) => {}
            // Our reader went away (`kiln exec … | head`): stop the command
            // and exit as a shell would after SIGPIPE.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                let _ = sbx.signal(pid, true).await;
                break 141;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(f) = feeder {
        f.abort();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
