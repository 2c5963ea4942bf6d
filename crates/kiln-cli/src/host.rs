//! Host checks and package installation for `kiln up`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Debian packages the container runtime and the template builder need at
/// run time (scripts/deps/runtime.txt lists them with what each is for).
pub const HOST_PACKAGES: &[&str] = &["iproute2", "nftables", "e2fsprogs", "mmdebstrap"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
    Unknown,
}

pub struct HostReport {
    pub root: bool,
    pub overlayfs: bool,
    pub user_namespaces: bool,
    pub cgroup: CgroupVersion,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub fn check() -> HostReport {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        CgroupVersion::V2
    } else if Path::new("/sys/fs/cgroup/memory").exists() {
        CgroupVersion::V1
    } else {
        CgroupVersion::Unknown
    };
    HostReport {
        root: is_root(),
        overlayfs: filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("overlay")),
        user_namespaces: Path::new("/proc/self/ns/user").exists(),
        cgroup,
    }
}

impl HostReport {
    pub fn print(&self) {
        let yes = |b: bool| if b { "yes" } else { "NO" };
        eprintln!(
            "host: root {}, overlayfs {}, user namespaces {}, cgroup {}",
            yes(self.root),
            yes(self.overlayfs),
            yes(self.user_namespaces),
            match self.cgroup {
                CgroupVersion::V1 => "v1",
                CgroupVersion::V2 => "v2",
                CgroupVersion::Unknown => "NOT FOUND",
            }
        );
    }

    pub fn require_for_container(&self) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        if !self.root {
            missing.push("root (run kiln up as root, or use --runtime fake for tests)");
        }
        if !self.overlayfs {
            missing.push("overlayfs in the kernel");
        }
        if !self.user_namespaces {
            missing.push("user namespaces");
        }
        if self.cgroup == CgroupVersion::Unknown {
            missing.push("a mounted cgroup hierarchy (v1 or v2)");
        }
        if !missing.is_empty() {
            bail!("the container runtime needs: {}", missing.join(", "));
        }
        Ok(())
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs missing [`HOST_PACKAGES`] with apt-get (as root), or says which.
pub fn install_packages(allowed: bool) -> anyhow::Result<()> {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        eprintln!(
            "not a Debian-based host: make sure these are installed: {}",
            HOST_PACKAGES.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !allowed || !is_root() {
        bail!(
            "missing Debian packages: {} (install them, or run kiln up as root)",
            missing.join(" ")
        );
    }
    eprintln!("installing {} …", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
