//! A typed client of Kiln: kilnd's control API (`X-API-KEY`) and the agent
//! inside every sandbox, reached through kilnd's proxy (`E2b-Sandbox-Id`,
//! `E2b-Sandbox-Port`), speaking its Connect JSON protocol. The `kiln` CLI,
//! `kiln mcp` and the end-to-end tests share it.

pub mod config;
pub mod connect;
pub mod error;
pub mod files;
pub mod interpreter;
pub mod process;
pub mod rest;
pub mod sandbox;

pub use config::ClientConfig;
pub use error::{Error, Result};
pub use process::{ExitStatus, ProcessEvent, StartOptions};
pub use rest::Client;
pub use sandbox::SandboxConn;
