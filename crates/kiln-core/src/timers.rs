//! Per-sandbox timeout timers and the runtime's event watcher.

use std::sync::{Arc, Weak};

use chrono::Utc;
use kiln_runtime::RuntimeEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::lifecycle::{lock, Core, Inner, Live};

/// Spawns the task that expires `live` when its deadline passes. The task
/// follows deadline changes and ends when the sandbox is gone.
pub(crate) fn spawn_timer(core: &Core, live: &Arc<Live>) {
    let weak: Weak<Inner> = Arc::downgrade(&core.inner);
    let id = lock(&live.record).id.clone();
    let mut rx = live.end_tx.subscribe();
    tokio::spawn(async move {
        loop {
            let end = *rx.borrow_and_update();
            let wait = (end - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    let Some(inner) = weak.upgrade() else { return };
                    Core { inner }.expire(&id, end).await;
                    // Paused, or the deadline moved: wait for the next change.
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return; // the live entry is gone: killed
                    }
                }
            }
            // Loop with the new deadline (the value was not yet marked seen
            // by `changed`; borrow_and_update reads it).
        }
    });
}

/// Marks sandboxes killed when the runtime says they ended on their own.
pub(crate) fn watch_runtime_events(core: &Core) {
    let weak: Weak<Inner> = Arc::downgrade(&core.inner);
    let mut events = core.inner.runtime.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let Some(inner) = weak.upgrade() else { return };
                    handle_event(&Core { inner }, event).await;
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "missed runtime events");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

async fn handle_event(core: &Core, event: RuntimeEvent) {
    #[allow(unreachable_patterns)] // runtimes may report more than exits
    match event {
        RuntimeEvent::Exited { id, oom_killed, .. } => {
            if oom_killed {
                tracing::info!(sandbox = %id, "sandbox was killed by the OOM killer");
            }
            core.exited(&id).await;
        }
        other => tracing::debug!(event = ?other, "runtime event"),
    }
}
