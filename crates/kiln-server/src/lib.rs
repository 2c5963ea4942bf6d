//! kilnd: E2B-compatible control API, auth, sandbox proxy.
