//! Directory watches with inotify: streamed (`WatchDir`) or polled
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use inotify::{EventMask, EventOwned, Inotify, WatchDescriptor, WatchMask};
use kiln_api::agent::filesystem::{
    Empty, EventType, FilesystemEvent, WatchDirResponse, WatchRequest,
};
use kiln_api::agent::Code;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::creds::blocking;
use super::entry::entry_info;
use super::tree::{self, MAX_WATCH_DIRS};
use crate::connect::{end_stream, envelope};
use crate::error::RpcError;
use crate::state::resolve_path;
use crate::users::{Names, User};

/// Events a polled watcher keeps before dropping the oldest.
const MAX_POLLED_EVENTS: usize = 10_000;
/// Most watchers alive at once.
const MAX_WATCHERS: usize = 256;

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

pub fn keepalive() -> Bytes {
    envelope(&WatchDirResponse {
        keepalive: Some(Empty {}),
        ..Default::default()
    })
}

/// A watch set up and ready to read: errors about the path come before.
struct Watch {
    inotify: Inotify,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// The watched directory is gone (or the inotify descriptor failed):
    /// no event will come any more.
    ended: bool,
}

async fn open_watch(req: WatchRequest, user: &User) -> Result<Watch, RpcError> {
    let root = resolve_path(&req.path, user)?;
    let recursive = req.recursive;
    let allow_network = req.allow_network_mounts;
    let r = root.clone();
    let subdirs = blocking(user, move || -> Result<Vec<PathBuf>, RpcError> {
        let m = std::fs::metadata(&r).map_err(|e| RpcError::io("watching", &r, &e))?;
        if !m.is_dir() {
            return Err(RpcError::invalid(format!(
                "{} is not a directory",
                r.display()
            )));
        }
        if let Some(kind) = super::metadata::network_fs(&r).filter(|_| !allow_network) {
            return Err(RpcError::invalid(format!(
                "{} is on a network filesystem ({kind}): set allow_network_mounts to watch it",
                r.display()
            )));
        }
        if !recursive {
            return Ok(Vec::new());
        }
        tree::subdirs(&r, MAX_WATCH_DIRS).map_err(|_| {
            RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "{} holds more than {MAX_WATCH_DIRS} directories: watch a smaller tree",
                    r.display()
                ),
            )
        })
    })
    .await?;
    let inotify = Inotify::init().map_err(|e| RpcError::internal(format!("inotify: {e}")))?;
    let mut w = Watch {
        inotify,
        root: root.clone(),
        recursive,
        include_entry: req.include_entry,
        dirs: HashMap::new(),
        ended: false,
    };
    let mut watches = w.inotify.watches();
    let wd = watches.add(&root, mask()).map_err(|e| {
        let code = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            Code::ResourceExhausted
        } else {
            crate::error::io_code(&e)
        };
        RpcError::new(code, format!("watching {} failed: {e}", root.display()))
    })?;
    w.dirs.insert(wd, PathBuf::new());
    for d in subdirs {
        w.add_dir(&d);
    }
    Ok(w)
}

impl Watch {
    fn add_dir(&mut self, d: &Path) {
        if self.dirs.len() >= MAX_WATCH_DIRS {
            return;
        }
        if let Ok(wd) = self.inotify.watches().add(d, mask()) {
            if let Ok(rel) = d.strip_prefix(&self.root) {
                self.dirs.insert(wd, rel.to_path_buf());
            }
        }
    }

    /// Translates every event the kernel holds now into `out`, without
    /// blocking: what happened before this call is in `out` after it.
    fn drain(&mut self, out: &mut Vec<FilesystemEvent>) {
        let mut buf = [0u8; 4096];
        while !self.ended {
            let events: Vec<EventOwned> = match self.inotify.read_events(&mut buf) {
                Ok(evs) => evs.map(|e| e.to_owned()).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.ended = true;
                    return;
                }
            };
            for ev in events {
                self.translate(ev, out);
            }
        }
    }

    /// One inotify event as envd (fsnotify) reports it: the name relative to
    /// the watched directory ("." for the directory itself), one type.
    fn translate(&mut self, ev: EventOwned, out: &mut Vec<FilesystemEvent>) {
        if ev.mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&ev.wd);
            if self.dirs.is_empty() {
                self.ended = true;
            }
            return;
        }
        let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
            return;
        };
        let rel = match &ev.name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        // Events about a subdirectory itself also arrive from its parent.
        if ev.name.is_none() && !rel.as_os_str().is_empty() {
            return;
        }
        let kind = if ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            if self.recursive && ev.mask.contains(EventMask::ISDIR) {
                let abs = self.root.join(&rel);
                self.add_dir(&abs);
                let room = MAX_WATCH_DIRS.saturating_sub(self.dirs.len());
                if let Ok(below) = tree::subdirs(&abs, room) {
                    for d in below {
                        self.add_dir(&d);
                    }
                }
            }
            EventType::Create
        } else if ev.mask.contains(EventMask::MODIFY) {
            EventType::Write
        } else if ev
            .mask
            .intersects(EventMask::DELETE | EventMask::DELETE_SELF)
        {
            EventType::Remove
        } else if ev
            .mask
            .intersects(EventMask::MOVED_FROM | EventMask::MOVE_SELF)
        {
            EventType::Rename
        } else if ev.mask.contains(EventMask::ATTRIB) {
            EventType::Chmod
        } else {
            return;
        };
        let entry = if self.include_entry
            && matches!(
                kind,
                EventType::Create | EventType::Write | EventType::Chmod
            ) {
            entry_info(&self.root.join(&rel), &Names::load()).ok()
        } else {
            None
        };
        let name = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            rel.to_string_lossy().into_owned()
        };
        out.push(FilesystemEvent { name, kind, entry });
    }

    /// A second descriptor of the same inotify instance, to wait on.
    fn readiness(&self) -> Option<AsyncFd<OwnedFd>> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.inotify, 0).ok()?;
        crate::process::spawn::nonblocking_async_fd(fd).ok()
    }
}

/// Streams a watch's events until the client goes away or the watched
/// directory does.
async fn run_stream(mut w: Watch, tx: mpsc::Sender<Bytes>) {
    let Some(ready) = w.readiness() else { return };
    loop {
        let guard = tokio::select! {
            g = ready.readable() => g,
            _ = tx.closed() => return,
        };
        let Ok(mut guard) = guard else { return };
        let mut events = Vec::new();
        w.drain(&mut events);
        guard.clear_ready();
        for ev in events {
            let msg = envelope(&WatchDirResponse {
                filesystem: Some(ev),
                ..Default::default()
            });
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        if w.ended {
            return;
        }
    }
}

/// Starts a streamed watch; the first envelope is the start event.
pub async fn watch_stream(
    req: WatchRequest,
    user: &User,
) -> Result<mpsc::Receiver<Bytes>, RpcError> {
    let w = open_watch(req, user).await?;
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.try_send(envelope(&WatchDirResponse {
        start: Some(Empty {}),
        ..Default::default()
    }));
    tokio::spawn(async move {
        let done = tx.clone();
        run_stream(w, tx).await;
        let _ = done.send(end_stream(None)).await;
    });
    Ok(rx)
}

/// A polled watcher: the watch and the events read from it but not taken
/// yet, under one lock so that they stay in order.
struct PollState {
    watch: Watch,
    events: VecDeque<FilesystemEvent>,
}

impl PollState {
    /// Moves what the kernel holds into `events`. Like the kernel's own
    /// queue, an event equal to the one before it (same name, same type,
    /// not taken yet) is one event: a file written in several chunks is one
    /// WRITE however the reads fell.
    fn pull(&mut self) {
        let mut new = Vec::new();
        self.watch.drain(&mut new);
        for ev in new {
            if let Some(last) = self.events.back_mut() {
                if last.name == ev.name && last.kind == ev.kind {
                    if ev.entry.is_some() {
                        last.entry = ev.entry;
                    }
                    continue;
                }
            }
            if self.events.len() >= MAX_POLLED_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(ev);
        }
    }
}

fn lock(state: &Mutex<PollState>) -> std::sync::MutexGuard<'_, PollState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a polled watcher's queue read while nobody asks, so the kernel's
/// queue does not overflow.
async fn run_polled(state: Arc<Mutex<PollState>>) {
    let Some(ready) = lock(&state).watch.readiness() else {
        return;
    };
    loop {
        let Ok(mut guard) = ready.readable().await else {
            return;
        };
        let ended = {
            let mut st = lock(&state);
            st.pull();
            st.watch.ended
        };
        guard.clear_ready();
        if ended {
            return;
        }
    }
}

struct Polled {
    state: Arc<Mutex<PollState>>,
    task: tokio::task::JoinHandle<()>,
}

/// Polled watchers by id.
#[derive(Default)]
pub struct Watchers {
    next: AtomicU64,
    map: Mutex<HashMap<String, Polled>>,
}

impl Watchers {
    pub async fn create(&self, req: WatchRequest, user: &User) -> Result<String, RpcError> {
        if self.map.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_WATCHERS {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("too many watchers (at most {MAX_WATCHERS})"),
            ));
        }
        let watch = open_watch(req, user).await?;
        let state = Arc::new(Mutex::new(PollState {
            watch,
            events: VecDeque::new(),
        }));
        let task = tokio::spawn(run_polled(state.clone()));
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("w{n}-{nanos:08x}");
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Polled { state, task });
        Ok(id)
    }

    /// The events since the last call, including every one the kernel
    /// queued before this call (a write that returned is in them).
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, RpcError> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let w = map
            .get(id)
            .ok_or_else(|| RpcError::not_found(format!("watcher {id:?} not found")))?;
        let mut st = lock(&w.state);
        st.pull();
        Ok(std::mem::take(&mut st.events).into())
    }

    pub fn remove(&self, id: &str) -> Result<(), RpcError> {
        let w = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| RpcError::not_found(format!("watcher {id:?} not found")))?;
        w.task.abort();
        Ok(())
    }
}
