//! Users and groups from the `/etc/passwd` and `/etc/group` of the root the
//! agent sees (read on each use, so users added in the sandbox count), and
//! the acting user of a request.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use http::HeaderMap;
use kiln_api::agent::Code;

use crate::error::RpcError;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// A user requests act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Supplementary groups (from `/etc/group` member lists).
    pub groups: Vec<u32>,
}

/// Looks a user up by name.
pub fn lookup(name: &str) -> Result<User, RpcError> {
    let passwd = std::fs::read_to_string(PASSWD)
        .map_err(|e| RpcError::internal(format!("reading {PASSWD} failed: {e}")))?;
    let mut user = passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| u.name == name)
        .ok_or_else(|| {
            RpcError::new(
                Code::Unauthenticated,
                format!("user {name:?} does not exist"),
            )
        })?;
    if let Ok(group) = std::fs::read_to_string(GROUP) {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(gid) = f[2].parse::<u32>() else {
                continue;
            };
            if gid != user.gid && f[3].split(',').any(|m| m.trim() == name) {
                user.groups.push(gid);
            }
        }
    }
    Ok(user)
}

fn parse_passwd_line(line: &str) -> Option<User> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(User {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
        shell: if f[6].is_empty() {
            "/bin/sh".to_string()
        } else {
            f[6].to_string()
        },
        groups: Vec::new(),
    })
}

/// uid → name and gid → name, for listing many entries at once.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn load() -> Names {
        let mut n = Names::default();
        for (path, map) in [(PASSWD, &mut n.users), (GROUP, &mut n.groups)] {
            if let Ok(text) = std::fs::read_to_string(path) {
                for line in text.lines() {
                    let f: Vec<&str> = line.split(':').collect();
                    if f.len() >= 3 {
                        if let Ok(id) = f[2].parse::<u32>() {
                            map.entry(id).or_insert_with(|| f[0].to_string());
                        }
                    }
                }
            }
        }
        n
    }

    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// The user named by `Authorization: Basic base64("user:")`, if any.
pub fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        RpcError::new(
            Code::Unauthenticated,
            "malformed Authorization header: expected Basic base64(\"user:\")",
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let (scheme, cred) = v.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let name = text.split(':').next().unwrap_or("");
    if name.is_empty() {
        return Ok(None);
    }
    Ok(Some(name.to_string()))
}
