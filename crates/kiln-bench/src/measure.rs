//! The measurements against a running kilnd. Each returns an [`Outcome`];
//! every sandbox a measurement creates is killed before it returns.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use crate::client::{Api, Sandbox};
use crate::host;
use crate::report::Outcome;
use crate::stats::Summary;

/// The template every measurement but run_code uses.
pub const BASE: &str = "base";
/// Template names the code interpreter may be published under.
const INTERPRETER_TEMPLATES: &[&str] = &["code-interpreter-v1", "code-interpreter"];

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Kills `sbxs`, all of them, even when some kills fail.
async fn kill_all(api: &Api, sbxs: &[Sandbox]) -> Result<()> {
    let mut first = Ok(());
    for s in sbxs {
        if let Err(e) = api.kill(&s.id).await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// A measurement's name on `runtime` (none: kilnd's default runtime).
fn named(runtime: Option<&str>, what: &str) -> String {
    match runtime {
        Some(r) => format!("{r}: {what}"),
        None => what.to_owned(),
    }
}

/// Create → first command (`/bin/true`) done, `n` times in a row; also the
/// create alone. One unmeasured round first (connections, caches).
pub async fn create_first_command(api: &Api, n: usize) -> Result<(Outcome, Outcome)> {
    create_first_command_on(api, None, n, Duration::ZERO).await
}

/// [`create_first_command`] on `runtime`, with `gap` between the rounds
/// (an agent that works in each sandbox for a while; the runtime's warm
/// pool refills meanwhile).
pub async fn create_first_command_on(
    api: &Api,
    runtime: Option<&str>,
    n: usize,
    gap: Duration,
) -> Result<(Outcome, Outcome)> {
    let s = api.create_on(BASE, runtime).await?;
    let code = api.exec(&s, "/bin/true", &[]).await;
    api.kill(&s.id).await?;
    if code? != 0 {
        bail!("/bin/true failed in a fresh sandbox");
    }
    let mut total = Vec::with_capacity(n);
    let mut create = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        let s = api.create_on(BASE, runtime).await?;
        create.push(ms(t));
        let r = api.exec(&s, "/bin/true", &[]).await;
        total.push(ms(t));
        api.kill(&s.id).await?;
        if r? != 0 {
            bail!("/bin/true failed in a fresh sandbox");
        }
    }
    let pace = if gap.is_zero() {
        "sequential".to_owned()
    } else {
        format!("one every {} ms", gap.as_millis())
    };
    Ok((
        Outcome::measured(
            &named(
                runtime,
                &format!("create → first command done ({n} {pace})"),
            ),
            "ms",
            Summary::of(&total),
        ),
        Outcome::measured(
            &named(runtime, "create alone (POST /sandboxes, same runs)"),
            "ms",
            Summary::of(&create),
        ),
    ))
}

/// Create → first command, exec round trips and `/files` on another
/// runtime than kilnd's default, or one row saying why that runtime
/// cannot be measured here (the server's answer).
pub async fn on_runtime(
    api: &Api,
    runtime: &str,
    n: usize,
    gap: Duration,
    execs: usize,
    bytes: usize,
    reps: usize,
) -> Result<Vec<Outcome>> {
    match api.create_on(BASE, Some(runtime)).await {
        Ok(s) => api.kill(&s.id).await?,
        Err(e) => {
            return Ok(vec![Outcome::skipped(
                &named(Some(runtime), "create → first command"),
                format!("{e:#}"),
            )])
        }
    }
    let (a, b) = create_first_command_on(api, Some(runtime), n, gap).await?;
    let mut out = vec![a, b];
    out.extend(exec_round_trip_on(api, Some(runtime), execs).await?);
    out.extend(files_on(api, Some(runtime), bytes, reps).await?);
    Ok(out)
}

/// The pause before the burst of concurrent creates.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// `n` creates started at once; the latency of each.
pub async fn concurrent_creates(api: &Api, n: usize) -> Result<Outcome> {
    // A burst on a kilnd that has had a moment to itself: its warm pool is
    // refilled after the sequential creates (a pool still filling would put
    // its own work into the burst).
    tokio::time::sleep(SETTLE).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = api.create(BASE).await;
                (r, ms(t))
            })
        })
        .collect();
    let mut made = Vec::new();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (r, m) = t.await.context("a create task panicked")?;
        match r {
            Ok(s) => {
                made.push(s);
                lat.push(m);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let wall = ms(start);
    kill_all(api, &made).await?;
    if let Some(e) = errors.first() {
        bail!(
            "{} of {n} concurrent creates failed, first: {e}",
            errors.len()
        );
    }
    Ok(Outcome::measured(
        &format!("{n} concurrent creates (latency of each)"),
        "ms",
        Summary::of(&lat),
    )
    .note("all done in", format!("{wall:.0} ms")))
}

/// Exec round trips in one running sandbox: `/bin/true` as a bare process,
/// and `bash -l -c true` as the SDK's `commands.run("true")` sends it.
pub async fn exec_round_trip(api: &Api, n: usize) -> Result<Vec<Outcome>> {
    exec_round_trip_on(api, None, n).await
}

async fn exec_round_trip_on(api: &Api, runtime: Option<&str>, n: usize) -> Result<Vec<Outcome>> {
    let s = api.create_on(BASE, runtime).await?;
    let r = async {
        let mut out = Vec::new();
        for (label, cmd, args) in [
            ("exec round trip (/bin/true)", "/bin/true", &[][..]),
            (
                "exec round trip (bash -l -c true, as commands.run)",
                "/bin/bash",
                &["-l", "-c", "true"][..],
            ),
        ] {
            for _ in 0..3 {
                api.exec(&s, cmd, args).await?;
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let code = api.exec(&s, cmd, args).await?;
                v.push(ms(t));
                if code != 0 {
                    bail!("{cmd} exited with {code}");
                }
            }
            out.push(Outcome::measured(
                &named(runtime, label),
                "ms",
                Summary::of(&v),
            ));
        }
        Ok(out)
    }
    .await;
    api.kill(&s.id).await?;
    r
}

/// `run_code("1+1")` in a warm context of a code-interpreter sandbox, or
/// why it was skipped.
pub async fn run_code(api: &Api, n: usize) -> Result<Outcome> {
    let what = "run_code(\"1+1\"), warm (POST /execute)";
    let templates = api.templates().await?;
    let Some(tpl) = INTERPRETER_TEMPLATES
        .iter()
        .find(|t| templates.iter().any(|x| x == *t))
    else {
        return Ok(Outcome::skipped(
            what,
            "no code-interpreter template in this kilnd",
        ));
    };
    let s = api.create(tpl).await?;
    let r = async {
        // The kernel may still be starting: up to 60 s for a first answer.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match api.run_code(&s, "1+1").await {
                Ok(out) if out.contains('2') => break,
                Ok(out) if Instant::now() > deadline => bail!("run_code(\"1+1\") answered {out}"),
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let out = api.run_code(&s, "1+1").await?;
            v.push(ms(t));
            if !out.contains('2') {
                bail!("run_code(\"1+1\") answered {out}");
            }
        }
        Ok(Outcome::measured(what, "ms", Summary::of(&v)).note("template", *tpl))
    }
    .await;
    api.kill(&s.id).await?;
    r
}

/// Create of a code-interpreter sandbox → first `run_code("1+1")` result:
/// `n` in a row, then `concurrent` agents at once (each its own create and
/// first run). What E2B's template snapshot gives: a kernel already running.
/// Between the two, a pause lets the warm pool refill.
pub async fn interpreter_first_result(
    api: &Api,
    n: usize,
    concurrent: usize,
    settle: Duration,
) -> Result<Vec<Outcome>> {
    let seq_what = format!("code interpreter: create → first run_code result ({n} sequential)");
    let conc_what =
        format!("code interpreter: create → first run_code result ({concurrent} at once)");
    let templates = api.templates().await?;
    let Some(tpl) = INTERPRETER_TEMPLATES
        .iter()
        .find(|t| templates.iter().any(|x| x == *t))
    else {
        let why = "no code-interpreter template in this kilnd";
        return Ok(vec![
            Outcome::skipped(&seq_what, why),
            Outcome::skipped(&conc_what, why),
        ]);
    };
    async fn one(api: &Api, tpl: &str) -> Result<f64> {
        let t = Instant::now();
        let s = api.create(tpl).await?;
        let r = api.run_code(&s, "1+1").await;
        let took = ms(t);
        api.kill(&s.id).await?;
        let out = r?;
        if !out.contains('2') {
            bail!("the first run_code(\"1+1\") answered {out}");
        }
        Ok(took)
    }
    // The pool fills after kilnd's start: give it the time it takes.
    tokio::time::sleep(settle).await;
    let mut seq = Vec::with_capacity(n);
    for _ in 0..n {
        seq.push(one(api, tpl).await?);
        // One at a time, as an agent working alone: the pool refills.
        tokio::time::sleep(settle / 10).await;
    }
    tokio::time::sleep(settle).await;
    let all = futures_util::future::join_all((0..concurrent).map(|_| one(api, tpl))).await;
    let conc = all.into_iter().collect::<Result<Vec<f64>>>()?;
    Ok(vec![
        Outcome::measured(&seq_what, "ms", Summary::of(&seq)).note("template", *tpl),
        Outcome::measured(&conc_what, "ms", Summary::of(&conc)).note("template", *tpl),
    ])
}

/// Upload then download of `bytes` through `/files`, `reps` times each.
pub async fn files(api: &Api, bytes: usize, reps: usize) -> Result<Vec<Outcome>> {
    files_on(api, None, bytes, reps).await
}

async fn files_on(
    api: &Api,
    runtime: Option<&str>,
    bytes: usize,
    reps: usize,
) -> Result<Vec<Outcome>> {
    let data: Bytes = (0..bytes)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let s = api.create_on(BASE, runtime).await?;
    let r = async {
        let path = "/home/user/bench.bin";
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            api.upload(&s, path, data.clone()).await?;
            up.push(ms(t));
            let t = Instant::now();
            let got = api.download(&s, path).await?;
            down.push(ms(t));
            if got != bytes {
                bail!("downloaded {got} bytes of {bytes}");
            }
        }
        let size = if bytes >= 1_000_000 {
            format!("{} MB", bytes / 1_000_000)
        } else {
            format!("{} kB", bytes / 1000)
        };
        let rate = |v: &[f64]| {
            Summary::of(v)
                .map(|s| format!("{:.2} GB/s", bytes as f64 / (s.p50 / 1000.0) / 1e9))
                .unwrap_or_default()
        };
        Ok(vec![
            Outcome::measured(
                &named(runtime, &format!("/files upload of {size}")),
                "ms",
                Summary::of(&up),
            )
            .note("at p50", rate(&up)),
            Outcome::measured(
                &named(runtime, &format!("/files download of {size}")),
                "ms",
                Summary::of(&down),
            )
            .note("at p50", rate(&down)),
        ])
    }
    .await;
    api.kill(&s.id).await?;
    r
}

/// Idle sandboxes created one after another until `max` of them, or until
/// they cost the host `budget_mib`, or `limit` has passed. Memory per
/// sandbox from /proc/meminfo (MemAvailable) and the cgroups.
pub async fn density(
    api: &Api,
    tag: &str,
    max: usize,
    budget_mib: u64,
    limit: Duration,
) -> Result<Outcome> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let avail0 = host::meminfo_kib("MemAvailable");
    let (cg0, _) = host::cgroup_memory(tag);
    let start = Instant::now();
    let mut sbxs = Vec::new();
    let mut create = Vec::new();
    let mut stop = "count";
    let mut stop_err = String::new();
    let r = async {
        while sbxs.len() < max {
            let used_mib = avail0.saturating_sub(host::meminfo_kib("MemAvailable")) / 1024;
            if used_mib >= budget_mib {
                stop = "memory budget";
                break;
            }
            if start.elapsed() > limit {
                stop = "time limit";
                break;
            }
            let t = Instant::now();
            match api.create(BASE).await {
                Ok(s) => sbxs.push(s),
                // The host's own limit is a result too, once some ran.
                Err(e) if !sbxs.is_empty() => {
                    stop_err = format!("create {} failed: {e:#}", sbxs.len() + 1);
                    break;
                }
                Err(e) => return Err(e),
            }
            create.push(ms(t));
        }
        if !stop_err.is_empty() {
            stop = stop_err.as_str();
        }
        // Idle: let the pools refill and the agents settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let n = sbxs.len().max(1) as f64;
        let avail1 = host::meminfo_kib("MemAvailable");
        let (cg1, _) = host::cgroup_memory(tag);
        let host_kib = avail0.saturating_sub(avail1) as f64 / n;
        let cg_kib = cg1.saturating_sub(cg0) as f64 / 1024.0 / n;
        let rss = Summary::of(&host::agent_rss_kib(tag));
        // The last one still answers.
        if let Some(last) = sbxs.last() {
            api.exec(last, "/bin/true", &[]).await?;
        }
        anyhow::Ok(
            Outcome::measured(
                &format!("density: {} idle sandboxes (create latency)", sbxs.len()),
                "ms",
                Summary::of(&create),
            )
            .note(
                "stopped at",
                format!("{stop} (max {max}, budget {budget_mib} MiB)"),
            )
            .note(
                "host memory per sandbox (MemAvailable)",
                format!("{:.2} MiB", host_kib / 1024.0),
            )
            .note(
                "cgroup memory per sandbox",
                format!("{:.2} MiB", cg_kib / 1024.0),
            )
            .note(
                "agent RSS p50",
                rss.map(|s| format!("{:.2} MiB", s.p50 / 1024.0))
                    .unwrap_or_else(|| "no agent found".into()),
            ),
        )
    }
    .await;
    let killed = kill_all(api, &sbxs).await;
    let out = r?;
    killed?;
    Ok(out)
}

/// Create then kill, by `workers` loops at once, for `secs`.
pub async fn sustained(api: &Api, workers: usize, secs: u64) -> Result<Outcome> {
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let s = api.create(BASE).await?;
                    lat.push(ms(t));
                    api.kill(&s.id).await?;
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.context("a create loop panicked")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Outcome::measured(
        &format!("sustained create+kill, {workers} loops for {secs} s (create latency)"),
        "ms",
        Summary::of(&lat),
    )
    .note("creates/s", format!("{:.1}", lat.len() as f64 / elapsed)))
}
