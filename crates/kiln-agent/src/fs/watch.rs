//! Directory watches with inotify: streamed (`WatchDir`) or polled
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use kiln_api::agent::filesystem::{
    Empty, EventType, FilesystemEvent, WatchDirResponse, WatchRequest,
};
use kiln_api::agent::Code;
use tokio::sync::mpsc;

use super::creds::blocking;
use super::entry::entry_info;
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
        let mut dirs = Vec::new();
        if recursive {
            collect_dirs(&r, &mut dirs);
        }
        Ok(dirs)
    })
    .await??;
    let inotify = Inotify::init().map_err(|e| RpcError::internal(format!("inotify: {e}")))?;
    let mut w = Watch {
        inotify,
        root: root.clone(),
        recursive,
        include_entry: req.include_entry,
        dirs: HashMap::new(),
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
        if let Ok(wd) = watches.add(&d, mask()) {
            if let Ok(rel) = d.strip_prefix(&root) {
                w.dirs.insert(wd, rel.to_path_buf());
            }
        }
    }
    Ok(w)
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let p = e.path();
            out.push(p.clone());
            collect_dirs(&p, out);
        }
    }
}

/// Where a watch's events go.
enum Sink {
    Stream(mpsc::Sender<Bytes>),
    Poll(Arc<Mutex<Vec<FilesystemEvent>>>),
}

impl Sink {
    async fn emit(&self, ev: FilesystemEvent) -> bool {
        match self {
            Sink::Stream(tx) => tx
                .send(envelope(&WatchDirResponse {
                    filesystem: Some(ev),
                    ..Default::default()
                }))
                .await
                .is_ok(),
            Sink::Poll(buf) => {
                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                if b.len() >= MAX_POLLED_EVENTS {
                    b.remove(0);
                }
                b.push(ev);
                true
            }
        }
    }
}

async fn run(w: Watch, sink: Sink) {
    let Watch {
        inotify,
        root,
        recursive,
        include_entry,
        mut dirs,
    } = w;
    let Ok(mut stream) = inotify.into_event_stream(vec![0u8; 4096]) else {
        return;
    };
    let mut watches: Watches = stream.watches();
    loop {
        let next = match &sink {
            Sink::Stream(tx) => tokio::select! {
                n = stream.next() => n,
                _ = tx.closed() => return,
            },
            Sink::Poll(_) => stream.next().await,
        };
        let Some(Ok(ev)) = next else { return };
        if ev.mask.contains(EventMask::IGNORED) {
            dirs.remove(&ev.wd);
            if dirs.is_empty() {
                return;
            }
            continue;
        }
        let Some(dir) = dirs.get(&ev.wd).cloned() else {
            continue;
        };
        let name: Option<OsString> = ev.name.map(|n| n.to_os_string());
        let rel = match &name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        let kind = if ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            if recursive && ev.mask.contains(EventMask::ISDIR) {
                let abs = root.join(&rel);
                let mut new_dirs = vec![abs.clone()];
                collect_dirs(&abs, &mut new_dirs);
                for d in new_dirs {
                    if let Ok(wd) = watches.add(&d, mask()) {
                        if let Ok(r) = d.strip_prefix(&root) {
                            dirs.insert(wd, r.to_path_buf());
                        }
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
            continue;
        };
        // Events about a subdirectory itself also arrive from its parent.
        if name.is_none() && !rel.as_os_str().is_empty() {
            continue;
        }
        let entry = if include_entry
            && matches!(
                kind,
                EventType::Create | EventType::Write | EventType::Chmod
            ) {
            entry_info(&root.join(&rel), &Names::load()).ok()
        } else {
            None
        };
        let fe = FilesystemEvent {
            name: rel.to_string_lossy().into_owned(),
            kind,
            entry,
        };
        if !sink.emit(fe).await {
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
        run(w, Sink::Stream(tx)).await;
        let _ = done.send(end_stream(None)).await;
    });
    Ok(rx)
}

struct Polled {
    events: Arc<Mutex<Vec<FilesystemEvent>>>,
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
        let w = open_watch(req, user).await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(w, Sink::Poll(events.clone())));
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("w{n}-{nanos:08x}");
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Polled { events, task });
        Ok(id)
    }

    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, RpcError> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let w = map
            .get(id)
            .ok_or_else(|| RpcError::not_found(format!("watcher {id:?} not found")))?;
        let mut ev = w.events.lock().unwrap_or_else(|p| p.into_inner());
        Ok(std::mem::take(&mut *ev))
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
