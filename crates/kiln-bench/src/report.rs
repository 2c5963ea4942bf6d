//! Results: one [`Outcome`] per measurement, written as JSON and as the
//! markdown of docs/benchmarks.md.

use std::fmt::Write as _;

use serde::Serialize;

use crate::host::Machine;
use crate::stats::Summary;

/// One measurement: its percentiles, or why it was skipped. Never dropped.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub what: String,
    pub unit: String,
    pub summary: Option<Summary>,
    pub skipped: Option<String>,
    /// Derived figures (throughput, per-sandbox memory, ...) as label, value.
    pub notes: Vec<(String, String)>,
}

impl Outcome {
    pub fn measured(what: &str, unit: &str, summary: Option<Summary>) -> Self {
        let skipped = summary.is_none().then(|| "no samples".to_string());
        Self {
            what: what.into(),
            unit: unit.into(),
            summary,
            skipped,
            notes: Vec::new(),
        }
    }

    pub fn skipped(what: &str, why: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            unit: String::new(),
            summary: None,
            skipped: Some(why.into()),
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, label: &str, value: impl Into<String>) -> Self {
        self.notes.push((label.into(), value.into()));
        self
    }

    pub fn p50(&self) -> Option<f64> {
        self.summary.map(|s| s.p50)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub outcome: Outcome,
    /// Kiln's create → first command done p50 divided by the floor's p50
    /// (the gVisor runtime's for runsc's floor).
    pub kiln_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub kiln: Vec<Outcome>,
    pub floors: Vec<Floor>,
    pub setup_notes: Vec<String>,
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn row(out: &mut String, o: &Outcome, extra: &str) {
    let notes = o
        .notes
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ");
    match (&o.summary, &o.skipped) {
        (Some(s), _) => {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {}{} |",
                o.what,
                s.n,
                fmt(s.p50),
                fmt(s.p90),
                fmt(s.p99),
                o.unit,
                extra,
                notes
            );
        }
        (None, why) => {
            let why = why.as_deref().unwrap_or("no samples");
            let _ = writeln!(
                out,
                "| {} | 0 | – | – | – | | {}**skipped: {}** |",
                o.what, extra, why
            );
        }
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {:.1} GiB), kernel {}, cgroup {}; load average {}; {}; commit {}{}.\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.cgroup,
            m.load,
            m.date,
            m.commit,
            if self.quick {
                " (--quick: small counts, a smoke test)"
            } else {
                ""
            }
        );
        out.push_str("| measurement | n | p50 | p90 | p99 | unit | notes |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for o in &self.kiln {
            row(&mut out, o, "");
        }
        out.push_str("\nFloors on the same machine (spawn to exit of a bare sandbox running `true`; ratio = Kiln's create → first command done p50 / the floor's p50, Kiln's creates paced as in the first create row of each runtime (served from its pool of booted sandboxes), on the gVisor runtime for runsc's floor):\n\n");
        out.push_str("| floor | n | p50 | p90 | p99 | unit | notes |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for f in &self.floors {
            let extra = f
                .kiln_ratio
                .map(|r| {
                    format!(
                        "Kiln/floor = {r:.2}{}",
                        if f.outcome.notes.is_empty() { "" } else { "; " }
                    )
                })
                .unwrap_or_default();
            row(&mut out, &f.outcome, &extra);
        }
        for n in &self.setup_notes {
            let _ = writeln!(out, "\nSetup: {n}");
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// docs/benchmarks.md: how to run, the table, the JSON.
    pub fn document(&self) -> String {
        format!(
            "# Benchmarks\n\n\
             Measured by `kiln-bench` (crates/kiln-bench), end to end through a real kilnd on a\n\
             temporary data directory and the container runtime, with the same HTTP and\n\
             Connect requests the E2B SDKs send (control API, and the agent through kilnd's\n\
             proxy). Percentiles are nearest-rank over n samples. Memory figures are read from\n\
             the cgroups and /proc, not estimated. Targets: docs of the design, §6.\n\n\
             Run it (as root, release build):\n\n\
             ```\n\
             cargo build --release -p kiln-cli -p kiln-runtime -p kiln-bench --bins\n\
             bash -c '. scripts/lib.sh && kiln_build_agent'\n\
             target/release/kiln-bench --out docs/benchmarks.md\n\
             ```\n\n\
             `kiln-bench --quick` is the CI smoke test (scripts/test.d/75-bench-quick.sh): small\n\
             counts, it asserts that every measurement produced samples or says why it was\n\
             skipped, not the timings.\n\n\
             Reading the figures: the load average is the machine's at the end of the run;\n\
             this 2-core machine is shared with other builds, so tails (p90, p99) and the\n\
             concurrent figures carry their noise. `host memory per sandbox (MemAvailable)`\n\
             is the drop of MemAvailable over the density run divided by the sandboxes: it\n\
             includes kernel memory (namespaces, veths, page tables) but also whatever else\n\
             the machine did meanwhile; `cgroup memory per sandbox` is what the sandboxes'\n\
             own cgroups are charged (user memory and page cache) and does not move with\n\
             other work. Agent RSS counts the shared, file-backed text of the static agent\n\
             in every sandbox. Density stops at the count, the memory budget, a time limit\n\
             or the first failed create, whichever comes first, and says which. The\n\
             concurrent creates start after {} s of quiet, on kilnd's default warm pool of 64\n\
             (`KILN_WARM_POOL`): creates beyond the pool in one burst take the cold path.\n\n\
             ## Latest run\n\n{}\n\n## JSON\n\n```json\n{}\n```\n",
            crate::measure::SETTLE.as_secs(),
            self.markdown(),
            self.json()
        )
    }
}
