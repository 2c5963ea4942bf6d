//! What every handler shares.

use kiln_core::Core;

use crate::proxy::Proxy;

#[derive(Clone)]
pub struct AppState {
    pub core: Core,
    pub proxy: Proxy,
    /// Domain reported to the SDKs (`<port>-<id>.<domain>`).
    pub domain: String,
}

impl AppState {
    pub fn new(core: Core, domain: String) -> Self {
        Self {
            core,
            proxy: Proxy::new(),
            domain,
        }
    }
}
