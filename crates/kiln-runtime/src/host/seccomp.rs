//! The sandbox's seccomp policy: reviewed data in `seccomp.json`, compiled
//! with `seccompiler` and installed *without* `no_new_privs`.
//!
//! The policy is a deny list on top of the capability and namespace
//! restrictions, covering every syscall Docker's default profile refuses to
//! an unprivileged container: kernel modules, kexec, bpf, perf_event_open,
//! keyrings, reboot, swap, clock setting, open_by_handle_at, mounting and
//! namespace creation (unshare, setns, clone with `CLONE_NEW*` flags),
//! io_uring, userfaultfd, quotactl, syslog, personality other than Linux's.
//! Filter `enosys` answers `clone3` with `ENOSYS` so that libc falls back to
//! `clone`, whose flags a filter can inspect (Docker does the same). A third,
//! hand-written filter ([`x32_filter`]) refuses every x32-ABI syscall
//! (numbers with bit 30 set): a deny list by name would miss them, and
//! seccompiler's own arch check only kills non-x86_64 (i386) calls.
//!
//! Why without `no_new_privs`: `sudo` inside the sandbox is setuid and
//! `no_new_privs` disables setuid. The kernel allows installing a filter
//! without it to a task holding `CAP_SYS_ADMIN` in its user namespace, which
//! the sandbox's init has (in the sandbox's user namespace only) right
//! before it drops capabilities and execs the agent. The filter is inherited
//! by every process and cannot be removed; root inside gains nothing outside
//! since the user namespace maps it to an unprivileged host uid.

#![allow(unsafe_code)]

use seccompiler::{BpfProgram, TargetArch};

/// The policy file, compiled into the binary.
pub const POLICY_JSON: &str = include_str!("seccomp.json");

/// The filters to install, in order.
pub fn compile() -> Result<Vec<BpfProgram>, String> {
    let mut map = seccompiler::compile_from_json(POLICY_JSON.as_bytes(), TargetArch::x86_64)
        .map_err(|e| format!("invalid seccomp policy: {e}"))?;
    let mut filters = ["sandbox", "enosys"]
        .iter()
        .map(|name| {
            map.remove(*name)
                .ok_or_else(|| format!("seccomp policy has no filter {name:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    filters.push(x32_filter());
    Ok(filters)
}

/// `if (nr & __X32_SYSCALL_BIT) return ERRNO(EPERM); return ALLOW;`
pub fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JMP_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(BPF_JMP_JSET_K, 0, 1, X32_SYSCALL_BIT),
        op(
            BPF_RET_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        op(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs one filter on the calling thread without setting no_new_privs.
/// Needs CAP_SYS_ADMIN in the caller's user namespace.
pub fn install(prog: &BpfProgram) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32).
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points to `prog`, which outlives the call; the kernel
    // copies the program and does not keep the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles() {
        let filters = compile().unwrap();
        assert_eq!(filters.len(), 3);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn policy_denies_what_docker_denies() {
        let doc: serde_json::Value = serde_json::from_str(POLICY_JSON).unwrap();
        let denied: Vec<&str> = doc["sandbox"]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r.get("args").is_none())
            .map(|r| r["syscall"].as_str().unwrap())
            .collect();
        for s in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "swapon",
            "swapoff",
            "clock_settime",
            "settimeofday",
            "clock_adjtime",
            "open_by_handle_at",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "acct",
            "iopl",
            "ioperm",
            "userfaultfd",
            "quotactl",
        ] {
            assert!(denied.contains(&s), "{s} is not denied");
        }
        assert_eq!(doc["sandbox"]["mismatch_action"], "allow");
        assert_eq!(doc["sandbox"]["match_action"]["errno"], 1);
    }
}
