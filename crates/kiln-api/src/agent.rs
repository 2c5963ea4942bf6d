//! The agent protocol: what the SDKs speak to the in-sandbox agent on port
//! [`AGENT_PORT`]. The Connect services are defined in `proto/*.proto`; the
//! types here are their proto3-JSON forms (camelCase names on output, either
//! spelling accepted on input, int64 as strings, bytes as base64, enums by
//! name), plus the plain HTTP endpoints' bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[path = "agent_filesystem.rs"]
pub mod filesystem;
#[path = "agent_json.rs"]
pub mod json;
#[path = "agent_process.rs"]
pub mod process;

/// The envd version whose behaviour Kiln's agent implements. The control API
/// reports it as `envdVersion`; the SDK switches features on it (see
/// `e2b/envd/versions.py`): recursive watch 0.1.4, stdin 0.3.0, default user
/// chosen by the agent 0.4.0, close stdin 0.5.2, octet-stream upload 0.5.7.
/// file metadata as `user.e2b.*` xattrs 0.6.2, entry info in watch events
/// 0.6.3, watches refusing network filesystems unless allowed 0.6.4.
pub const ENVD_VERSION: &str = "0.6.4";

/// The port the agent listens on inside a sandbox.
pub const AGENT_PORT: u16 = 49983;

/// The agent's limits on what it reads. kilnd's proxy enforces the same
/// before it forwards anything (431, 413), so that a request over them is
/// answered, not cut off mid-way by the agent (a reset, seen as a 502).
///
/// The largest header block, request line included (HTTP/1.1's read
/// buffer; HTTP/2's header list, counted as RFC 9113 does).
/// The signal that makes the agent close its listening socket (the
/// runtime sends it before a gVisor checkpoint, which cannot save a
/// listening TCP socket held in an epoll set): SIGWINCH, which nothing
/// else sends the agent (it has no terminal), and which `runsc kill`
/// knows by name (it takes no real-time signal).
pub const CLOSE_LISTENER_SIGNAL: (i32, &str) = (28, "WINCH");

/// The signal that makes the agent listen again (after the restore):
/// SIGURG (the agent owns no socket's out-of-band data).
pub const REOPEN_LISTENER_SIGNAL: (i32, &str) = (23, "URG");

pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The largest Connect message: a unary request's body, or the payload of
/// a server-streaming request's one envelope.
pub const MAX_RPC_MESSAGE: usize = 32 << 20;
/// The largest `/init` body.
pub const MAX_INIT_BODY: usize = 1 << 20;

/// Header carrying the sandbox's access token once `/init` set one.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Body of `POST /init`, sent by the server after a start or resume.
/// Every field is optional; absent ones leave the agent's state unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Environment variables added to every process started afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// From now on every request must carry it in `X-Access-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The host's clock (RFC 3339); the agent sets the clock from it when it
    /// may (it needs CAP_SYS_TIME in the sandbox's user namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The user that requests without `Authorization` act as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Default working directory of processes (else the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
}

/// One entry of the `POST /files` answer (a JSON array of these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteInfo {
    pub name: String,
    /// `"file"` or `"directory"`.
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    /// The metadata stored on the file from `X-Metadata-*` headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Error body of the plain HTTP endpoints (`/files`, `/init`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpError {
    /// The HTTP status again.
    pub code: u16,
    pub message: String,
}

/// Connect error codes, with the HTTP status a unary error is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The code's name on the wire (`"not_found"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary Connect error with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::OutOfRange => 400,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DataLoss => 500,
            Code::Unauthenticated => 401,
        }
    }
}

/// A Connect error as sent on the wire (unary body, or `error` of a stream's
/// end message).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The end-of-stream message of a Connect stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectErrorBody>,
}

/// The proto3-JSON forms the SDK reads and sends, frozen: a change here is a
/// wire change.
#[cfg(test)]
mod wire_tests {
    use super::filesystem::{EntryInfo, EventType, FileType, FilesystemEvent, WatchRequest};
    use super::process::{
        DataEvent, EndEvent, EventResponse, ProcessEvent, SendSignalRequest, Signal, StartRequest,
    };
    use serde_json::json;

    #[test]
    fn process_events_encode_as_the_sdk_reads_them() {
        let ev = EventResponse {
            event: Some(ProcessEvent {
                data: Some(DataEvent {
                    stdout: Some(b"hi\n".to_vec()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"event": {"data": {"stdout": "aGkK"}}})
        );
        let end = EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&end).unwrap(),
            json!({"exitCode": -1, "exited": false, "status": "signal: killed"})
        );
    }

    #[test]
    fn requests_decode_from_either_spelling() {
        let r: StartRequest = serde_json::from_value(json!({
            "process": {"cmd": "/bin/bash", "args": ["-c", "x"], "envs": {"A": "1"}, "cwd": null},
            "pty": {"size": {"cols": 80, "rows": 24}}, "tag": "t", "stdin": false
        }))
        .unwrap();
        assert_eq!(r.process.unwrap().envs["A"], "1");
        assert_eq!(r.pty.unwrap().size.unwrap().cols, 80);
        let s: SendSignalRequest =
            serde_json::from_value(json!({"process": {"pid": 7}, "signal": 9})).unwrap();
        assert_eq!(s.signal, Signal::Sigkill);
        let s: SendSignalRequest =
            serde_json::from_value(json!({"signal": "SIGNAL_SIGTERM"})).unwrap();
        assert_eq!(s.signal, Signal::Sigterm);
        let w: WatchRequest =
            serde_json::from_value(json!({"path": "/", "include_entry": true})).unwrap();
        assert!(w.include_entry);
        let w: WatchRequest =
            serde_json::from_value(json!({"path": "/", "allowNetworkMounts": true})).unwrap();
        assert!(w.allow_network_mounts);
    }

    #[test]
    fn entries_encode_int64_as_string_and_enums_by_name() {
        let e = EntryInfo {
            name: "f".into(),
            kind: FileType::File,
            path: "/f".into(),
            size: 5,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some("2023-11-14T22:13:20.000000000Z".into()),
            symlink_target: None,
            metadata: Default::default(),
            is_symlink: false,
        };
        let ev = FilesystemEvent {
            name: "f".into(),
            kind: EventType::Chmod,
            entry: Some(e),
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"name": "f", "type": "EVENT_TYPE_CHMOD", "entry": {
                "name": "f", "type": "FILE_TYPE_FILE", "path": "/f", "size": "5", "mode": 420,
                "permissions": "-rw-r--r--", "owner": "user", "group": "user",
                "modifiedTime": "2023-11-14T22:13:20.000000000Z", "isSymlink": false}})
        );
    }

    #[test]
    fn init_body_shape() {
        let r: super::InitRequest = serde_json::from_value(json!({
            "envVars": {"A": "1"}, "accessToken": "t", "timestamp": "2024-01-01T00:00:00Z",
            "defaultUser": "user", "defaultWorkdir": "/home/user", "volumeMounts": []
        }))
        .unwrap();
        assert_eq!(r.access_token.as_deref(), Some("t"));
        assert_eq!(r.default_workdir.as_deref(), Some("/home/user"));
    }
}
