//! `filesystem.Filesystem` messages in proto3-JSON form (see
//! `proto/filesystem.proto`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::json::{int64, null_default};

/// Full service name, the first path segment of its RPCs.
pub const SERVICE: &str = "filesystem.Filesystem";

crate::proto_enum!(
    FileType {
        Unspecified = 0 => "FILE_TYPE_UNSPECIFIED",
        File = 1 => "FILE_TYPE_FILE",
        Directory = 2 => "FILE_TYPE_DIRECTORY",
        Symlink = 3 => "FILE_TYPE_SYMLINK",
    }
);

crate::proto_enum!(
    EventType {
        Unspecified = 0 => "EVENT_TYPE_UNSPECIFIED",
        Create = 1 => "EVENT_TYPE_CREATE",
        Write = 2 => "EVENT_TYPE_WRITE",
        Remove = 3 => "EVENT_TYPE_REMOVE",
        Rename = 4 => "EVENT_TYPE_RENAME",
        Chmod = 5 => "EVENT_TYPE_CHMOD",
    }
);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: FileType,
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    #[serde(default, with = "int64")]
    pub size: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub mode: u32,
    #[serde(default, deserialize_with = "null_default")]
    pub permissions: String,
    #[serde(default, deserialize_with = "null_default")]
    pub owner: String,
    #[serde(default, deserialize_with = "null_default")]
    pub group: String,
    /// RFC 3339 timestamp (google.protobuf.Timestamp's JSON form).
    #[serde(
        default,
        alias = "modified_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_time: Option<String>,
    #[serde(
        default,
        alias = "symlink_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub symlink_target: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, alias = "is_symlink", deserialize_with = "null_default")]
    pub is_symlink: bool,
}

/// Requests naming one path (`Stat`, `MakeDir`, `Remove`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathRequest {
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
}

/// Responses carrying one entry (`Stat`, `MakeDir`, `Move`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveRequest {
    #[serde(default, deserialize_with = "null_default")]
    pub source: String,
    #[serde(default, deserialize_with = "null_default")]
    pub destination: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListDirRequest {
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    #[serde(default, deserialize_with = "null_default")]
    pub depth: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListDirResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub entries: Vec<EntryInfo>,
}

/// `WatchDirRequest` and `CreateWatcherRequest`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WatchRequest {
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    #[serde(default, deserialize_with = "null_default")]
    pub recursive: bool,
    #[serde(default, alias = "include_entry", deserialize_with = "null_default")]
    pub include_entry: bool,
    #[serde(
        default,
        alias = "allow_network_mounts",
        deserialize_with = "null_default"
    )]
    pub allow_network_mounts: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilesystemEvent {
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchDirResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Empty>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WatcherIdMessage {
    #[serde(default, alias = "watcher_id", deserialize_with = "null_default")]
    pub watcher_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GetWatcherEventsResponse {
    #[serde(default, deserialize_with = "null_default")]
    pub events: Vec<FilesystemEvent>,
}
