//! `pause` and `resume`. With memory: the cgroup freezer (processes stop
//! where they are; the state lives in the host's memory, so it does not
//! survive a host reboot and is reported as not durable).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{blocking, Inner};
use crate::runtime::{
    Paused, ResumeMode, RuntimeError, RuntimeKind, SandboxHandle, SandboxSpec, StateMode,
};

pub(super) async fn pause(
    inner: &Arc<Inner>,
    id: &str,
    mode: StateMode,
) -> Result<Paused, RuntimeError> {
    let sb = inner.get(id)?;
    if mode == StateMode::Filesystem {
        return Err(RuntimeError::unsupported(
            RuntimeKind::Container,
            "pause keeping only the filesystem yet",
        ));
    }
    if sb.frozen.load(Ordering::Acquire) {
        return Err(RuntimeError::WrongState(format!(
            "sandbox {id} is already paused"
        )));
    }
    let cgroup = sb.rec.cgroup.clone();
    let i2 = inner.clone();
    blocking(move || Ok(i2.cgroups.freeze(&cgroup, true)?)).await?;
    sb.frozen.store(true, Ordering::Release);
    Ok(Paused {
        mode,
        durable: false,
        bytes_on_disk: 0,
    })
}

pub(super) async fn resume(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    mode: ResumeMode,
) -> Result<SandboxHandle, RuntimeError> {
    if mode == ResumeMode::Reboot {
        return Err(RuntimeError::unsupported(
            RuntimeKind::Container,
            "reboot a paused sandbox yet",
        ));
    }
    let sb = inner.get(&spec.id)?;
    if !sb.frozen.load(Ordering::Acquire) {
        return Err(RuntimeError::WrongState(format!(
            "sandbox {} is not paused",
            spec.id
        )));
    }
    let cgroup = sb.rec.cgroup.clone();
    let i2 = inner.clone();
    blocking(move || Ok(i2.cgroups.freeze(&cgroup, false)?)).await?;
    sb.frozen.store(false, Ordering::Release);
    Ok(sb.rec.handle())
}
