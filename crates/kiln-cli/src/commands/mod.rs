pub mod connection;
pub mod cp;
pub mod exec;
pub mod keys;
pub mod mcp;
pub mod sandbox;
pub mod shell;
pub mod up;
