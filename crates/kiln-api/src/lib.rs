//! Wire types: REST models, agent protocol (.proto), OpenAPI; no I/O.

pub mod agent;
pub mod rest;
