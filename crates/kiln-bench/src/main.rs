//! kiln-bench: starts kilnd on a temporary data directory, measures it end
//! to end (docs/benchmarks.md says what), measures the floors (bwrap, runsc,
//! crun) on the same machine, and writes JSON and a markdown table.

mod client;
mod durable;
mod floors;
mod host;
mod kilnd;
mod measure;
mod report;
mod stats;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use report::{Floor, Outcome, Report};

#[derive(Parser, Debug)]
#[command(
    name = "kiln-bench",
    about = "Benchmarks kilnd end to end against the floors"
)]
struct Args {
    /// Small counts: a smoke test of the harness (CI), not of the timings.
    #[arg(long)]
    quick: bool,
    /// Write docs/benchmarks.md (the table and the JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `kiln` binary (default: $KILN_BIN, else `kiln` next to this program).
    #[arg(long)]
    kiln_bin: Option<PathBuf>,
    /// Template cache (KILN_TEMPLATE_DIR; default $KILN_TEMPLATE_DIR, else
    /// /var/lib/kiln when it holds templates).
    #[arg(long)]
    template_dir: Option<PathBuf>,
    /// Do not install missing floor tools (bubblewrap, runsc, crun).
    #[arg(long)]
    no_install: bool,
    /// Most idle sandboxes the density measurement starts.
    #[arg(long)]
    density_max: Option<usize>,
    /// Host memory the density measurement may use, MiB.
    #[arg(long)]
    density_budget_mib: Option<u64>,
    /// Seconds of sustained create+kill.
    #[arg(long)]
    sustain_secs: Option<u64>,
    /// Run only the measurements whose name contains one of these
    /// (create, concurrent, exec, run_code, files, density, sustained,
    /// gvisor, durable, floors).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: time this many `crun run`s of --crun-bundle and print them.
    #[arg(long, hide = true, requires = "crun_bundle")]
    crun_floor_runs: Option<usize>,
    #[arg(long, hide = true)]
    crun_bundle: Option<PathBuf>,
}

/// How many of everything.
struct Counts {
    sequential: usize,
    concurrent: usize,
    execs: usize,
    run_codes: usize,
    file_bytes: usize,
    file_reps: usize,
    density_max: usize,
    density_budget_mib: u64,
    density_limit: Duration,
    sustain_secs: u64,
    sustain_workers: usize,
    floor_runs: usize,
    runsc_runs: usize,
    durable: durable::Counts,
    first_results: usize,
    first_concurrent: usize,
    /// gVisor creates → first command, and the pause between them.
    gvisor_creates: usize,
    gvisor_gap: Duration,
    /// Creates one at a time with a gap (the ready pool refills between).
    paced: usize,
    paced_gap: Duration,
    /// Time for the warm code-interpreter pool to fill.
    pool_settle: Duration,
}

impl Counts {
    fn new(a: &Args) -> Counts {
        let mut c = if a.quick {
            Counts {
                sequential: 5,
                concurrent: 5,
                execs: 10,
                run_codes: 5,
                file_bytes: 1_000_000,
                file_reps: 2,
                density_max: 5,
                density_budget_mib: 1024,
                density_limit: Duration::from_secs(30),
                sustain_secs: 2,
                sustain_workers: 2,
                floor_runs: 3,
                runsc_runs: 2,
                first_results: 2,
                first_concurrent: 2,
                gvisor_creates: 2,
                gvisor_gap: Duration::from_millis(1000),
                paced: 3,
                paced_gap: Duration::from_millis(200),
                pool_settle: Duration::from_secs(5),
                durable: durable::Counts {
                    pause_reps: 2,
                    touched_mib: vec![16],
                    snapshot_reps: 2,
                    written_mib: 4,
                    fork_reps: 1,
                    fork_count: 2,
                },
            }
        } else {
            Counts {
                sequential: 100,
                concurrent: 50,
                execs: 200,
                run_codes: 100,
                file_bytes: 100_000_000,
                file_reps: 5,
                density_max: 1000,
                density_budget_mib: 8192,
                density_limit: Duration::from_secs(300),
                sustain_secs: 30,
                sustain_workers: 2,
                floor_runs: 100,
                runsc_runs: 30,
                first_results: 20,
                first_concurrent: 8,
                gvisor_creates: 30,
                gvisor_gap: Duration::from_millis(1000),
                paced: 50,
                paced_gap: Duration::from_millis(200),
                pool_settle: Duration::from_secs(30),
                durable: durable::Counts {
                    pause_reps: 10,
                    touched_mib: vec![256, 1024],
                    snapshot_reps: 10,
                    written_mib: 64,
                    fork_reps: 5,
                    fork_count: 3,
                },
            }
        };
        if let Some(v) = a.density_max {
            c.density_max = v;
        }
        if let Some(v) = a.density_budget_mib {
            c.density_budget_mib = v;
        }
        if let Some(v) = a.sustain_secs {
            c.sustain_secs = v;
        }
        c
    }
}

fn kiln_bin(a: &Args) -> Result<PathBuf> {
    if let Some(p) = a
        .kiln_bin
        .clone()
        .or_else(|| std::env::var_os("KILN_BIN").map(PathBuf::from))
    {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let p = me.with_file_name("kiln");
    if !p.exists() {
        bail!(
            "no kiln binary next to {} (build it: cargo build -p kiln-cli), or pass --kiln-bin",
            me.display()
        );
    }
    Ok(p)
}

fn template_dir(a: &Args) -> Option<PathBuf> {
    a.template_dir
        .clone()
        .or_else(|| std::env::var_os("KILN_TEMPLATE_DIR").map(PathBuf::from))
        .or_else(|| {
            let d = PathBuf::from("/var/lib/kiln");
            d.join("templates").is_dir().then_some(d)
        })
}

/// Runs one measurement; a failure becomes an outcome that says so (and
/// fails the run), never a missing row.
async fn run<T, F>(what: &str, failed: &mut Vec<String>, f: F) -> Vec<Outcome>
where
    F: Future<Output = Result<T>>,
    T: Into<Vec<Outcome>>,
{
    if !selected(what) {
        return Vec::new();
    }
    eprintln!("kiln-bench: {what}");
    match f.await {
        Ok(v) => v.into(),
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("kiln-bench: {what} FAILED: {msg}");
            failed.push(format!("{what}: {msg}"));
            vec![Outcome::skipped(what, format!("FAILED: {msg}"))]
        }
    }
}

static ONLY: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Whether `--only` (if given) selects this measurement.
fn selected(what: &str) -> bool {
    let only = ONLY.get().map(Vec::as_slice).unwrap_or_default();
    only.is_empty() || only.iter().any(|o| what.contains(o.as_str()))
}

impl From<Outcome> for Vec<Outcome> {
    fn from(o: Outcome) -> Self {
        vec![o]
    }
}

async fn bench(args: &Args) -> Result<Report> {
    let counts = Counts::new(args);
    let mut setup_notes = Vec::new();
    if !args.no_install {
        setup_notes.extend(floors::install_missing());
    }
    let opts = kilnd::Options {
        kiln_bin: kiln_bin(args)?,
        template_dir: template_dir(args),
        tag: if args.quick { "bq" } else { "bn" }.into(),
        subnet: if args.quick {
            "10.246.0.0"
        } else {
            "10.245.0.0"
        }
        .into(),
        start_timeout: Duration::from_secs(900),
    };
    eprintln!("kiln-bench: starting kilnd ({})", opts.kiln_bin.display());
    let k = kilnd::Kilnd::start(&opts).await?;
    let api = k.api();
    let mut failed = Vec::new();
    let mut kiln = Vec::new();
    let f = &mut failed;
    let c = &counts;
    kiln.extend(
        run("create → first command", f, async {
            // Paced first: an agent that works in each sandbox a while,
            // the ready pool refilling meanwhile; then back to back, the
            // pool refilling only as fast as creates allow.
            let (a, b) = measure::create_first_command_on(&api, None, c.paced, c.paced_gap).await?;
            let (d, e) = measure::create_first_command(&api, c.sequential).await?;
            Ok(vec![a, b, d, e])
        })
        .await,
    );
    kiln.extend(
        run(
            "concurrent creates",
            f,
            measure::concurrent_creates(&api, c.concurrent),
        )
        .await,
    );
    kiln.extend(
        run(
            "exec round trip",
            f,
            measure::exec_round_trip(&api, c.execs),
        )
        .await,
    );
    kiln.extend(run("run_code", f, measure::run_code(&api, c.run_codes)).await);
    kiln.extend(
        run(
            "code interpreter: create → first",
            f,
            measure::interpreter_first_result(
                &api,
                c.first_results,
                c.first_concurrent,
                c.pool_settle,
            ),
        )
        .await,
    );
    kiln.extend(run("/files", f, measure::files(&api, c.file_bytes, c.file_reps)).await);
    kiln.extend(
        run(
            "density",
            f,
            measure::density(
                &api,
                &k.tag,
                c.density_max,
                c.density_budget_mib,
                c.density_limit,
            ),
        )
        .await,
    );
    kiln.extend(
        run(
            "sustained creates",
            f,
            measure::sustained(&api, c.sustain_workers, c.sustain_secs),
        )
        .await,
    );
    kiln.extend(
        run(
            "gvisor: create, exec, /files",
            f,
            measure::on_runtime(
                &api,
                "gvisor",
                c.gvisor_creates,
                c.gvisor_gap,
                c.execs,
                c.file_bytes,
                c.file_reps,
            ),
        )
        .await,
    );
    kiln.extend(
        run("durable state", f, async {
            Ok(durable::all(&api, &c.durable).await)
        })
        .await,
    );
    let work = k.data_dir.clone();
    let tag = k.tag.clone();
    if let Err(e) = k.stop().await {
        failed.push(format!("stopping kilnd: {e:#}"));
    }
    let agents = host::agent_rss_kib(&tag).len();
    if agents > 0 {
        failed.push(format!(
            "{agents} sandbox agents of tag {tag} still run after kilnd stopped"
        ));
    }

    eprintln!("kiln-bench: floors");
    let _ = std::fs::create_dir_all(&work);
    let p50_of = |prefix: &str| {
        kiln.iter()
            .find(|o| o.what.starts_with(prefix))
            .and_then(Outcome::p50)
    };
    let kiln_p50 = p50_of("create → first command");
    // runsc's floor against the gVisor runtime's own creates.
    let gvisor_p50 = p50_of("gvisor: create → first command");
    let floors = if selected("floors") {
        vec![
            floors::bwrap(counts.floor_runs),
            floors::runsc(counts.runsc_runs),
            floors::crun(counts.floor_runs, &work),
        ]
    } else {
        Vec::new()
    };
    let floors = floors
        .into_iter()
        .map(|outcome| Floor {
            kiln_ratio: match (
                if outcome.what.starts_with("runsc") {
                    gvisor_p50
                } else {
                    kiln_p50
                },
                outcome.p50(),
            ) {
                (Some(k), Some(f)) if f > 0.0 => Some(k / f),
                _ => None,
            },
            outcome,
        })
        .collect();
    let _ = std::fs::remove_dir_all(&work);

    let report = Report {
        machine: host::machine(),
        quick: args.quick,
        kiln,
        floors,
        setup_notes,
    };
    if !failed.is_empty() {
        print!("{}", report.markdown());
        bail!(
            "{} measurement(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(report)
}

/// `--quick`'s assertion: the harness works. Every Kiln measurement has
/// samples (run_code may be skipped, with its reason), every floor has
/// samples or a reason.
fn check(report: &Report) -> Result<()> {
    for o in &report.kiln {
        match (&o.summary, &o.skipped) {
            (Some(s), _) if s.n > 0 && s.p50.is_finite() && s.p50 > 0.0 => {}
            (None, Some(why))
                if (o.what.starts_with("run_code") || o.what.starts_with("code interpreter"))
                    && !why.starts_with("FAILED") => {}
            // A runtime this host lacks, or an operation it does not do,
            // is a row with the reason; the container runtime does all.
            (None, Some(_))
                if durable::RUNTIMES[1..]
                    .iter()
                    .any(|r| o.what.starts_with(&format!("{r}:"))) => {}
            _ => bail!("measurement {:?} has no samples: {:?}", o.what, o.skipped),
        }
    }
    if ONLY.get().is_none_or(Vec::is_empty) && report.kiln.len() < 9 {
        bail!("only {} Kiln measurements reported", report.kiln.len());
    }
    for f in &report.floors {
        if f.outcome.summary.is_none() && f.outcome.skipped.is_none() {
            bail!("floor {:?} neither measured nor skipped", f.outcome.what);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = ONLY.set(args.only.clone());
    if let (Some(n), Some(b)) = (args.crun_floor_runs, &args.crun_bundle) {
        return floors::crun_runs(n, b);
    }
    let report = bench(&args).await?;
    check(&report)?;
    print!("{}", report.markdown());
    if let Some(p) = &args.json {
        std::fs::write(p, report.json())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.out {
        std::fs::write(p, report.document())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("kiln-bench: wrote {}", p.display());
    }
    Ok(())
}
