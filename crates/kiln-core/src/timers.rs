//! Per-sandbox timeout timers, the metrics sampler and the runtime's event
//! watcher.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use kiln_runtime::{RuntimeEvent, RuntimeKind};
use tokio::sync::broadcast;
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

/// Samples every running sandbox's resource use each
/// `CoreConfig::metrics_interval` (one task for all sandboxes, so that a
/// thousand idle ones cost one timer). Ends with the core.
pub(crate) fn spawn_metrics_sampler(core: &Core) {
    let weak: Weak<Inner> = Arc::downgrade(&core.inner);
    let every = core
        .inner
        .config
        .metrics_interval
        .max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            Core { inner }.sample_metrics().await;
        }
    });
}

/// Each runtime's events, subscribed to before they are watched.
pub(crate) fn subscribe_runtime_events(
    core: &Core,
) -> Vec<(RuntimeKind, broadcast::Receiver<RuntimeEvent>)> {
    core.inner
        .runtimes
        .backends()
        .map(|b| (b.runtime.kind(), b.runtime.subscribe()))
        .collect()
}

/// Marks sandboxes killed when a runtime says they ended on their own.
pub(crate) fn watch_runtime_events(
    core: &Core,
    subscribed: Vec<(RuntimeKind, broadcast::Receiver<RuntimeEvent>)>,
) {
    for (runtime, mut events) in subscribed {
        let weak: Weak<Inner> = Arc::downgrade(&core.inner);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let Some(inner) = weak.upgrade() else { return };
                        handle_event(&Core { inner }, event).await;
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, %runtime, "missed runtime events");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
}

async fn handle_event(core: &Core, event: RuntimeEvent) {
    match event {
        RuntimeEvent::Exited {
            id,
            oom_killed,
            exit_code,
        } => {
            let reason = if oom_killed {
                "its init was killed at the sandbox's memory limit".to_owned()
            } else {
                match exit_code {
                    Some(c) => format!("its init exited with {c}"),
                    None => "its init exited".to_owned(),
                }
            };
            core.exited(&id, &reason).await;
        }
        other => tracing::debug!(event = ?other, "runtime event"),
    }
}
