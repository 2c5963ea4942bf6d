//! kilnd: E2B-compatible control API, auth, sandbox proxy.
//!
//! Handlers turn HTTP requests into typed calls on [`kiln_core::Core`];
//! errors become HTTP answers in [`error`] only.

pub mod agent_client;
pub mod app;
pub mod auth;
pub mod config;
pub mod datadir;
pub mod error;
pub mod listener;
pub mod proxy;
pub mod rest;
pub mod runtime;
pub mod serve;
pub mod state;
pub mod upstream;

pub use app::app;
pub use config::Config;
pub use state::AppState;

/// Sets up `tracing` output on stderr, filtered by `KILN_LOG` (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
