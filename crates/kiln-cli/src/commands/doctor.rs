//! `kiln doctor`: what this host can run and what is missing, each problem
//! with the command that fixes it.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::connection::{print_json, ClientArgs};
use crate::host::{self, CgroupVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    level: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

fn dpkg_installed(pkg: &str) -> Option<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn cgroup_controllers(v: CgroupVersion) -> Vec<String> {
    match v {
        CgroupVersion::V2 => std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        CgroupVersion::V1 => ["memory", "cpu", "pids", "freezer"]
            .iter()
            .filter(|c| Path::new("/sys/fs/cgroup").join(c).exists())
            .map(|c| c.to_string())
            .collect(),
        CgroupVersion::Unknown => Vec::new(),
    }
}

/// (CPU has vmx or svm, runs under a hypervisor), from /proc/cpuinfo.
fn cpu_flags() -> (bool, bool) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    (
        flags.iter().any(|f| *f == "vmx" || *f == "svm"),
        flags.contains(&"hypervisor"),
    )
}

fn host_checks() -> Vec<Check> {
    let mut out = Vec::new();
    let h = host::check();
    out.push(check(
        "runtimes",
        Level::Ok,
        format!(
            "this build has: {}",
            kiln_server::runtime::AVAILABLE_RUNTIMES
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None,
    ));
    out.push(if h.root {
        check("root", Level::Ok, "running as root", None)
    } else {
        check(
            "root",
            Level::Fail,
            "not root: the container runtime needs root",
            Some("sudo kiln up"),
        )
    });
    out.push(if h.overlayfs {
        check("overlayfs", Level::Ok, "in the kernel", None)
    } else {
        check(
            "overlayfs",
            Level::Fail,
            "not in /proc/filesystems",
            Some("sudo modprobe overlay"),
        )
    });
    out.push(if h.user_namespaces {
        check("user namespaces", Level::Ok, "available", None)
    } else {
        check(
            "user namespaces",
            Level::Fail,
            "not available",
            Some("a kernel with CONFIG_USER_NS=y"),
        )
    });
    let controllers = cgroup_controllers(h.cgroup);
    out.push(match h.cgroup {
        CgroupVersion::V2 => check(
            "cgroup",
            Level::Ok,
            format!("v2 (controllers: {})", controllers.join(" ")),
            None,
        ),
        CgroupVersion::V1 => {
            let missing: Vec<&str> = ["memory", "cpu", "pids", "freezer"]
                .into_iter()
                .filter(|c| !controllers.iter().any(|x| x == c))
                .collect();
            if missing.is_empty() {
                check(
                    "cgroup",
                    Level::Ok,
                    "v1 (memory, cpu, pids, freezer mounted)",
                    None,
                )
            } else {
                check(
                    "cgroup",
                    Level::Warn,
                    format!("v1 without {}", missing.join(", ")),
                    Some("mount the missing v1 controllers, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)"),
                )
            }
        }
        CgroupVersion::Unknown => check(
            "cgroup",
            Level::Fail,
            "no cgroup hierarchy mounted",
            Some("sudo mount -t cgroup2 none /sys/fs/cgroup"),
        ),
    });
    // KVM: presence only. Running a guest to prove it works costs seconds and
    // a guest kernel; nested or paravirtual KVM may be present and still boot
    // nothing, which a microvm runtime must detect at its own start.
    let kvm = Path::new("/dev/kvm");
    out.push(if !kvm.exists() {
        check(
            "kvm",
            Level::Warn,
            "/dev/kvm absent: a microvm runtime would fall back to software emulation (TCG); the container runtime does not need it",
            Some("enable virtualization in the firmware, or nested virtualization in the hypervisor; sudo modprobe kvm_intel (or kvm_amd)"),
        )
    } else {
        match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
            Ok(_) => {
                let (virt, nested) = cpu_flags();
                match (virt, nested) {
                    (true, false) => check(
                        "kvm",
                        Level::Ok,
                        "/dev/kvm present and openable, CPU has hardware virtualization (not proven by booting a guest)",
                        None,
                    ),
                    (true, true) => check(
                        "kvm",
                        Level::Ok,
                        "/dev/kvm present and openable, nested under a hypervisor: guests should run, slower (not proven by booting one)",
                        None,
                    ),
                    (false, _) => check(
                        "kvm",
                        Level::Warn,
                        "/dev/kvm present, but the CPU shows no vmx/svm (paravirtual or emulated KVM): it may boot no stock guest kernel; a microvm runtime must verify and fall back to TCG",
                        Some("expose hardware virtualization to this machine (nested virtualization in its hypervisor)"),
                    ),
                }
            }
            Err(e) => check(
                "kvm",
                Level::Warn,
                format!("/dev/kvm present but not openable ({e})"),
                Some("run as root, or add your user to the kvm group: sudo usermod -aG kvm $USER"),
            ),
        }
    });
    // gVisor: runsc installed and able to run a sandbox here.
    out.push(match kiln_runtime::gvisor::runsc::find(
        std::env::var_os("KILN_RUNSC")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .as_deref(),
    ) {
        None => check(
            "gvisor",
            Level::Warn,
            "runsc not found: the gvisor runtime is unavailable (the container runtime does not need it)",
            Some("sudo apt-get install -y runsc"),
        ),
        Some(bin) => match kiln_runtime::gvisor::runsc::probe(&bin) {
            Ok(v) => check(
                "gvisor",
                Level::Ok,
                format!("{v} at {} runs a sandbox (runsc do true)", bin.display()),
                None,
            ),
            Err(why) => check(
                "gvisor",
                Level::Warn,
                format!("the gvisor runtime is unavailable: {why}"),
                Some("run kiln doctor as root; see runsc's own output above"),
            ),
        },
    });
    // Packages kiln up needs, then optional ones.
    if Path::new("/usr/bin/dpkg-query").exists() {
        let missing: Vec<&str> = host::HOST_PACKAGES
            .iter()
            .copied()
            .filter(|p| dpkg_installed(p) == Some(false))
            .collect();
        out.push(if missing.is_empty() {
            check(
                "packages",
                Level::Ok,
                format!("installed: {}", host::HOST_PACKAGES.join(" ")),
                None,
            )
        } else {
            let fix = format!(
                "sudo apt-get install -y --no-install-recommends {}",
                missing.join(" ")
            );
            check(
                "packages",
                Level::Fail,
                format!("missing: {}", missing.join(" ")),
                Some(&fix),
            )
        });
        for (pkg, bin, what) in [
            ("runsc", "runsc", "for a gvisor runtime"),
            (
                "qemu-system-x86",
                "qemu-system-x86_64",
                "for a microvm runtime",
            ),
        ] {
            out.push(if on_path(bin) {
                check("optional", Level::Ok, format!("{bin} ({what})"), None)
            } else {
                check(
                    "optional",
                    Level::Warn,
                    format!("{bin} not found ({what}; the container runtime does not need it)"),
                    Some(&format!("sudo apt-get install -y {pkg}")),
                )
            });
        }
    } else {
        out.push(check(
            "packages",
            Level::Warn,
            format!(
                "not a Debian-based host: make sure these are installed: {}",
                host::HOST_PACKAGES.join(" ")
            ),
            None,
        ));
    }
    out
}

async fn server_checks(args: &ClientArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let client = match args.client() {
        Ok(c) => c,
        Err(e) => {
            out.push(check("server", Level::Fail, format!("{e:#}"), None));
            return out;
        }
    };
    let url = client.config().api_url.clone();
    match client.health().await {
        Ok(()) => out.push(check(
            "server",
            Level::Ok,
            format!("kilnd answers at {url}"),
            None,
        )),
        Err(e) => {
            out.push(check(
                "server",
                Level::Warn,
                format!("kilnd does not answer at {url}: {e}"),
                Some("sudo kiln up   (or set KILN_API_URL to where it runs)"),
            ));
            return out;
        }
    }
    if client.config().api_key.is_none() {
        out.push(check(
            "api key",
            Level::Warn,
            "no API key configured",
            Some("export KILN_API_KEY=$(sudo kiln keys create)"),
        ));
        return out;
    }
    match client.templates().await {
        Ok(t) => out.push(check(
            "api key",
            Level::Ok,
            format!(
                "accepted; templates: {}",
                t.iter()
                    .map(|t| t.aliases.first().unwrap_or(&t.template_id).clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )),
        Err(e) => out.push(check(
            "api key",
            Level::Fail,
            e.to_string(),
            Some("export KILN_API_KEY=$(sudo kiln keys create)"),
        )),
    }
    out
}

/// Prints the report; returns the exit code (1 when something fails).
pub async fn run(args: &ClientArgs) -> anyhow::Result<i32> {
    let mut checks = host_checks();
    checks.extend(server_checks(args).await);
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if args.json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag} {:<16} {}", c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("     {:<16} fix: {f}", "");
            }
        }
    }
    Ok(i32::from(failed))
}
