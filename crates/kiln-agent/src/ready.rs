//! The readiness byte for the runtime that started us (`KILN_READY_FD`).
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

/// Writes one byte to the fd named by `KILN_READY_FD` and closes it.
pub fn signal_ready() {
    let Some(fd) = std::env::var("KILN_READY_FD")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|fd| *fd > 2)
    else {
        return;
    };
    // Refuse a number that is not an open descriptor instead of adopting it.
    if !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
        && rustix::process::getpid().as_raw_nonzero().get() != 1
    {
        eprintln!("kiln-agent: KILN_READY_FD={fd} is not an open descriptor");
        return;
    }
    // SAFETY: the runtime hands us this descriptor, by number, for us to
    // own; nothing else in the agent knows or uses it, and it is taken once
    // here at start-up before any other file is opened.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(owned);
    let _ = f.write_all(b"R");
    drop(f);
}
