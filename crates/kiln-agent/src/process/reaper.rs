//! Child reaping. The agent may run as PID 1, where every orphan in the
//! sandbox becomes its child; it reaps them all with `waitpid(-1)` and hands
//! the exit status of the processes it spawned itself to whoever waits for
//! them. Spawning and reaping take the same lock, so a child that exits at
//! once is never reaped before it is registered.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// Runs `spawn` (which returns the new child's pid) with reaping held
    /// off, and registers the child so its exit status comes back on the
    /// returned channel.
    pub fn spawn_registered<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(u32, T)>,
    ) -> io::Result<(u32, T, oneshot::Receiver<ExitStatus>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let (pid, extra) = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid as i32, tx);
        Ok((pid, extra, rx))
    }

    /// Reaps every child that has exited; returns how many.
    pub fn reap(&self) -> usize {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    n += 1;
                    if let Some(tx) = waiting.remove(&pid.as_raw()) {
                        let _ = tx.send(ExitStatus::Exited(code));
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    n += 1;
                    if let Some(tx) = waiting.remove(&pid.as_raw()) {
                        let _ = tx.send(ExitStatus::Signaled(sig as i32));
                    }
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children left
            }
        }
        n
    }

    /// Pids of spawned processes still running.
    pub fn running(&self) -> Vec<i32> {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.keys().copied().collect()
    }
}

/// Reaps on every SIGCHLD (and once a second, in case a signal was missed)
/// until the runtime stops.
pub async fn run(reaper: std::sync::Arc<Reaper>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln-agent: cannot watch SIGCHLD ({e}); reaping by polling");
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                reaper.reap();
            }
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => {}
        }
        reaper.reap();
    }
}
