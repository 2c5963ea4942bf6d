//! `freeze` and `thaw`: the cgroup freezer.

use std::sync::Arc;

use super::{blocking, Inner};
use crate::runtime::RuntimeError;

pub(super) async fn set_frozen(
    inner: &Arc<Inner>,
    id: &str,
    frozen: bool,
) -> Result<(), RuntimeError> {
    let cgroup = inner.get(id)?.rec.cgroup.clone();
    let inner = inner.clone();
    blocking(move || Ok(inner.cgroups.freeze(&cgroup, frozen)?)).await
}
