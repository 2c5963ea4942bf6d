//! Runs a real kilnd (`kiln up`) on a temporary data directory and a free
//! loopback port, with host objects of its own (runtime tag and subnet).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Api;

pub struct Options {
    pub kiln_bin: PathBuf,
    /// Where the base template is cached (`KILN_TEMPLATE_DIR`).
    pub template_dir: Option<PathBuf>,
    /// `KILN_RUNTIME_TAG`: names the host objects, apart from other kilnds.
    pub tag: String,
    /// `KILN_SUBNET`.
    pub subnet: String,
    pub start_timeout: Duration,
}

pub struct Kilnd {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub url: String,
    pub key: String,
    pub tag: String,
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// `preferred` (a 10.x.0.0 /16) if no interface routes it yet, else the
/// first free one of 10.220-254 (other test kilnds use 10.150-189 and
/// 10.201-209).
pub fn free_subnet(preferred: &str) -> String {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let taken: Vec<String> = routes
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            (mask != 0).then(|| {
                let b = dest.to_le_bytes();
                format!("{}.{}.0.0", b[0], b[1])
            })
        })
        .collect();
    std::iter::once(preferred.to_string())
        .chain((220..255).map(|n| format!("10.{n}.0.0")))
        .find(|s| !taken.contains(s))
        .unwrap_or_else(|| preferred.to_string())
}

fn random_hex(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < n {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(n);
    out
}

impl Kilnd {
    pub async fn start(opts: &Options) -> Result<Kilnd> {
        let data_dir = std::env::temp_dir().join(format!(
            "kiln-bench-{}-{}",
            std::process::id(),
            random_hex(8)
        ));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let port = free_port()?;
        let key = format!("e2b_{}", random_hex(40));
        let log_path = data_dir.join("kilnd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&opts.kiln_bin);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--no-install")
            .env("KILN_API_KEY", &key)
            .env("KILN_RUNTIME", "container")
            // gVisor too where it runs (a runtime the host cannot run is
            // reported at start, and its rows say why).
            .env("KILN_RUNTIMES", "container,gvisor")
            // Room for the 1 GiB a memory pause is measured with.
            .env("KILN_SANDBOX_MEMORY_MIB", "1536")
            // The density run holds up to 1000 sandboxes of 1536 MiB, 2
            // vCPUs and 4 GiB of (sparse) disk on any host: admission would
            // stop it long before (it measures what the host really holds).
            .env("KILN_VCPU_OVERCOMMIT", "1000")
            .env("KILN_MEMORY_OVERCOMMIT", "1000")
            .env("KILN_DISK_OVERCOMMIT", "1000")
            .env("KILN_TEAM_SANDBOXES", "100000")
            .env("KILN_RUNTIME_TAG", &opts.tag)
            .env("KILN_SUBNET", free_subnet(&opts.subnet))
            .env(
                "KILN_LOG",
                std::env::var("KILN_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(t) = &opts.template_dir {
            cmd.env("KILN_TEMPLATE_DIR", t);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", opts.kiln_bin.display()))?;
        let mut k = Kilnd {
            child: Some(child),
            data_dir,
            url: format!("http://127.0.0.1:{port}"),
            key,
            tag: opts.tag.clone(),
        };
        let api = k.api();
        let deadline = Instant::now() + opts.start_timeout;
        loop {
            if let Some(c) = k.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    k.child = None;
                    bail!("kilnd exited with {status}:\n{}", k.log_tail());
                }
            }
            if api.healthy().await {
                return Ok(k);
            }
            if Instant::now() > deadline {
                bail!(
                    "kilnd did not answer within {:?}:\n{}",
                    opts.start_timeout,
                    k.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.key)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("kilnd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log[log.floor_char_boundary(start)..].to_string()
    }

    /// Kills every sandbox it lists, then SIGINT and up to 20 s to exit;
    /// removes the data directory.
    pub async fn stop(mut self) -> Result<()> {
        let api = self.api();
        let mut result = Ok(());
        // A list page holds up to 1000: a few rounds empty any run.
        for _ in 0..20 {
            match api.list().await {
                Ok(ids) if ids.is_empty() => break,
                Ok(ids) => {
                    for id in ids {
                        if let Err(e) = api.kill(&id).await {
                            result = Err(e);
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            interrupt(c.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() && result.is_ok() {
                        result = Err(anyhow::anyhow!("kilnd exited with {status} on SIGINT"));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    result = Err(anyhow::anyhow!("kilnd did not stop within 20 s of SIGINT"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The log outlives the data dir, for a look after a failed run.
        let kept = std::env::temp_dir().join(format!("kiln-bench-{}-kilnd.log", self.tag));
        let _ = std::fs::copy(self.data_dir.join("kilnd.log"), &kept);
        remove_data_dir(&self.data_dir);
        result
    }
}

fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

fn remove_data_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("kiln-bench: cannot remove {}: {e}", dir.display());
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        // Only on an error path: stop() took the child.
        if let Some(mut c) = self.child.take() {
            interrupt(c.id());
            for _ in 0..200 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
