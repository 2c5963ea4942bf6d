//! Host primitives every runtime shares: cgroups (v1 and v2), size-limited
//! disks for writable layers, the seccomp policy, the /proc and /sys paths a
//! sandbox must not see, and the few raw syscalls the runtimes make.
//!
//! The container runtime's processes, runsc's sandboxes and QEMU's
//! processes all need the same cgroup limits and disks, so these live here
//! and not inside one backend. Errors are [`HostError`]s that carry the
//! path they concern.

pub mod bins;
pub mod cgroup;
pub mod devfilter;
pub mod disk;
mod error;
pub mod fsutil;
pub mod masks;
pub mod overlay;
pub mod seccomp;
pub mod sys;
pub mod uidrange;

pub use error::HostError;
