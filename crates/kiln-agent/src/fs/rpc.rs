//! The `filesystem.Filesystem` RPC handlers.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, Response};
use hyper::body::Incoming;
use kiln_api::agent::filesystem::{
    Empty, EntryInfo, EntryResponse, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MoveRequest, PathRequest, WatchRequest, WatcherIdMessage,
};
use kiln_api::agent::Code;

use super::creds::blocking;
use super::entry::entry_info;
use super::tree::{self, MAX_LIST_DEPTH, MAX_LIST_ENTRIES};
use super::watch;
use crate::connect::{self, Body, Framing};
use crate::error::RpcError;
use crate::state::{resolve_path, AgentState};
use crate::users::{Names, User};

pub async fn call(
    state: &Arc<AgentState>,
    method: &str,
    headers: &HeaderMap,
    body: Incoming,
    framing: Framing,
) -> Option<Response<Body>> {
    if method == "WatchDir" {
        if framing != Framing::Stream {
            return Some(connect::unary_error(&RpcError::new(
                Code::Unimplemented,
                "filesystem.Filesystem/WatchDir is a server stream: use application/connect+json",
            )));
        }
        let res = async {
            let req: WatchRequest = connect::read_stream_request(body).await?;
            let user = state.rpc_user(headers)?;
            watch::watch_stream(req, &user).await
        }
        .await;
        return Some(match res {
            Ok(rx) => connect::stream_from_channel(
                rx,
                Some((connect::keepalive_interval(headers), watch::keepalive())),
            ),
            Err(e) => connect::stream_error(&e),
        });
    }
    if !matches!(
        method,
        "Stat"
            | "MakeDir"
            | "Move"
            | "ListDir"
            | "Remove"
            | "CreateWatcher"
            | "GetWatcherEvents"
            | "RemoveWatcher"
    ) {
        return None;
    }
    if framing != Framing::Unary {
        return Some(connect::stream_error(&RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{method} is unary: use application/json"),
        )));
    }
    let res = async {
        let bytes = connect::read_body(body, connect::MAX_MESSAGE).await?;
        let user = state.rpc_user(headers)?;
        unary(state, method, &bytes, user).await
    }
    .await;
    Some(match res {
        Ok(r) => r,
        Err(e) => connect::unary_error(&e),
    })
}

async fn unary(
    state: &Arc<AgentState>,
    method: &str,
    bytes: &[u8],
    user: User,
) -> Result<Response<Body>, RpcError> {
    match method {
        "Stat" => {
            let req: PathRequest = connect::decode(bytes)?;
            let path = resolve_path(&req.path, &user)?;
            let entry = blocking(&user, move || stat(&path)).await?;
            Ok(connect::unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        "MakeDir" => {
            let req: PathRequest = connect::decode(bytes)?;
            let path = resolve_path(&req.path, &user)?;
            let entry = blocking(&user, move || make_dir(&path)).await?;
            Ok(connect::unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        "Move" => {
            let req: MoveRequest = connect::decode(bytes)?;
            let from = resolve_path(&req.source, &user)?;
            let to = resolve_path(&req.destination, &user)?;
            let entry = blocking(&user, move || rename(&from, &to)).await?;
            Ok(connect::unary_ok(&EntryResponse { entry: Some(entry) }))
        }
        "ListDir" => {
            let req: ListDirRequest = connect::decode(bytes)?;
            let path = resolve_path(&req.path, &user)?;
            let depth = req.depth.max(1);
            if depth > MAX_LIST_DEPTH {
                return Err(RpcError::invalid(format!(
                    "depth {depth} is over the limit of {MAX_LIST_DEPTH} levels"
                )));
            }
            let entries = blocking(&user, move || list_dir(&path, depth)).await?;
            Ok(connect::unary_ok(&ListDirResponse { entries }))
        }
        "Remove" => {
            let req: PathRequest = connect::decode(bytes)?;
            let path = resolve_path(&req.path, &user)?;
            blocking(&user, move || remove(&path)).await?;
            Ok(connect::unary_ok(&Empty {}))
        }
        "CreateWatcher" => {
            let req: WatchRequest = connect::decode(bytes)?;
            let id = state.watchers.create(req, &user).await?;
            Ok(connect::unary_ok(&WatcherIdMessage { watcher_id: id }))
        }
        "GetWatcherEvents" => {
            let req: WatcherIdMessage = connect::decode(bytes)?;
            let events = state.watchers.take_events(&req.watcher_id)?;
            Ok(connect::unary_ok(&GetWatcherEventsResponse { events }))
        }
        "RemoveWatcher" => {
            let req: WatcherIdMessage = connect::decode(bytes)?;
            state.watchers.remove(&req.watcher_id)?;
            Ok(connect::unary_ok(&Empty {}))
        }
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("unknown method {method}"),
        )),
    }
}

fn stat(path: &Path) -> Result<EntryInfo, RpcError> {
    entry_info(path, &Names::load()).map_err(|e| RpcError::io("stat", path, &e))
}

fn make_dir(path: &Path) -> Result<EntryInfo, RpcError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("directory {} already exists", path.display()),
            ))
        }
        Ok(_) => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("{} already exists and is not a directory", path.display()),
            ))
        }
        Err(_) => {}
    }
    tree::create_dir_all(path).map_err(|e| RpcError::io("creating directory", path, &e))?;
    stat(path)
}

fn rename(from: &Path, to: &Path) -> Result<EntryInfo, RpcError> {
    std::fs::symlink_metadata(from).map_err(|e| RpcError::io("moving", from, &e))?;
    if let Some(parent) = to.parent() {
        tree::create_dir_all(parent).map_err(|e| RpcError::io("creating directory", parent, &e))?;
    }
    std::fs::rename(from, to).map_err(|e| {
        RpcError::new(
            crate::error::io_code(&e),
            format!("moving {} to {} failed: {e}", from.display(), to.display()),
        )
    })?;
    stat(to)
}

/// Removes a file or a tree. Like envd (Go's `os.RemoveAll`), a path that
/// does not exist is not an error: the caller wanted it gone and it is.
fn remove(path: &Path) -> Result<(), RpcError> {
    if path == Path::new("/") {
        return Err(RpcError::invalid("refusing to remove /"));
    }
    tree::remove_all(path).map_err(|e| RpcError::io("removing", path, &e))
}

fn list_dir(path: &Path, depth: u32) -> Result<Vec<EntryInfo>, RpcError> {
    let m = std::fs::metadata(path).map_err(|e| RpcError::io("listing", path, &e))?;
    if !m.is_dir() {
        return Err(RpcError::invalid(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    std::fs::read_dir(path).map_err(|e| RpcError::io("listing", path, &e))?;
    let found = tree::list(path, depth, MAX_LIST_ENTRIES).map_err(|_| {
        RpcError::new(
            Code::ResourceExhausted,
            format!(
                "{} holds more than {MAX_LIST_ENTRIES} entries down to depth {depth}: list less deep",
                path.display()
            ),
        )
    })?;
    let names = Names::load();
    Ok(found
        .into_iter()
        .filter_map(|(p, _)| entry_info(&p, &names).ok())
        .collect())
}
