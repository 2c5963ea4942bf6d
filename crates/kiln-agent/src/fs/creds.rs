//! File-system access as the acting user. The agent runs as root; file
//! operations switch the calling thread's file-system uid and gid (Linux
//! `setfsuid`/`setfsgid` are per thread) so that permission checks are the
//! user's and new files and directories belong to the user. Always call
//! from a blocking thread, never across an `.await`.

use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

use crate::users::User;

/// Runs `f` with the thread's file-system identity set to `user`.
pub fn as_user<T>(user: &User, f: impl FnOnce() -> T) -> T {
    let old_uid = setfsuid(Uid::from_raw(user.uid));
    let old_gid = setfsgid(Gid::from_raw(user.gid));
    let out = f();
    setfsgid(old_gid);
    setfsuid(old_uid);
    out
}

/// Runs `f` as `user` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    user: &User,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::error::RpcError> {
    let user = user.clone();
    tokio::task::spawn_blocking(move || as_user(&user, f))
        .await
        .map_err(|e| crate::error::RpcError::internal(format!("file operation failed: {e}")))
}
