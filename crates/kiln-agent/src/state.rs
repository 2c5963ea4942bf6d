//! What the agent remembers between requests: the settings `/init` sends,
//! running processes and watchers.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use kiln_api::agent::Code;

use crate::error::RpcError;
use crate::fs::watch::Watchers;
use crate::process::reaper::Reaper;
use crate::process::Processes;
use crate::users::{self, User};

/// Settings from `/init`.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub access_token: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub default_user: Option<String>,
    pub default_workdir: Option<String>,
}

pub struct AgentState {
    pub settings: RwLock<Settings>,
    pub processes: Arc<Processes>,
    pub watchers: Watchers,
}

/// The user a request acts as when it names none.
pub const DEFAULT_USER: &str = "user";

impl AgentState {
    pub fn new(reaper: Arc<Reaper>) -> Arc<AgentState> {
        Arc::new(AgentState {
            settings: RwLock::new(Settings::default()),
            processes: Arc::new(Processes::new(reaper)),
            watchers: Watchers::default(),
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a request's `X-Access-Token` is the one `/init` set.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let s = self.settings.read().unwrap_or_else(|p| p.into_inner());
        match &s.access_token {
            None => true,
            Some(token) => headers
                .get(kiln_api::agent::ACCESS_TOKEN_HEADER)
                .map(|v| constant_time_eq(v.as_bytes(), token.as_bytes()))
                .unwrap_or(false),
        }
    }

    /// The acting user: `name` if given, else the default user (from
    /// `/init`, else `user`, else root when the image has no `user`).
    pub fn user(&self, name: Option<&str>) -> Result<User, RpcError> {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            return users::lookup(name);
        }
        if let Some(d) = self.settings().default_user {
            return users::lookup(&d);
        }
        users::lookup(DEFAULT_USER).or_else(|_| users::lookup("root"))
    }

    /// The acting user of an RPC (from `Authorization`).
    pub fn rpc_user(&self, headers: &HeaderMap) -> Result<User, RpcError> {
        let name = users::basic_auth_user(headers)?;
        self.user(name.as_deref())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves a path from a request: `~` and relative paths against the
/// user's home, `.` and `..` removed lexically. Empty paths and NUL bytes
/// are refused.
pub fn resolve_path(path: &str, user: &User) -> Result<PathBuf, RpcError> {
    resolve_os_path(Path::new(path), user)
}

pub fn resolve_os_path(path: &Path, user: &User) -> Result<PathBuf, RpcError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(RpcError::invalid("path is empty"));
    }
    if bytes.contains(&0) {
        return Err(RpcError::invalid("path contains a NUL byte"));
    }
    if bytes.len() > 4096 {
        return Err(RpcError::new(
            Code::InvalidArgument,
            "path is longer than 4096 bytes",
        ));
    }
    let joined = if bytes == b"~" {
        user.home.clone()
    } else if let Some(rest) = bytes.strip_prefix(b"~/") {
        user.home.join(std::ffi::OsStr::from_bytes(rest))
    } else if path.is_absolute() {
        path.to_path_buf()
    } else {
        user.home.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}
