//! `filesystem.Filesystem` and the `/files` HTTP endpoints.

pub mod creds;
pub mod entry;
pub mod files;
pub mod metadata;
pub mod rpc;
pub mod tree;
pub mod watch;
