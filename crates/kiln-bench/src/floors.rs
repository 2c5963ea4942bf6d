//! The floors: bare sandbox starts of other tools on the same machine
//! (`bwrap`, `runsc do`, `crun run` of a minimal bundle), each timed from
//! spawn to exit. Missing tools are installed (Debian packages) when
//! allowed, else reported as skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::report::Outcome;
use crate::stats::Summary;

/// Debian package of each floor's tool.
const PACKAGES: &[(&str, &str)] = &[
    ("bwrap", "bubblewrap"),
    ("runsc", "runsc"),
    ("crun", "crun"),
];

/// `which`: the tool's path on PATH.
fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// Installs the missing tools' packages with apt-get (as root).
pub fn install_missing() -> Vec<String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    let mut notes = Vec::new();
    if missing.is_empty() {
        return notes;
    }
    eprintln!("kiln-bench: installing {}", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        notes.push(format!("apt-get install {} failed", missing.join(" ")));
    }
    notes
}

/// Runs `cmd` `n` times; each run must exit 0 within 30 s.
fn time_runs(n: usize, mut make: impl FnMut(usize) -> Command) -> Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = make(i);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        let deadline = t + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{cmd:?} did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        if !status.success() {
            let out = child.wait_with_output()?;
            bail!(
                "{cmd:?} exited with {status}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        ms.push(elapsed);
    }
    Ok(ms)
}

fn outcome(tool: &str, command: &str, runs: impl FnOnce() -> Result<Vec<f64>>) -> Outcome {
    if which(tool).is_none() {
        return Outcome::skipped(command, format!("{tool} is not installed"));
    }
    match runs() {
        Ok(ms) => Outcome::measured(command, "ms", Summary::of(&ms)),
        Err(e) => Outcome::skipped(command, format!("failed: {e:#}")),
    }
}

pub fn bwrap(n: usize) -> Outcome {
    // `bwrap --unshare-all true` alone has no root file system to find
    // `true` in: the host's, read-only, is the cheapest one.
    let command = "bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc true";
    outcome("bwrap", command, || {
        time_runs(n, |_| {
            let mut c = Command::new("bwrap");
            c.args(["--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev"])
                .args(["--proc", "/proc", "true"]);
            c
        })
    })
}

pub fn runsc(n: usize) -> Outcome {
    let command = "runsc do true";
    outcome("runsc", command, || {
        time_runs(n, |_| {
            let mut c = Command::new("runsc");
            // --network=none: `runsc do` otherwise sets up host networking.
            c.args(["--network=none", "do", "true"]);
            c
        })
    })
}

/// A minimal OCI bundle: busybox-static as the whole rootfs, `crun spec`'s
/// defaults, `true` as the process.
fn crun_bundle(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs/bin");
    std::fs::create_dir_all(&rootfs)
        .with_context(|| format!("cannot create {}", rootfs.display()))?;
    let busybox = which("busybox").context("busybox is not installed (busybox-static)")?;
    std::fs::copy(&busybox, rootfs.join("busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("true"))
        .context("cannot link rootfs/bin/true")?;
    let spec = Command::new("crun")
        .arg("spec")
        .current_dir(dir)
        .status()
        .context("cannot run crun spec")?;
    if !spec.success() {
        bail!("crun spec exited with {spec}");
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).context("crun spec wrote no config.json")?;
    let mut v: serde_json::Value = serde_json::from_str(&text)?;
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    v["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, v.to_string()).context("cannot write config.json")?;
    Ok(())
}

/// crun refuses a hybrid cgroup layout with a controller on the cgroup2
/// mount (here: hugetlb on /sys/fs/cgroup/unified).
fn hybrid_with_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false)
}

/// Times `crun run` of the bundle `n` times in this process (in the private
/// mount namespace `crun` runs us in on a hybrid host); prints one figure
/// (ms) a line.
pub fn crun_runs(n: usize, bundle: &Path) -> Result<()> {
    let pid = std::process::id();
    for ms in time_runs(n, |i| {
        let mut c = Command::new("crun");
        c.args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("kiln-bench-{pid}-{i}"));
        c
    })? {
        println!("{ms}");
    }
    Ok(())
}

pub fn crun(n: usize, work: &Path) -> Outcome {
    let command = "crun run (busybox bundle, /bin/true)";
    let hybrid = hybrid_with_controllers();
    let o = outcome("crun", command, || {
        let dir = work.join("crun-bundle");
        let _ = std::fs::remove_dir_all(&dir);
        crun_bundle(&dir)?;
        let me = std::env::current_exe().context("cannot find this program's path")?;
        let mut c = if hybrid {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg("umount -l /sys/fs/cgroup/unified && exec \"$0\" \"$@\"")
                .arg(&me);
            c
        } else {
            Command::new(&me)
        };
        c.arg("--crun-floor-runs")
            .arg(n.to_string())
            .arg("--crun-bundle")
            .arg(&dir);
        let out = c.output().context("cannot run the crun timer")?;
        let _ = std::fs::remove_dir_all(&dir);
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    });
    if hybrid {
        o.note(
            "run in",
            "a private mount namespace without the cgroup2 mount (crun refuses hybrid mode with a controller on it)",
        )
    } else {
        o
    }
}
