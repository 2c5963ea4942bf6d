//! `set_egress`: internet on or off for a running sandbox (the firewall's
//! `offline` set). Allow and deny lists are not this runtime's yet.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::create::{net_err, write_record};
use super::{blocking, Inner};
use crate::runtime::{EgressPolicy, RuntimeError, RuntimeKind};

/// Refuses what the container runtime cannot enforce.
pub(super) fn check(policy: &EgressPolicy) -> Result<(), RuntimeError> {
    if policy.has_lists() {
        return Err(RuntimeError::unsupported(
            RuntimeKind::Container,
            "enforce egress allow or deny lists yet (only internet on or off)",
        ));
    }
    Ok(())
}

pub(super) async fn set_egress(
    inner: &Arc<Inner>,
    id: &str,
    policy: &EgressPolicy,
) -> Result<(), RuntimeError> {
    check(policy)?;
    let sb = inner.get(id)?;
    let online = policy.internet;
    if sb.internet.load(Ordering::Acquire) == online {
        return Ok(());
    }
    let i2 = inner.clone();
    let sb2 = sb.clone();
    blocking(move || {
        let mut rec = sb2.record();
        i2.net.set_offline(&rec.lease(), !online).map_err(net_err)?;
        rec.internet = online;
        write_record(&i2, &rec)?;
        sb2.internet.store(online, Ordering::Release);
        Ok(())
    })
    .await
}
