//! One `POST /execute`: runs a cell in a context and streams its output as
//! NDJSON lines, interrupting the kernel on timeout or when the client goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep, Instant};

use crate::context::Context;
use crate::kernel::{Kernel, KernelEvent};
use crate::language::{main_result, reset_env_code, set_env_code, MainResult};
use crate::output::{event_of, is_unmarked_display, Event, Output};

/// A silent cell gets a keepalive line this often, so a client that went
/// away is noticed (the write fails) and its cell interrupted.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// After an interrupt, how long the kernel has to go idle before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// After the idle status, how long to wait for the shell reply.
const REPLY_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("environment variable name {0:?} is not valid (letters, digits and _, not starting with a digit)")]
    BadEnvName(String),
    #[error("timeout must be a positive number of seconds, not {0}")]
    BadTimeout(f64),
}

/// A validated execution request.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub code: String,
    pub env_vars: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// The sandbox's own env vars (see [`crate::envs`]): set in the
    /// kernel for good, under the cell's own `env_vars`.
    pub sandbox_env: BTreeMap<String, String>,
}

impl Cell {
    pub fn new(
        code: String,
        env_vars: Option<BTreeMap<String, String>>,
        timeout_secs: Option<f64>,
    ) -> Result<Cell, ExecuteError> {
        let env_vars = env_vars.unwrap_or_default();
        if let Some(bad) = env_vars.keys().find(|k| !valid_env_name(k)) {
            return Err(ExecuteError::BadEnvName(bad.clone()));
        }
        let timeout = match timeout_secs {
            None => None,
            Some(0.0) => None,
            Some(t) if t.is_finite() && t > 0.0 && t < 1e9 => Some(Duration::from_secs_f64(t)),
            Some(t) => return Err(ExecuteError::BadTimeout(t)),
        };
        Ok(Cell {
            code,
            env_vars,
            timeout,
            sandbox_env: BTreeMap::new(),
        })
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Starts the cell; its NDJSON lines arrive on the returned channel, the last
/// one `end_of_execution`. Dropping the receiver interrupts the cell.
pub fn spawn(context: Arc<Context>, cell: Cell) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(context, cell, tx));
    rx
}

/// Where lines go; remembers whether the client is still there.
struct Sink {
    tx: mpsc::Sender<String>,
    gone: bool,
}

impl Sink {
    async fn send(&mut self, output: &Output) {
        if !self.gone && self.tx.send(output.to_line()).await.is_err() {
            self.gone = true;
        }
    }
}

async fn run(context: Arc<Context>, cell: Cell, tx: mpsc::Sender<String>) {
    let mut sink = Sink { tx, gone: false };
    if cell.code.trim().is_empty() {
        sink.send(&Output::EndOfExecution).await;
        return;
    }
    // One cell at a time per context; give up if the client leaves while queued.
    let _running = tokio::select! {
        guard = context.exec_lock.clone().lock_owned() => guard,
        _ = sink.tx.closed() => return,
    };
    // The handler started the kernel; it is missing only when a restart
    // failed since.
    let Some(kernel) = context.kernel() else {
        sink.send(&Output::error(
            "KernelDied",
            "the context has no running kernel; restart the context to continue",
        ))
        .await;
        sink.send(&Output::EndOfExecution).await;
        return;
    };
    let language = context.info.language.as_str();

    let changed = {
        let given = kernel.sandbox_env.lock().unwrap_or_else(|p| p.into_inner());
        crate::envs::changes(&cell.sandbox_env, &given)
    };
    if !changed.is_empty() {
        run_silent(&kernel, &set_env_code(language, &changed)).await;
        kernel
            .sandbox_env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(changed);
    }
    if !cell.env_vars.is_empty() {
        let code = set_env_code(language, &cell.env_vars);
        run_silent(&kernel, &code).await;
    }
    if run_cell(&kernel, main_result(language), &cell, &mut sink).await == Ended::Killed {
        // The kernel ignored the interrupt (IJavascript has no interrupt):
        // keep the context usable with a fresh kernel; its state is gone.
        if let Err(e) = context.respawn().await {
            tracing::error!(context = %context.info.id, "failed to restart the kernel: {e}");
        }
        sink.send(&Output::EndOfExecution).await;
        return;
    }
    if !cell.env_vars.is_empty() && kernel.death().is_none() {
        let given = kernel
            .sandbox_env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let code = reset_env_code(language, &cell.env_vars, &given);
        run_silent(&kernel, &code).await;
    }
    sink.send(&Output::EndOfExecution).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The kernel went idle (or died by itself).
    Normally,
    /// The kernel ignored an interrupt and was killed.
    Killed,
}

async fn run_cell(kernel: &Kernel, rule: MainResult, cell: &Cell, sink: &mut Sink) -> Ended {
    let mut request = match kernel.execute(&cell.code, false).await {
        Ok(r) => r,
        Err(e) => {
            sink.send(&Output::error(
                "KernelDied",
                format!("{e}; restart the context to continue"),
            ))
            .await;
            return Ended::Normally;
        }
    };
    let mut ended = Ended::Normally;
    let deadline = cell.timeout.map(|t| Instant::now() + t);
    let mut keepalive = interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    // Set once the cell is being stopped: by timeout or because the client left.
    let mut stopping_since: Option<Instant> = None;
    let mut idle_at: Option<Instant> = None;
    let mut error_sent = false;
    // Done when both the idle status (all output sent) and the reply are in.
    let mut replied = false;
    // MainResult::LastValueDisplay: the latest value display, held back
    // until the next output shows it was not the cell's last.
    let mut held: Option<Output> = None;
    let mut completed = false;

    loop {
        let stop_deadline = stopping_since.map(|s| s + INTERRUPT_GRACE);
        let reply_deadline = idle_at.map(|s| s + REPLY_GRACE);
        tokio::select! {
            event = request.events.recv() => match event {
                Some(KernelEvent::Message(message)) => match event_of(&message) {
                    Event::Output(out) => {
                        if matches!(out, Output::Error { .. }) {
                            if error_sent { continue; }
                            error_sent = true;
                        }
                        keepalive.reset();
                        if let Some(earlier) = held.take() {
                            sink.send(&earlier).await;
                        }
                        if rule == MainResult::LastValueDisplay && is_unmarked_display(&message) {
                            held = Some(out);
                            continue;
                        }
                        sink.send(&out).await;
                    }
                    Event::Idle => {
                        if replied { completed = true; break; }
                        idle_at = Some(Instant::now());
                    }
                    Event::Reply(error) => {
                        if let Some(out) = error {
                            if !error_sent {
                                error_sent = true;
                                if let Some(earlier) = held.take() {
                                    sink.send(&earlier).await;
                                }
                                sink.send(&out).await;
                            }
                        }
                        replied = true;
                        if idle_at.is_some() { completed = true; break; }
                    }
                    Event::Ignore => {}
                },
                Some(KernelEvent::Died(_)) | None => {
                    if !error_sent {
                        let how = kernel.death().unwrap_or_else(|| "the kernel stopped".to_owned());
                        sink.send(&Output::error(
                            "KernelDied",
                            format!("{how}; restart the context to continue"),
                        ))
                        .await;
                    }
                    break;
                }
            },
            _ = sleep_until_opt(reply_deadline) => { completed = true; break }
            _ = sleep_until_opt(deadline), if stopping_since.is_none() => {
                tracing::debug!("execution timed out, interrupting");
                stopping_since = Some(Instant::now());
                kernel.interrupt().await;
                if !error_sent {
                    error_sent = true;
                    let secs = cell.timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                    sink.send(&Output::error(
                        "TimeoutError",
                        format!("execution timed out after {secs} s and was interrupted"),
                    ))
                    .await;
                }
            }
            _ = sink.tx.closed(), if !sink.gone && stopping_since.is_none() => {
                tracing::debug!("client went away, interrupting");
                sink.gone = true;
                stopping_since = Some(Instant::now());
                kernel.interrupt().await;
            }
            _ = sleep_until_opt(stop_deadline) => {
                tracing::warn!("kernel did not stop after an interrupt; killing and restarting it");
                kernel.kill();
                ended = Ended::Killed;
                if !error_sent {
                    sink.send(&Output::error(
                        "KernelRestarted",
                        "the kernel did not stop after an interrupt; it was restarted and its state is lost",
                    ))
                    .await;
                }
                break;
            }
            _ = keepalive.tick() => {
                sink.send(&Output::Keepalive).await;
            }
        }
        if sink.gone && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
            kernel.interrupt().await;
        }
    }
    kernel.forget(&request.msg_id);
    if let Some(mut last) = held {
        // The value nothing followed is the main result, unless the cell
        // failed or was stopped.
        if let Output::Result(result) = &mut last {
            result.is_main_result = completed && !error_sent;
        }
        sink.send(&last).await;
    }
    ended
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs bookkeeping code (environment variables, a kernel's start-up code)
/// without output or history.
pub(crate) async fn run_silent(kernel: &Kernel, code: &str) {
    if code.is_empty() {
        return;
    }
    let Ok(mut request) = kernel.execute(code, true).await else {
        return;
    };
    let give_up = sleep(Duration::from_secs(10));
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            event = request.events.recv() => match event {
                Some(KernelEvent::Message(m)) => match event_of(&m) {
                    Event::Idle => break,
                    Event::Output(Output::Error { name, value, .. }) => {
                        tracing::warn!("setting environment variables failed: {name}: {value}");
                    }
                    _ => {}
                },
                _ => break,
            },
            _ = &mut give_up => break,
        }
    }
    kernel.forget(&request.msg_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(valid_env_name("A_1"));
        assert!(valid_env_name("_x"));
        assert!(!valid_env_name("1A"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
        assert!(!valid_env_name("A;rm -rf /"));
        let vars = BTreeMap::from([("A B".to_owned(), "1".to_owned())]);
        assert!(matches!(
            Cell::new("x".into(), Some(vars), None),
            Err(ExecuteError::BadEnvName(_))
        ));
    }

    #[test]
    fn timeouts_are_checked() {
        assert!(Cell::new("x".into(), None, Some(-1.0)).is_err());
        assert!(Cell::new("x".into(), None, Some(f64::NAN)).is_err());
        assert_eq!(
            Cell::new("x".into(), None, Some(0.0)).unwrap().timeout,
            None
        );
        assert_eq!(
            Cell::new("x".into(), None, Some(1.5)).unwrap().timeout,
            Some(Duration::from_millis(1500))
        );
    }
}
