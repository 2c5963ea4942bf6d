//! The client's errors. Each message says what failed and, where it can,
//! what to do next.

use std::path::PathBuf;

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach kilnd at {url}: is it running? Start it with `sudo kiln up` (or point KILN_API_URL / --api-url at a running server)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("no API key: set KILN_API_KEY (or pass --api-key); `kiln up` prints one at its first start and `sudo kiln keys create` makes another")]
    NoApiKey,
    #[error("kilnd rejected the API key ({message}): check KILN_API_KEY / --api-key, or create one with `sudo kiln keys create`")]
    Unauthorized { message: String },
    #[error("{what} was not found")]
    NotFound { what: String, message: String },
    #[error("kilnd answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("sandbox {sandbox_id} is not running or its port {port} is not open: {message}")]
    SandboxUnreachable {
        sandbox_id: String,
        port: u16,
        message: String,
    },
    /// An error of the agent (`code` is a Connect code such as
    /// `not_found`, or an HTTP status).
    #[error("{}: {message}", code.replace('_', " "))]
    Agent { code: String, message: String },
    #[error("sandbox {sandbox_id} has no code interpreter on port {port}: create it from a code-interpreter template")]
    NoInterpreter { sandbox_id: String, port: u16 },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("invalid server URL {0:?}: it must look like http://127.0.0.1:3000")]
    BadUrl(String),
    #[error("{0:?}: this client speaks plain HTTP only (kilnd serves http://); reach a remote kilnd through an SSH tunnel or a local TLS-terminating proxy")]
    NoTls(String),
    #[error("invalid client config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error means "this does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
            || matches!(self, Error::Agent { code, .. } if code == "not_found")
    }
}
