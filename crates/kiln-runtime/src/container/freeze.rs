//! `freeze` and `thaw`: the cgroup freezer.

use std::sync::Arc;

use super::{blocking, Inner};
use crate::runtime::RuntimeError;

pub(super) async fn set_frozen(
    inner: &Arc<Inner>,
    id: &str,
    frozen: bool,
) -> Result<(), RuntimeError> {
    inner.get(id)?;
    let inner = inner.clone();
    let id = id.to_owned();
    blocking(move || inner.cgroups.freeze(&id, frozen)).await
}
