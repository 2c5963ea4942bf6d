//! Sandbox lifecycle state machine, store, timers; no HTTP.
