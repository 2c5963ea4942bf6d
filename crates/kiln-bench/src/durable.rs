//! Durable state, per runtime: pause and resume with memory (with a given
//! amount of memory touched inside) and keeping only the filesystem,
//! snapshot latency and the disk a snapshot takes, fork latency.
//!
//! Each measurement runs on every runtime kilnd was asked about; a runtime
//! this host does not run, or that cannot do the operation, is a skipped
//! row with the server's reason, never a missing one.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::client::{Api, Sandbox};
use crate::measure::BASE;
use crate::report::Outcome;
use crate::stats::Summary;

/// The runtimes the benchmark tries.
pub const RUNTIMES: &[&str] = &["container", "gvisor", "microvm"];

/// How many of each.
pub struct Counts {
    pub pause_reps: usize,
    /// MiB of memory touched inside before a memory pause (each a row).
    pub touched_mib: Vec<u64>,
    pub snapshot_reps: usize,
    /// MiB the sandbox writes before its snapshot (the snapshot's content).
    pub written_mib: u64,
    pub fork_reps: usize,
    pub fork_count: usize,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// A sandbox on `runtime`, or why there is none (the server's answer).
async fn sandbox_on(api: &Api, runtime: &str) -> Result<Sandbox, String> {
    api.create_on(BASE, Some(runtime))
        .await
        .map_err(|e| format!("{e:#}"))
}

async fn sh(api: &Api, s: &Sandbox, script: &str) -> Result<()> {
    let code = api.exec(s, "/bin/sh", &["-c", script]).await?;
    if code != 0 {
        bail!("{script:?} exited with {code}");
    }
    Ok(())
}

/// Touches `mib` MiB in a process that stays (and its pages with it).
async fn touch_memory(api: &Api, s: &Sandbox, mib: u64) -> Result<()> {
    let py = format!(
        "import time; b = bytearray({mib} << 20)\n\
         for i in range(0, len(b), 4096): b[i] = 1\n\
         open('/tmp/touched', 'w').close(); time.sleep(86400)"
    );
    sh(
        api,
        s,
        &format!("nohup python3 -c \"{py}\" >/dev/null 2>&1 &"),
    )
    .await?;
    for _ in 0..600 {
        if api.exec(s, "/bin/test", &["-f", "/tmp/touched"]).await? == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("{mib} MiB were not touched within a minute")
}

/// Pause and resume with memory, `mib` MiB touched: two rows.
async fn pause_memory(api: &Api, runtime: &str, mib: u64, reps: usize) -> Vec<Outcome> {
    let names = [
        format!("{runtime}: pause with memory ({mib} MiB touched)"),
        format!("{runtime}: resume with memory ({mib} MiB touched)"),
    ];
    let s = match sandbox_on(api, runtime).await {
        Ok(s) => s,
        Err(why) => return names.iter().map(|n| Outcome::skipped(n, &why)).collect(),
    };
    let r = async {
        touch_memory(api, &s, mib).await?;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            api.pause(&s.id, true).await?;
            pause.push(ms(t));
            let t = Instant::now();
            api.resume(&s.id).await?;
            resume.push(ms(t));
            // The process and its memory are still there.
            sh(
                api,
                &s,
                "test -f /tmp/touched && pgrep -f bytearray >/dev/null",
            )
            .await?;
        }
        anyhow::Ok((pause, resume))
    }
    .await;
    let _ = api.kill(&s.id).await;
    match r {
        Ok((p, r)) => vec![
            Outcome::measured(&names[0], "ms", Summary::of(&p)),
            Outcome::measured(&names[1], "ms", Summary::of(&r)),
        ],
        Err(e) => names
            .iter()
            .map(|n| Outcome::skipped(n, format!("FAILED or unsupported: {e:#}")))
            .collect(),
    }
}

/// Pause keeping only the filesystem and resume (a boot): two rows.
async fn pause_filesystem(api: &Api, runtime: &str, reps: usize) -> Vec<Outcome> {
    let names = [
        format!("{runtime}: pause keeping the filesystem"),
        format!("{runtime}: resume from the filesystem (a boot)"),
    ];
    let s = match sandbox_on(api, runtime).await {
        Ok(s) => s,
        Err(why) => return names.iter().map(|n| Outcome::skipped(n, &why)).collect(),
    };
    let r = async {
        sh(api, &s, "echo kept > /home/user/f").await?;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            api.pause(&s.id, false).await?;
            pause.push(ms(t));
            let t = Instant::now();
            api.resume(&s.id).await?;
            resume.push(ms(t));
            sh(api, &s, "grep -qx kept /home/user/f").await?;
        }
        anyhow::Ok((pause, resume))
    }
    .await;
    let _ = api.kill(&s.id).await;
    match r {
        Ok((p, r)) => vec![
            Outcome::measured(&names[0], "ms", Summary::of(&p)),
            Outcome::measured(&names[1], "ms", Summary::of(&r)),
        ],
        Err(e) => names
            .iter()
            .map(|n| Outcome::skipped(n, format!("FAILED or unsupported: {e:#}")))
            .collect(),
    }
}

/// Snapshot latency (the runtime's default mode) and its size on disk
/// after the sandbox wrote `written_mib` MiB; one row, sizes as notes.
async fn snapshot(api: &Api, runtime: &str, reps: usize, written_mib: u64) -> Outcome {
    let name = format!("{runtime}: snapshot ({written_mib} MiB written)");
    let s = match sandbox_on(api, runtime).await {
        Ok(s) => s,
        Err(why) => return Outcome::skipped(&name, why),
    };
    let r = async {
        sh(
            api,
            &s,
            &format!(
                "head -c {} /dev/urandom > /home/user/data",
                written_mib << 20
            ),
        )
        .await?;
        let (mut took, mut sizes) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            let (id, bytes) = api.snapshot(&s.id, None).await?;
            took.push(ms(t));
            sizes.push(bytes);
            api.delete_snapshot(&id).await?;
        }
        anyhow::Ok((took, sizes))
    }
    .await;
    let _ = api.kill(&s.id).await;
    match r {
        Ok((took, sizes)) => {
            let mib = sizes.iter().copied().max().unwrap_or(0) as f64 / (1 << 20) as f64;
            Outcome::measured(&name, "ms", Summary::of(&took))
                .note("disk per snapshot", format!("{mib:.1} MiB"))
        }
        Err(e) => Outcome::skipped(&name, format!("FAILED or unsupported: {e:#}")),
    }
}

/// Fork latency: `count` copies of a running sandbox, all started.
async fn fork(api: &Api, runtime: &str, reps: usize, count: usize) -> Outcome {
    let name = format!("{runtime}: fork (count={count}, all copies answering)");
    let s = match sandbox_on(api, runtime).await {
        Ok(s) => s,
        Err(why) => return Outcome::skipped(&name, why),
    };
    let r = async {
        sh(api, &s, "echo source > /home/user/f").await?;
        let mut took = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let copies = api.fork(&s.id, count).await?;
            took.push(ms(t));
            for c in &copies {
                api.kill(c).await?;
            }
        }
        anyhow::Ok(took)
    }
    .await;
    let _ = api.kill(&s.id).await;
    match r {
        Ok(took) => Outcome::measured(&name, "ms", Summary::of(&took)),
        Err(e) => Outcome::skipped(&name, format!("FAILED or unsupported: {e:#}")),
    }
}

/// Every durable-state row for every runtime.
pub async fn all(api: &Api, c: &Counts) -> Vec<Outcome> {
    let mut out = Vec::new();
    for runtime in RUNTIMES {
        for mib in &c.touched_mib {
            out.extend(pause_memory(api, runtime, *mib, c.pause_reps).await);
        }
        out.extend(pause_filesystem(api, runtime, c.pause_reps).await);
        out.push(snapshot(api, runtime, c.snapshot_reps, c.written_mib).await);
        out.push(fork(api, runtime, c.fork_reps, c.fork_count).await);
    }
    out
}
