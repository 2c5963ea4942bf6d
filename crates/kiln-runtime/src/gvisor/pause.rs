//! `pause` and `resume`.
//!
//! Pause with memory: `runsc checkpoint` writes the sandbox's whole state
//! (its kernel, processes, memory, /tmp) to `checkpoint.tmp/`, which is
//! fsynced and renamed to `checkpoint/`; runsc's sandbox is then deleted,
//! the disk unmounted and fsynced and the network namespace given back.
//! Paused, it holds no memory and no process; the pause survives kilnd
//! restarts and host reboots. Resume is `runsc restore` from it, in a
//! network namespace from the pool (the sandbox's netstack takes that
//! namespace's address). Pause keeping the filesystem only ends every
//! process and keeps the disk; resume boots anew on it.

use std::path::Path;
use std::sync::Arc;

use super::create::{adopt, boot, unmount_rootfs, watch, write_record, Disk, Start};
use super::{blocking, net_err, Inner, Phase, Record, Sandbox};
use crate::host::{fsutil, HostError};
use crate::runtime::{Paused, ResumeMode, RuntimeError, SandboxHandle, SandboxSpec, StateMode};

fn busy(id: &str) -> RuntimeError {
    RuntimeError::WrongState(format!(
        "sandbox {id} is busy (being changed by another request)"
    ))
}

pub(super) async fn pause(
    inner: &Arc<Inner>,
    id: &str,
    mode: StateMode,
) -> Result<Paused, RuntimeError> {
    let Some(_reserved) = inner.reserve(id) else {
        return Err(busy(id));
    };
    let sb = match inner.get(id) {
        Ok(sb) => sb,
        Err(e) if inner.paused.lock().unwrap().contains_key(id) => {
            let _ = e;
            return Err(RuntimeError::WrongState(format!(
                "sandbox {id} is already paused"
            )));
        }
        Err(e) => return Err(e),
    };
    let before = sb.record();
    let dir = inner.sandbox_dir(id);
    let image = (mode == StateMode::Memory).then(|| dir.join("checkpoint.tmp"));
    record_phase(inner, &sb, Phase::Pausing, image.as_deref()).await?;
    if mode == StateMode::Memory {
        // runsc checkpoint ends runsc's sandbox process: not an exit of
        // the sandbox, which the watcher would otherwise report (and the
        // core would then end the paused sandbox).
        sb.unwatch();
        if let Err(e) = checkpoint(inner, id, &dir).await {
            // runsc leaves a sandbox it failed to checkpoint running.
            // Running (as before, or booted again): its current record.
            let _ = record_phase(inner, &sb, Phase::Running, None).await;
            // Watched again (one booted again is watched already).
            if sb.watcher.lock().unwrap().is_none() {
                watch(inner, &sb);
            }
            return Err(e);
        }
    }
    sb.unwatch();
    inner.sandboxes.lock().unwrap().remove(id);
    let paused = stop(inner, before, mode).await?;
    let bytes = {
        let dir = dir.clone();
        blocking(move || Ok(bytes_on_disk(&dir))).await?
    };
    inner.paused.lock().unwrap().insert(id.to_owned(), paused);
    tracing::debug!(id, %mode, "gvisor sandbox paused");
    Ok(Paused {
        mode,
        durable: true,
        bytes_on_disk: bytes,
    })
}

/// Writes a running sandbox's record with `phase` (the one in memory
/// stays as it is): `Pausing` before a checkpoint, so that a crash before
/// it runs again from the image leaves it kept, not removed as dead.
/// `image`: where a checkpoint under way writes.
pub(super) async fn record_phase(
    inner: &Arc<Inner>,
    sb: &Sandbox,
    phase: Phase,
    image: Option<&Path>,
) -> Result<(), RuntimeError> {
    let inner = inner.clone();
    let rec = Record {
        phase,
        image: image.map(Path::to_path_buf),
        ..sb.record()
    };
    blocking(move || write_record(&inner, &rec)).await
}

/// `runsc checkpoint` into `<dir>/checkpoint.tmp`, fsynced and renamed to
/// `<dir>/checkpoint`. The sandbox is stopped once this returns `Ok`.
async fn checkpoint(inner: &Arc<Inner>, id: &str, dir: &Path) -> Result<(), RuntimeError> {
    let tmp = dir.join("checkpoint.tmp");
    let done = dir.join("checkpoint");
    {
        let tmp = tmp.clone();
        let done = done.clone();
        blocking(move || {
            for d in [&tmp, &done] {
                if d.exists() {
                    std::fs::remove_dir_all(d).map_err(HostError::io("remove", d))?;
                }
            }
            Ok(())
        })
        .await?;
    }
    let ip = inner.get(id)?.record().ip;
    save(inner, id, ip, &tmp).await?;
    blocking(move || {
        sync_tree(&tmp)?;
        Ok(fsutil::rename_durably(&tmp, &done)?)
    })
    .await
}

/// `runsc checkpoint` of a running sandbox into `image`; the sandbox is
/// stopped once this returns `Ok`, still running on error.
///
/// gVisor's netstack (this runsc) refuses to save a TCP connection over
/// the namespace's veth, open or closing (FIN_WAIT, TIME_WAIT, ...), and a
/// refused save ends the sandbox (runsc kills it). The host's ends of the
/// sandbox's connections (kilnd's pooled connections to the agent, the
/// proxy's) are aborted first, which resets the sandbox's ends. What the
/// sandbox keeps of its own (connections to the internet, or ones it
/// closed first less than a minute ago) cannot be seen from outside
/// (gVisor's /proc/net/tcp does not list closing ones): if the checkpoint
/// is refused for them, the sandbox, ended by runsc, is booted again on
/// its disk (its processes and memory are lost, its files kept) and the
/// pause fails with an error that says so.
pub(super) async fn save(
    inner: &Arc<Inner>,
    id: &str,
    ip: std::net::Ipv4Addr,
    image: &Path,
) -> Result<(), RuntimeError> {
    // Refused before anything is touched: a save runsc refuses ends the
    // sandbox's processes.
    match inner
        .runsc
        .output(&["exec", id, "cat", "/proc/net/tcp", "/proc/net/tcp6"])
        .await
    {
        Ok(table) => {
            let held = held_sockets(&table, inner.net.config().gateway());
            if !held.is_empty() {
                return Err(RuntimeError::WrongState(format!(
                    "sandbox {id} holds TCP sockets gVisor cannot save with its memory ({}): \
                     end them and try again, or pause without memory (its files are kept)",
                    held.join(", ")
                )));
            }
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "cannot list the sandbox's TCP sockets; checkpointing all the same")
        }
    }
    close_listener(inner, id, ip).await?;
    blocking(move || kiln_net::abort_connections(ip).map_err(net_err)).await?;
    // The resets reach the sandbox's netstack well within this.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = inner.runsc.checkpoint(image, id).await;
    // The checkpoint ends runsc's sandbox process; `runsc delete`, which
    // follows, collects it.
    let Err(e) = r else { return Ok(()) };
    let _ = std::fs::remove_dir_all(image);
    let refused = e.to_string();
    // A refused save ends the sandbox (runsc kills it): anything else that
    // failed may have left it running. A socket it could not encode ends
    // it too, a moment after runsc has answered.
    let socket = refused.contains("encoding error at object tcp.endpoint");
    let mut alive = inner.runsc.state(id).is_some_and(|s| s.status == "running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while socket && alive && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        alive = inner
            .get(id)
            .is_ok_and(|sb| super::recover::alive(&sb.record(), &inner.runsc).is_some());
    }
    if alive {
        let _ = reopen_listener(inner, id).await;
        return Err(e);
    }
    if !refused.contains("unsupported networking state") && !socket {
        let why = refused
            .split("FATAL ERROR: ")
            .last()
            .unwrap_or(&refused)
            .chars()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>();
        let rebooted = reboot_in_place(inner, id).await;
        return Err(RuntimeError::WrongState(format!(
            "gVisor could not save sandbox {id} (…{why}); {}",
            match rebooted {
                Ok(()) => "runsc ended it, and it was booted again on its disk: its files are \
                           kept, its processes and memory are not"
                    .to_owned(),
                Err(e) => format!("runsc ended it, and booting it again failed: {e}"),
            }
        )));
    }
    let conn = if socket {
        // `encoding error at object tcp.endpoint{... LocalPort:0xc34f, ...}`
        let local = refused
            .split("LocalPort:0x")
            .nth(1)
            .and_then(|r| u16::from_str_radix(r.split(',').next()?, 16).ok());
        local
            .map(|p| format!("a socket on port {p}"))
            .unwrap_or_default()
    } else {
        refused
            .split("endpoint cannot be saved in ")
            .nth(1)
            .and_then(|r| r.split(':').take(4).collect::<Vec<_>>().join(":").into())
            .unwrap_or_default()
    };
    // The endpoint's TCP state, as gVisor numbers them (Linux's order).
    let state = refused
        .split("}, origEndpointState")
        .next()
        .and_then(|h| h.rsplit("value:0x").next())
        .and_then(|v| u8::from_str_radix(v.trim_end_matches('}'), 16).ok())
        .map(|n| match n {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            11 => "CLOSING",
            _ => "open",
        })
        .unwrap_or("open");
    let what = if socket {
        format!("a TCP socket gVisor cannot save ({conn}: a server's listening socket, say)")
    } else {
        format!(
            "a TCP connection gVisor cannot save ({conn}, {state}: one open to the internet, \
             or closed by the sandbox less than a minute ago)"
        )
    };
    tracing::warn!(id, %what, "gVisor refused the checkpoint and ended the sandbox; booting it again on its disk");
    let rebooted = reboot_in_place(inner, id).await;
    Err(RuntimeError::WrongState(format!(
        "sandbox {id} had {what}; {}",
        match rebooted {
            Ok(()) => "runsc ended it, and it was booted again on its disk: its files are \
                       kept, its processes and memory are not"
                .to_owned(),
            Err(e) => format!("runsc ended it, and booting it again failed: {e}"),
        }
    )))
}

/// The TCP connections in gVisor's `/proc/net/tcp` and `tcp6` (`table`)
/// that this runsc cannot save, described: every one but those with the
/// host (`gateway`; the host's ends are aborted before a checkpoint, which
/// resets the sandbox's) and the agent's. Listening sockets are not listed:
/// runsc saves most (a listener it cannot encode is found by the
/// checkpoint itself, see [`save`]).
pub(super) fn held_sockets(table: &str, gateway: std::net::Ipv4Addr) -> Vec<String> {
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let addr = |field: &str| -> String {
        let (hex, p) = field.rsplit_once(':').unwrap_or((field, "0"));
        let p = u16::from_str_radix(p, 16).unwrap_or(0);
        match u32::from_str_radix(hex, 16) {
            Ok(v) if hex.len() == 8 => format!("{}:{p}", std::net::Ipv4Addr::from(v.swap_bytes())),
            _ => format!("[…]:{p}"),
        }
    };
    let mut out = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
            continue;
        };
        let Some(lport) = port(local) else { continue };
        let with_host = addr(remote)
            .rsplit_once(':')
            .is_some_and(|(ip, _)| ip == gateway.to_string());
        if *state == "0A" || lport == kiln_api::agent::AGENT_PORT || with_host {
            continue;
        }
        out.push(format!("a connection {} → {}", addr(local), addr(remote)));
    }
    out.sort();
    out.dedup();
    out
}

/// Asks the agent to close its listening socket (this runsc cannot save
/// one held in an epoll set, and the agent's always is) and waits until
/// its port refuses connections, a second at most: an init that does not
/// know the signal (it ignores it) keeps listening, and the checkpoint is
/// tried all the same. After a restore the agent is told to listen again
/// ([`reopen_listener`]).
async fn close_listener(
    inner: &Arc<Inner>,
    id: &str,
    ip: std::net::Ipv4Addr,
) -> Result<(), RuntimeError> {
    let signal = kiln_api::agent::CLOSE_LISTENER_SIGNAL.1;
    inner.runsc.run(&["kill", id, signal]).await?;
    let addr = std::net::SocketAddr::from((ip, crate::AGENT_PORT));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            // Reset, not closed: nothing of the probe lingers in the
            // sandbox's netstack (a closing connection blocks a checkpoint).
            Ok(Ok(s)) => drop(s.set_zero_linger()),
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            tracing::debug!(
                id,
                "the sandbox's init still listens; checkpointing all the same"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Tells the agent of a restored (or still running) sandbox to listen
/// again.
pub(super) async fn reopen_listener(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let signal = kiln_api::agent::REOPEN_LISTENER_SIGNAL.1;
    inner.runsc.run(&["kill", id, signal]).await
}

/// Boots a sandbox that runsc ended anew on its disk, in its namespace.
async fn reboot_in_place(inner: &Arc<Inner>, id: &str) -> Result<(), RuntimeError> {
    let sb = inner.get(id)?;
    sb.unwatch();
    let mut rec = sb.record();
    inner.runsc.delete(id).await?;
    let inner2 = inner.clone();
    let lease = rec.lease();
    blocking(move || inner2.net.readdress(&lease).map_err(net_err)).await?;
    super::create::run_runsc(inner, &mut rec, &Start::Run).await?;
    super::create::wait_ready(inner, &rec).await?;
    *sb.rec.lock().unwrap() = rec;
    watch(inner, &sb);
    Ok(())
}

/// fsyncs every file of a directory and the directory.
pub(super) fn sync_tree(dir: &Path) -> Result<(), HostError> {
    for e in std::fs::read_dir(dir)
        .map_err(HostError::io("list", dir))?
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            fsutil::fsync_file(&p)?;
        }
    }
    fsutil::fsync_dir(dir)
}

/// Bytes a paused sandbox keeps: its disk's data and its checkpoint.
fn bytes_on_disk(dir: &Path) -> u64 {
    let ckpt: u64 = std::fs::read_dir(dir.join("checkpoint"))
        .map(|rd| {
            rd.flatten()
                .map(|e| fsutil::allocated_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    fsutil::allocated_bytes(&dir.join("disk.img")) + ckpt
}

/// Ends what is left of runsc's sandbox (a checkpointed one is stopped
/// already), unmounts, gives the network back, records the pause.
async fn stop(inner: &Arc<Inner>, rec: Record, mode: StateMode) -> Result<Record, RuntimeError> {
    inner.runsc.delete(&rec.id).await?;
    let inner2 = inner.clone();
    blocking(move || {
        let mut rec = rec;
        let dir = inner2.sandbox_dir(&rec.id);
        inner2.cgroups.kill_and_remove(&rec.id)?;
        unmount_rootfs(&inner2, &rec.id)?;
        if rec.has_net() {
            inner2.net.recycle(&rec.lease()).map_err(net_err)?;
        }
        rec.net_index = u32::MAX;
        rec.pid = 0;
        rec.start_time = 0;
        rec.phase = match mode {
            StateMode::Memory => Phase::PausedMemory,
            StateMode::Filesystem => Phase::PausedFs,
        };
        write_record(&inner2, &rec)?;
        if mode == StateMode::Filesystem {
            let ckpt = dir.join("checkpoint");
            if ckpt.exists() {
                std::fs::remove_dir_all(&ckpt).map_err(HostError::io("remove", &ckpt))?;
            }
        }
        Ok(rec)
    })
    .await
}

pub(super) async fn resume(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    mode: ResumeMode,
) -> Result<SandboxHandle, RuntimeError> {
    let id = spec.id.clone();
    let Some(_reserved) = inner.reserve(&id) else {
        return Err(busy(&id));
    };
    let Some(rec) = inner.paused.lock().unwrap().get(&id).cloned() else {
        if inner.sandboxes.lock().unwrap().contains_key(&id) {
            return Err(RuntimeError::WrongState(format!(
                "sandbox {id} is not paused"
            )));
        }
        return Err(RuntimeError::NotFound(id));
    };
    let dir = inner.sandbox_dir(&id);
    let ckpt = dir.join("checkpoint");
    let start = match (rec.phase, mode) {
        (Phase::PausedMemory, ResumeMode::Restore) if ckpt.is_dir() => Start::Restore(ckpt.clone()),
        _ => Start::Run,
    };
    // As it was when paused: its egress then, not at create.
    let mut spec = spec.clone();
    spec.egress.internet = rec.internet;
    match boot(inner, &spec, Disk::Kept, start, Phase::Resuming).await {
        Ok(mut now) => {
            now.phase = Phase::Running;
            let inner2 = inner.clone();
            let rec2 = now.clone();
            let written = blocking(move || {
                write_record(&inner2, &rec2)?;
                // Running on from here: the checkpoint is stale.
                let ckpt = inner2.sandbox_dir(&rec2.id).join("checkpoint");
                if ckpt.exists() {
                    std::fs::remove_dir_all(&ckpt).map_err(HostError::io("remove", &ckpt))?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = written {
                tracing::warn!(id, error = %e, "resumed, but its record could not be updated");
            }
            tracing::debug!(id, ?mode, "gvisor sandbox resumed");
            Ok(adopt(inner, now))
        }
        Err(e) => {
            // boot undid its mounts and network: paused again, as before.
            let inner2 = inner.clone();
            let rec2 = rec.clone();
            if let Err(e2) = blocking(move || write_record(&inner2, &rec2)).await {
                tracing::error!(id, error = %e2, "a failed resume could not restore the paused record");
            }
            Err(e)
        }
    }
}

/// Starts the watcher again for a sandbox that goes on running (after a
/// snapshot restored it in place).
pub(super) fn rewatch(inner: &Arc<Inner>, id: &str) {
    if let Ok(sb) = inner.get(id) {
        watch(inner, &sb);
    }
}

#[cfg(test)]
mod tests {
    use super::held_sockets;

    #[test]
    fn connections_but_the_hosts_and_the_agents_are_held() {
        // gVisor's /proc/net/tcp: a loopback connection (both ends), a
        // listener on 8123, a connection from the host (10.231.0.1) to a
        // server on 8000, the agent's listener and kilnd's connection to
        // it (port 49983, 0xC33F), a connection to 93.184.216.34:443.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
  13: 0100007F:1B58 0100007F:EE41 01 00000000:00000000 00:00000000 00000000  1000        0       14 1
  14: 0100007F:EE41 0100007F:1B58 01 00000000:00000000 00:00000000 00000000  1000        0       15 1
  17: 00000000:1FBB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0       18 2
  18: 0500E70A:1F40 0100E70A:D000 01 00000000:00000000 00:00000000 00000000  1000        0       19 2
  20: 0500E70A:C33F 0100E70A:EA06 01 00000000:00000000 00:00000000 00000000     0        0       21 1
   2: 00000000:C33F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0        3 1
   3: 0500E70A:D2F0 22D8B85D:01BB 01 00000000:00000000 00:00000000 00000000     0        0        4 1
  sl  local_address                         remote_address                        st tx_queue
";
        let gateway = std::net::Ipv4Addr::new(10, 231, 0, 1);
        assert_eq!(
            held_sockets(table, gateway),
            [
                "a connection 10.231.0.5:54000 → 93.184.216.34:443",
                "a connection 127.0.0.1:60993 → 127.0.0.1:7000",
                "a connection 127.0.0.1:7000 → 127.0.0.1:60993",
            ]
        );
        assert!(held_sockets("  sl  local_address rem_address   st\n", gateway).is_empty());
    }
}
