//! The code interpreter served on port 49999 of a code-interpreter sandbox:
//! Jupyter kernels (over ZeroMQ, through `jupyter-zmq-client`) behind the
//! `/execute` and `/contexts` API that E2B's `e2b-code-interpreter` SDKs call.
//!
//! - [`kernelspec`]: which installed kernel serves which language
//! - [`language`]: per-language code around a kernel (env vars, start-up, main result)
//! - [`kernel`]: one kernel process and its channels
//! - [`context`]: stateful contexts, one default per language
//! - [`envs`]: the sandbox's env vars, read from the agent, for every kernel
//! - [`execute`]: one cell, streamed as NDJSON
//! - [`output`]: the NDJSON lines and the Jupyter-message mapping
//! - [`server`]: the axum router
//! - [`template`]: the code-interpreter template recipe

#[cfg(feature = "server")]
pub mod context;
#[cfg(feature = "server")]
pub mod envs;
#[cfg(feature = "server")]
pub mod execute;
#[cfg(feature = "server")]
pub mod kernel;
#[cfg(feature = "server")]
pub mod kernelspec;
#[cfg(feature = "server")]
pub mod language;
#[cfg(feature = "server")]
pub mod output;
#[cfg(feature = "server")]
pub mod server;
pub mod template;

/// The largest request body the server reads (an `/execute` cell with its
/// env vars, a context). kilnd's proxy answers 413 for a bigger one to
/// port [`template::PORT`] of a code-interpreter sandbox before it
/// forwards anything.
pub const MAX_REQUEST_BODY: usize = 2 << 20;
