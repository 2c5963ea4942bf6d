//! File-system access as the acting user. The agent runs as root; a file
//! operation runs on a blocking thread whose effective uid, gid and groups
//! are the user's for its duration (Linux keeps credentials per thread; the
//! raw `setresuid`/`setresgid`/`setgroups` calls change only the calling
//! thread's), so that permission checks are the user's and new files and
//! directories belong to the user. The real and saved ids stay root's, so
//! the thread can take root's back afterwards.
//!
//! The switch is checked, not assumed: a kernel that ignores a call (gVisor
//! ignores `setfsuid`, which this module used before: every files API
//! operation then ran as root) fails the operation with a permission
//! error; it never runs under another identity than the one asked. Always
//! call from a blocking thread, never across an `.await`.

use rustix::process::{Gid, Uid};
use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};

use kiln_api::agent::Code;

use crate::error::RpcError;
use crate::users::User;

/// The thread's identity before a switch, taken back after it.
struct Saved {
    euid: Uid,
    egid: Gid,
    groups: Vec<Gid>,
}

fn refused(user: &User, why: impl std::fmt::Display) -> RpcError {
    RpcError::new(
        Code::PermissionDenied,
        format!(
            "cannot act as user {:?} (uid {}): {why}",
            user.name, user.uid
        ),
    )
}

/// Makes the calling thread's effective identity `user`'s.
fn switch(user: &User) -> Result<Saved, RpcError> {
    let saved = Saved {
        euid: rustix::process::geteuid(),
        egid: rustix::process::getegid(),
        groups: rustix::process::getgroups().map_err(|e| refused(user, e))?,
    };
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    if saved.euid == uid && saved.egid == gid {
        return Ok(saved);
    }
    if !saved.euid.is_root() {
        return Err(refused(
            user,
            format!("the agent runs as uid {}, not root", saved.euid.as_raw()),
        ));
    }
    let mut groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    let r = set_thread_groups(&groups)
        .and_then(|()| set_thread_res_gid(None, gid, None))
        .and_then(|()| set_thread_res_uid(None, uid, None));
    if let Err(e) = r {
        restore(&saved);
        return Err(refused(user, e));
    }
    if rustix::process::geteuid() != uid || rustix::process::getegid() != gid {
        restore(&saved);
        return Err(refused(user, "the kernel did not switch the thread's ids"));
    }
    Ok(saved)
}

/// Takes the thread's identity before [`switch`] back. Failing that, the
/// thread must not serve anything else: the agent stops (its supervisor,
/// the sandbox, ends with it) rather than go on under a user's identity.
fn restore(saved: &Saved) {
    let r = set_thread_res_uid(None, saved.euid, None)
        .and_then(|()| set_thread_res_gid(None, saved.egid, None))
        .and_then(|()| set_thread_groups(&saved.groups));
    if let Err(e) = r {
        eprintln!("kiln-agent: cannot take the agent's identity back after a file operation: {e}");
        std::process::abort();
    }
}

/// Runs `f` with the thread's identity set to `user`; an error if it
/// cannot be.
pub fn as_user<T>(user: &User, f: impl FnOnce() -> Result<T, RpcError>) -> Result<T, RpcError> {
    let saved = switch(user)?;
    let out = f();
    restore(&saved);
    out
}

/// Runs `f` as `user` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    user: &User,
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    let user = user.clone();
    tokio::task::spawn_blocking(move || as_user(&user, f))
        .await
        .map_err(|e| RpcError::internal(format!("file operation failed: {e}")))?
}
