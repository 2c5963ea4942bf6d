//! Running `runsc` itself: its global flags, the mount namespace it runs
//! in, its state files, and the host check `kiln doctor` uses.
//!
//! Why a private mount namespace: runsc (Debian's 2022-12-19 release)
//! refuses `--network=sandbox` in what it takes for the host's network
//! namespace, and it decides that by whether
//! `/proc/sys/net/core/rmem_default` exists — which, since Linux 6.x,
//! every network namespace shows. So each runsc command runs in a mount
//! namespace of its own (a slave of the host's, so later host mounts still
//! reach it) with an empty read-only tmpfs over `/proc/sys/net`: the check
//! then sees a namespace that is not the host's, as it is. An unobstructed
//! procfs is mounted beside it (`<data_dir>/proc`), because the kernel lets
//! the sandbox (in its own user namespace) mount a new procfs only where a
//! fully visible one exists. The host's own mount table never sees either.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use crate::runtime::RuntimeError;

/// The file in a checkpoint image's directory that says runsc wrote the
/// image whole (see [`Runsc::checkpoint`]).
pub const SAVED: &str = "kiln-saved";

/// How to run runsc for one runtime.
#[derive(Debug, Clone)]
pub struct Runsc {
    /// The runsc binary.
    pub bin: PathBuf,
    /// runsc's `--root` (its state files), under Kiln's data directory.
    pub root: PathBuf,
    /// The empty directory the visible procfs goes on.
    pub proc_dir: PathBuf,
    /// runsc's own log (`--log`): its errors, appended.
    pub log: PathBuf,
    /// Extra global flags (debugging: `--debug`, `--debug-log=<dir>/`).
    pub extra: Vec<String>,
}

/// What runsc keeps about a sandbox (`<root>/<id>_sandbox:<id>.state`),
/// the part the runtime reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct State {
    /// `created`, `running`, `stopped`, ...
    #[serde(default)]
    pub status: String,
    #[serde(default, rename = "goferPid")]
    pub gofer_pid: i32,
    #[serde(default)]
    pub sandbox: Option<SandboxState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SandboxState {
    #[serde(default)]
    pub pid: i32,
}

impl Runsc {
    fn command(
        &self,
        args: &[&str],
        log: &Path,
        stderr: Stdio,
    ) -> Result<tokio::process::Command, RuntimeError> {
        self.command_marking(args, log, stderr, None)
    }

    /// [`Runsc::command`]; with `marker`, through a shell that creates
    /// that file once runsc has exited with success. The shell outlives a
    /// kilnd killed meanwhile, as runsc does (nothing here kills it with
    /// kilnd), so the next start learns how the command ended.
    fn command_marking(
        &self,
        args: &[&str],
        log: &Path,
        stderr: Stdio,
        marker: Option<&Path>,
    ) -> Result<tokio::process::Command, RuntimeError> {
        let mut cmd = match marker {
            None => tokio::process::Command::new(&self.bin),
            Some(m) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c")
                    .arg(r#"m=$1; shift; "$@" && : > "$m""#)
                    .arg("sh")
                    .arg(m)
                    .arg(&self.bin);
                c
            }
        };
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!("--log={}", log.display()))
            .arg("--network=sandbox")
            .args(&self.extra)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(false);
        let proc_dir = cstring(&self.proc_dir)?;
        let hide = c"/proc/sys/net".to_owned();
        let proc = c"proc".to_owned();
        let tmpfs = c"tmpfs".to_owned();
        let hide_src = c"kiln-hide".to_owned();
        let hide_opts = c"size=4k,mode=555".to_owned();
        let root = c"/".to_owned();
        // SAFETY: the closure runs between fork and exec and only makes
        // raw syscalls (unshare, mount) on strings allocated before the
        // fork; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::mount(
                    proc.as_ptr(),
                    proc_dir.as_ptr(),
                    proc.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::mount(
                    hide_src.as_ptr(),
                    hide.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    hide_opts.as_ptr().cast(),
                );
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `runsc <args>` for a command that starts no sandbox
    /// (checkpoint, pause, resume); an error carries what runsc said.
    pub async fn run(&self, args: &[&str]) -> Result<(), RuntimeError> {
        self.run_marking(args, None).await
    }

    /// Runs `runsc <args>` (`exec` of a command in a sandbox, say) and
    /// returns what it printed; an error carries what runsc said.
    pub async fn output(&self, args: &[&str]) -> Result<String, RuntimeError> {
        self.capture(args, None, Stdio::piped()).await
    }

    /// `runsc checkpoint -image-path <image> <id>`; `<image>/`[`SAVED`]
    /// exists afterwards if and only if it succeeded, even if kilnd was
    /// killed while it ran (see [`Runsc::wait_for_commands`]).
    pub async fn checkpoint(&self, image: &Path, id: &str) -> Result<(), RuntimeError> {
        let image_arg = image.display().to_string();
        self.run_marking(
            &["checkpoint", "-image-path", &image_arg, id],
            Some(&image.join(SAVED)),
        )
        .await
    }

    async fn run_marking(&self, args: &[&str], marker: Option<&Path>) -> Result<(), RuntimeError> {
        self.capture(args, marker, Stdio::null()).await.map(drop)
    }

    /// Runs `runsc <args>` (see [`Runsc::command_marking`] for `marker`)
    /// with its stdout to `stdout`; returns what it printed there.
    async fn capture(
        &self,
        args: &[&str],
        marker: Option<&Path>,
        stdout: Stdio,
    ) -> Result<String, RuntimeError> {
        let what = args.first().copied().unwrap_or("runsc");
        let out = self
            .command_marking(args, &self.log, Stdio::piped(), marker)?
            .stdout(stdout)
            .output()
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("failed to run {} {what}", self.bin.display()),
                source,
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(RuntimeError::Other(format!(
            "runsc {} failed ({}): {}",
            args.join(" "),
            out.status,
            if said.is_empty() {
                format!("see {}", self.log.display())
            } else {
                said
            }
        )))
    }

    /// Runs `runsc run|restore -detach ...`, which starts a sandbox. Its
    /// processes inherit runsc's stdio and log, so both go nowhere a pipe
    /// would wait on: stdio to /dev/null (the agent's output, as in the
    /// container runtime), the log to `log` (the sandbox's own, deleted
    /// with it). An error carries runsc's fatal line from that log.
    pub async fn start(&self, args: &[&str], log: &Path) -> Result<(), RuntimeError> {
        let what = args.first().copied().unwrap_or("runsc");
        let status = self
            .command(args, log, Stdio::null())?
            .status()
            .await
            .map_err(|source| RuntimeError::Io {
                context: format!("failed to run {} {what}", self.bin.display()),
                source,
            })?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let said = text
            .lines()
            .rev()
            .find_map(|l| l.split_once("FATAL ERROR: ").map(|(_, m)| m.to_owned()))
            .unwrap_or_else(|| {
                // No fatal line: the log's last words.
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            });
        Err(RuntimeError::Other(format!(
            "runsc {what} failed ({status}): {said}"
        )))
    }

    /// The state file runsc keeps of sandbox `id`, if any.
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}_sandbox:{id}.state"))
    }

    /// What runsc recorded of sandbox `id` (`None`: runsc knows no such).
    pub fn state(&self, id: &str) -> Option<State> {
        let bytes = std::fs::read(self.state_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Deletes sandbox `id` whatever its state (`runsc delete --force`),
    /// then collects its sandbox and gofer processes if they were ours
    /// (kilnd is their subreaper). Unknown to runsc is not an error.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let me = self.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || me.delete_blocking(&id))
            .await
            .map_err(|e| RuntimeError::Other(format!("blocking task failed: {e}")))?
    }

    /// [`Runsc::delete`], blocking.
    pub fn delete_blocking(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(st) = self.state(id) else {
            return Ok(());
        };
        let pids = [st.sandbox.map(|s| s.pid).unwrap_or(0), st.gofer_pid];
        let mut child = std::process::Command::new(&self.bin)
            .arg(format!("--root={}", self.root.display()))
            .arg(format!("--log={}", self.log.display()))
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RuntimeError::Io {
                context: format!("failed to run {} delete", self.bin.display()),
                source,
            })?;
        // runsc delete kills the sandbox (unless a checkpoint ended it
        // already) and waits until its processes are gone; they are our
        // children (subreaper) and stay zombies until collected, which
        // runsc would wait 5 s for: collect them meanwhile.
        loop {
            for &pid in pids.iter().filter(|p| **p > 0) {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| RuntimeError::Io {
                context: format!("failed to run {} delete", self.bin.display()),
                source,
            })?;
        reap(&pids, std::time::Duration::from_secs(2));
        if !out.status.success() && self.state_path(id).exists() {
            // A sandbox runsc cannot delete (its processes gone, a state
            // file from before a reboot): make sure nothing of it runs,
            // then drop its state files.
            // Only processes that are runsc's for this sandbox (a state
            // file from before a reboot names pids reused since).
            for pid in pids.into_iter().filter(|p| *p > 0 && is_runsc_of(*p, id)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            reap(&pids, std::time::Duration::from_secs(2));
            tracing::warn!(id, said = %String::from_utf8_lossy(&out.stderr).trim(), "runsc could not delete a sandbox; its state files are removed");
            let _ = std::fs::remove_file(self.state_path(id));
            let _ = std::fs::remove_file(self.root.join(format!("{id}_sandbox:{id}.lock")));
        }
        Ok(())
    }

    /// Waits (up to `wait`) until no runsc command of this root runs: after
    /// a kilnd crash, a checkpoint or a restore it started may still be at
    /// work, and what it leaves (a sandbox ended or started, an image
    /// written) decides what recovery keeps. The sandboxes' own processes
    /// (`runsc-sandbox`, `runsc-gofer`) are not commands. Returns how many
    /// were still running when the wait gave up.
    pub fn wait_for_commands(&self, wait: std::time::Duration) -> usize {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let n = self.commands_running();
            if n == 0 || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn commands_running(&self) -> usize {
        let bin = self.bin.as_os_str().as_encoded_bytes();
        let root = format!("--root={}", self.root.display());
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return 0;
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter_map(cmdline)
            .filter(|args| {
                let has = |a: &[u8]| args.iter().any(|x| x == a);
                // runsc itself, or the shell that marks its success.
                let runsc = args.first().is_some_and(|a| a == bin)
                    || (args.first().is_some_and(|a| a == b"/bin/sh") && has(bin));
                runsc && has(root.as_bytes())
            })
            .count()
    }

    /// Ids of every sandbox runsc has state of under this root.
    pub fn ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let stem = n.strip_suffix(".state")?;
                let (id, _) = stem.split_once("_sandbox:")?;
                Some(id.to_owned())
            })
            .collect()
    }
}

/// Waits (up to `wait` in all) for processes that are gone or going and
/// collects them if they are this process's children.
fn reap(pids: &[i32], wait: std::time::Duration) {
    let deadline = std::time::Instant::now() + wait;
    for &pid in pids.iter().filter(|p| **p > 0) {
        let pid = nix::unistd::Pid::from_raw(pid);
        while let Ok(nix::sys::wait::WaitStatus::StillAlive) =
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Process `pid`'s arguments (`/proc/<pid>/cmdline`), if it is there.
fn cmdline(pid: i32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect())
}

/// Whether process `pid` is a runsc process of sandbox `id`.
pub(super) fn is_runsc_of(pid: i32, id: &str) -> bool {
    let Some(args) = cmdline(pid) else {
        return false;
    };
    args.first().is_some_and(|a| a.starts_with(b"runsc"))
        && args
            .iter()
            .any(|a| a == id.as_bytes() || a.ends_with(format!("/{id}").as_bytes()))
}

fn cstring(p: &Path) -> Result<CString, RuntimeError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| RuntimeError::InvalidSpec(format!("{} contains a NUL byte", p.display())))
}

/// Whether runsc is installed and answers, and its version line.
pub fn version(bin: &Path) -> Result<String, String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (install the runsc package)",
                bin.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Finds runsc: `KILN_RUNSC` if set, else on the PATH.
pub fn find(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("runsc"))
            .find(|p| p.is_file())
    })
}

/// Proves runsc works on this host: its version, then a tiny sandbox
/// (`runsc do true`, the host's `true` on gVisor's kernel, no network) in
/// a temporary `--root`. Needs root. Returns the version line, or why not.
pub fn probe(bin: &Path) -> Result<String, String> {
    let v = version(bin)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(format!("{v}: not checked (runsc needs root)"));
    }
    let root = std::env::temp_dir().join(format!("kiln-runsc-probe-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let out = std::process::Command::new(bin)
        .arg(format!("--root={}", root.display()))
        .args(["--network=none", "do", "true"])
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_dir_all(&root);
    let out = out.map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{v}: `runsc do true` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(v)
}
