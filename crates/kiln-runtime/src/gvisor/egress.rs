//! `set_egress`: internet on or off for a running sandbox, through the
//! same kiln-net firewall set as the container runtime (runsc's netstack
//! sends through the namespace's veth, so the host's rules apply).

use std::sync::Arc;

use super::create::write_record;
use super::{blocking, net_err, Inner};
use crate::runtime::{EgressPolicy, RuntimeError, RuntimeKind};

pub(super) async fn set_egress(
    inner: &Arc<Inner>,
    id: &str,
    policy: &EgressPolicy,
) -> Result<(), RuntimeError> {
    if policy.has_lists() {
        return Err(RuntimeError::unsupported(
            RuntimeKind::Gvisor,
            "enforce egress allow or deny lists yet (only internet on or off)",
        ));
    }
    let sb = inner.get(id)?;
    let online = policy.internet;
    if sb.record().internet == online {
        return Ok(());
    }
    let inner2 = inner.clone();
    blocking(move || {
        let mut rec = sb.rec.lock().unwrap();
        inner2
            .net
            .set_offline(&rec.lease(), !online)
            .map_err(net_err)?;
        rec.internet = online;
        write_record(&inner2, &rec)
    })
    .await
}
