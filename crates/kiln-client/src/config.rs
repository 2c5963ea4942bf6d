//! Where the client finds kilnd and its API key. The one place that lists
//! them: flags (given by the caller) < environment < config file, highest
//! first, see [`ClientConfig::resolve`] and [`ENV_VARS`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The URL used when nothing else names a server.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:3000";

/// Every environment variable the client reads, with what it means, in the
/// order they are consulted.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("KILN_API_URL", "URL of kilnd's control API (default http://127.0.0.1:3000)."),
    ("E2B_API_URL", "Fallback for KILN_API_URL (what the e2b SDKs read)."),
    ("KILN_API_KEY", "API key sent as X-API-KEY (from `kiln up`'s first start or `kiln keys create`)."),
    ("E2B_API_KEY", "Fallback for KILN_API_KEY."),
    ("KILN_CLIENT_CONFIG", "Path of the client config file (default $XDG_CONFIG_HOME/kiln/config.toml, else ~/.config/kiln/config.toml)."),
];

/// The config file's keys (TOML): `api_url = "..."`, `api_key = "..."`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub api_url: Option<String>,
    pub api_key: Option<String>,
}

/// Server address and key, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URL of kilnd, without a trailing slash.
    pub api_url: String,
    /// `None` when no flag, variable or file gave one; calls that need it fail
    /// with [`Error::NoApiKey`].
    pub api_key: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The config file's path (it may not exist).
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = env("KILN_CLIENT_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME") {
        return Some(Path::new(&x).join("kiln/config.toml"));
    }
    env("HOME").map(|h| Path::new(&h).join(".config/kiln/config.toml"))
}

fn read_file(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

impl ClientConfig {
    /// Flags first, then `KILN_*`, then `E2B_*`, then the config file, then
    /// the default URL.
    pub fn resolve(flag_url: Option<&str>, flag_key: Option<&str>) -> Result<Self> {
        let file = match config_path() {
            Some(p) => read_file(&p)?,
            None => FileConfig::default(),
        };
        let api_url = flag_url
            .map(str::to_string)
            .or_else(|| env("KILN_API_URL"))
            .or_else(|| env("E2B_API_URL"))
            .or(file.api_url)
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let api_key = flag_key
            .map(str::to_string)
            .or_else(|| env("KILN_API_KEY"))
            .or_else(|| env("E2B_API_KEY"))
            .or(file.api_key);
        Self::new(&api_url, api_key)
    }

    /// Checks the URL's form.
    pub fn new(api_url: &str, api_key: Option<String>) -> Result<Self> {
        let url = api_url.trim().trim_end_matches('/');
        if url.starts_with("https://") {
            return Err(Error::NoTls(api_url.to_string()));
        }
        if !url.starts_with("http://") || url.len() < 8 {
            return Err(Error::BadUrl(api_url.to_string()));
        }
        Ok(Self {
            api_url: url.to_string(),
            api_key: api_key.map(|k| k.trim().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_checked_and_trimmed() {
        let c = ClientConfig::new("http://127.0.0.1:3000/", None).unwrap();
        assert_eq!(c.api_url, "http://127.0.0.1:3000");
        assert!(matches!(
            ClientConfig::new("127.0.0.1:3000", None),
            Err(Error::BadUrl(_))
        ));
        assert!(matches!(
            ClientConfig::new("https://kiln.example", None),
            Err(Error::NoTls(_))
        ));
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("kiln-client-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, "api_url = \"http://h:1\"\napi_key = \"k\"\n").unwrap();
        let f = read_file(&p).unwrap();
        assert_eq!(f.api_key.as_deref(), Some("k"));
        std::fs::write(&p, "apiurl = 1\n").unwrap();
        assert!(matches!(read_file(&p), Err(Error::Config { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
