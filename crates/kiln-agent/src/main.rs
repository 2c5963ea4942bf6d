//! kiln-agent: the process inside every sandbox. It serves E2B's envd API
//! (Connect RPC `process.Process` and `filesystem.Filesystem`, plus `/files`,
//! `/health`, `/envs`, `/init`) on one port over HTTP/1.1 and h2c, and, as
//! the sandbox's PID 1, reaps orphans, passes signals on and shuts down
//! cleanly on SIGTERM.

mod clock;
mod connect;
mod error;
mod fs;
mod guard;
mod malloc;
mod process;
mod ready;
mod server;
mod state;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use process::reaper::Reaper;

const USAGE: &str = "usage: kiln-agent [--listen ADDR:PORT] [--max-processes N] [--memory-limit BYTES]
  --listen         where to serve (default 0.0.0.0:49983)
  --max-processes  RLIMIT_NPROC of everything the agent starts
  --memory-limit   kill the largest process while the sandbox uses more (for a kernel with no OOM killer)";

fn main() -> anyhow::Result<()> {
    malloc::tune();
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], kiln_api::agent::AGENT_PORT));
    let mut memory_limit = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().context(USAGE)?;
                listen = v
                    .parse()
                    .with_context(|| format!("bad --listen address {v:?}"))?;
            }
            "--max-processes" => {
                let v = args.next().context(USAGE)?;
                let n: u64 = v
                    .parse()
                    .with_context(|| format!("bad --max-processes {v:?}"))?;
                guard::limit_processes(n)?;
            }
            "--memory-limit" => {
                let v = args.next().context(USAGE)?;
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("bad --memory-limit {v:?}"))?;
                memory_limit = Some(n);
            }
            "--version" => {
                println!(
                    "kiln-agent {} (envd {})",
                    env!("CARGO_PKG_VERSION"),
                    kiln_api::agent::ENVD_VERSION
                );
                return Ok(());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }

    // Not dumpable: root inside the sandbox has no CAP_SYS_PTRACE, so it
    // cannot attach to (and so stop or rewrite) the agent it depends on.
    // Spawned commands become dumpable again at their execve.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("cannot make the agent non-dumpable")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(2))
        .thread_stack_size(1 << 20)
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(listen, memory_limit))
}

async fn run(listen: SocketAddr, memory_limit: Option<u64>) -> anyhow::Result<()> {
    let pid1 = rustix::process::getpid().as_raw_nonzero().get() == 1;
    let reaper = Arc::new(Reaper::default());
    let state = state::AgentState::new(reaper.clone());

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    if let Ok(addr) = listener.local_addr() {
        println!("kiln-agent listening on {addr}");
    }
    ready::signal_ready();

    tokio::spawn(process::reaper::run(reaper.clone()));
    if let Some(limit) = memory_limit {
        tokio::spawn(guard::watch_memory(limit));
    }
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(listener, state.clone(), closed_rx));

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut close_listener = signal(SignalKind::from_raw(
        kiln_api::agent::CLOSE_LISTENER_SIGNAL.0,
    ))
    .context("close-listener signal handler")?;
    let mut reopen_listener = signal(SignalKind::from_raw(
        kiln_api::agent::REOPEN_LISTENER_SIGNAL.0,
    ))
    .context("reopen-listener signal handler")?;
    let forward = |sig: Signal| {
        if pid1 {
            // As init: everyone else in the sandbox.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig);
        } else {
            state.processes.signal_all(sig);
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => forward(Signal::SIGHUP),
            _ = usr1.recv() => forward(Signal::SIGUSR1),
            _ = usr2.recv() => forward(Signal::SIGUSR2),
            _ = close_listener.recv() => {
                let _ = closed_tx.send(true);
            }
            _ = reopen_listener.recv() => {
                let _ = closed_tx.send(false);
            }
        }
    }

    // Clean shutdown: stop accepting, ask processes to end, then insist.
    server.abort();
    forward(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        reaper.reap();
        if reaper.running().is_empty() && (!pid1 || no_children()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forward(Signal::SIGKILL);
    for pid in reaper.running() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    reaper.reap();
    Ok(())
}

/// Whether the agent has no children left (as PID 1: the sandbox is empty).
fn no_children() -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    matches!(
        waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Err(nix::errno::Errno::ECHILD)
    )
}
