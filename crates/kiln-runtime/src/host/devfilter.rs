//! The device filter of cgroup v2: v2 has no `devices.allow` file; a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup answers,
//! for every open or mknod of a device node by a process in it, whether the
//! access is allowed. The program is built here from rules in v1's syntax
//! (`c 1:3 rwm`), so both versions enforce one list
//! ([`super::cgroup::ALLOWED_DEVICES`]).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use super::HostError;

/// One rule: a device type, major, minor (`None` for any) and the accesses
/// it allows (`BPF_DEVCG_ACC_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: u32,
    pub major: u32,
    pub minor: Option<u32>,
    pub access: u32,
}

const DEV_BLOCK: u32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: u32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: u32 = 1; // BPF_DEVCG_ACC_MKNOD
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

impl Rule {
    /// Parses a rule of cgroup v1's `devices.allow` syntax: `c 1:3 rwm`,
    /// `c 136:* rw`, `b 7:0 r`.
    pub fn parse(text: &str) -> Result<Rule, HostError> {
        let bad = || HostError::Unsupported(format!("bad device rule {text:?}"));
        let mut parts = text.split_whitespace();
        let kind = match parts.next() {
            Some("c") => DEV_CHAR,
            Some("b") => DEV_BLOCK,
            _ => return Err(bad()),
        };
        let (major, minor) = parts
            .next()
            .and_then(|n| n.split_once(':'))
            .ok_or_else(bad)?;
        let major = major.parse().map_err(|_| bad())?;
        let minor = match minor {
            "*" => None,
            m => Some(m.parse().map_err(|_| bad())?),
        };
        let mut access = 0;
        for c in parts.next().ok_or_else(bad)?.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(bad()),
            };
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Rule {
            kind,
            major,
            minor,
            access,
        })
    }
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The program: 1 (allow) if a rule matches the access, else 0 (deny).
/// Registers: r2 the device type, r3 the access, r4 the major, r5 the
/// minor (from `struct bpf_cgroup_dev_ctx`, which r1 points at).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff), // r2 = type
        insn(RSH_K, 3, 0, 0, 16),     // r3 = access
        insn(LDX_W, 4, 1, 4, 0),      // r4 = ctx->major
        insn(LDX_W, 5, 1, 8, 0),      // r5 = ctx->minor
    ];
    for rule in rules {
        // Each test jumps past the rest of the rule when it fails.
        let mut tests = vec![(2, rule.kind as i32), (4, rule.major as i32)];
        if let Some(minor) = rule.minor {
            tests.push((5, minor as i32));
        }
        let partial = rule.access & ACC_ALL != ACC_ALL;
        let len = tests.len() + if partial { 3 } else { 0 } + 2;
        for (i, (reg, value)) in tests.iter().enumerate() {
            p.push(insn(JNE_K, *reg, 0, (len - i - 1) as i16, *value));
        }
        if partial {
            // r6 = the accesses asked for beyond the rule's; any → no match.
            p.push(insn(MOV64_X, 6, 3, 0, 0));
            p.push(insn(AND_K, 6, 0, 0, (!rule.access & ACC_ALL) as i32));
            p.push(insn(JNE_K, 6, 0, 2, 0));
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the
    // size passed; the kernel reads at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads a device program for `rules`; the fd holds it.
pub fn load(rules: &[Rule]) -> Result<OwnedFd, HostError> {
    let insns = program(rules);
    let license = CString::new("GPL").unwrap_or_default();
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..9].copy_from_slice(b"kiln_devs");
    match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new fd we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let verifier = String::from_utf8_lossy(&log);
            let verifier = verifier.trim_end_matches('\0').trim();
            Err(HostError::Unsupported(format!(
                "cannot load the cgroup device filter (a BPF program): {e}{}",
                if verifier.is_empty() {
                    String::new()
                } else {
                    format!("; the verifier said: {verifier}")
                }
            )))
        }
    }
}

/// The program for [`super::cgroup::ALLOWED_DEVICES`], loaded once per
/// process, or why it cannot be.
fn sandbox_program() -> &'static Result<OwnedFd, String> {
    static PROGRAM: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let rules: Result<Vec<Rule>, HostError> = super::cgroup::ALLOWED_DEVICES
            .iter()
            .map(|r| Rule::parse(r))
            .collect();
        rules.and_then(|r| load(&r)).map_err(|e| e.to_string())
    })
}

/// Whether this kernel loads the device filter (the first call loads it,
/// and says why not once).
pub fn available() -> bool {
    static SAID: std::sync::Once = std::sync::Once::new();
    match sandbox_program() {
        Ok(_) => true,
        Err(e) => {
            SAID.call_once(|| tracing::warn!("{e}"));
            false
        }
    }
}

/// Attaches the device filter of [`super::cgroup::ALLOWED_DEVICES`] to the
/// cgroup v2 directory `dir`: from now on its processes may open and make
/// only those devices. The attachment lives as long as the cgroup does.
pub fn attach(dir: &Path) -> Result<(), HostError> {
    let program = sandbox_program()
        .as_ref()
        .map_err(|e| HostError::Unsupported(e.clone()))?;
    attach_program(program, dir)
}

/// Attaches a loaded device program to the cgroup v2 directory `dir`.
pub fn attach_program(program: &OwnedFd, dir: &Path) -> Result<(), HostError> {
    let cgroup = std::fs::File::open(dir).map_err(HostError::io("open", dir))?;
    let attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        // Beside any filter a parent cgroup has (systemd's): all must allow.
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr)
        .map(|_| ())
        .map_err(HostError::io("attach the device filter to", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_as_v1_writes_them() {
        assert_eq!(
            Rule::parse("c 136:* rw").unwrap(),
            Rule {
                kind: DEV_CHAR,
                major: 136,
                minor: None,
                access: ACC_READ | ACC_WRITE
            }
        );
        assert_eq!(Rule::parse("b 7:0 m").unwrap().minor, Some(0));
        for bad in [
            "",
            "x 1:3 rwm",
            "c 1 rwm",
            "c 1:y rwm",
            "c 1:3 rwx",
            "c 1:3",
            "c 1:3 r w",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let rules: Vec<Rule> = ["c 1:3 rwm", "c 136:* rwm", "b 7:0 r"]
            .iter()
            .map(|r| Rule::parse(r).unwrap())
            .collect();
        let p = program(&rules);
        for (i, ins) in p.iter().enumerate() {
            if ins.code == JNE_K {
                let to = i as i64 + 1 + i64::from(ins.off);
                assert!(
                    to > i as i64 && (to as usize) < p.len(),
                    "jump at {i} to {to}"
                );
                // A failed test lands on the next rule or the final deny.
                let next = &p[to as usize];
                assert!(
                    (next.code == JNE_K && next.regs & 0xf == 2)
                        || (next.code == MOV64_K && next.imm == 0),
                    "jump at {i} lands on {next:?}"
                );
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
    }
}
