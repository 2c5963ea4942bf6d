//! `kiln teams list|set|reset`: per-team limits, directly on the store
//! (kilnd may be running: it reads a team's limits at every create).
//! A team without limits of its own has kilnd's defaults (`[limits]` in
//! kiln.toml, KILN_TEAM_*; sized from the host when unset).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use kiln_core::limits::TeamLimits;
use kiln_core::store::{SqliteStore, Store};

fn open(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open_in(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "default".to_owned(), |v| v.to_string())
}

pub async fn list(data_dir: &Path) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let own = store.list_team_limits().await?;
    let mut teams: BTreeSet<String> = store
        .list_keys()
        .await?
        .into_iter()
        .map(|k| k.team_id)
        .collect();
    teams.extend(own.iter().map(|(t, _)| t.clone()));
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>12}",
        "TEAM", "SANDBOXES", "VCPUS", "MEMORY_MIB", "DISK_MIB"
    );
    for t in teams {
        let l = own
            .iter()
            .find(|(n, _)| *n == t)
            .map(|(_, l)| *l)
            .unwrap_or_default();
        println!(
            "{:<24} {:>10} {:>10} {:>12} {:>12}",
            t,
            show(l.sandboxes),
            show(l.vcpus),
            show(l.memory_mib),
            show(l.disk_mib)
        );
    }
    Ok(())
}

/// Sets the given limits of `team` (the others stay as they were).
pub async fn set(data_dir: &Path, team: &str, given: TeamLimits) -> anyhow::Result<()> {
    if given.is_empty() {
        anyhow::bail!("give at least one of --sandboxes, --vcpus, --memory-mib, --disk-mib (or use `kiln teams reset`)");
    }
    let store = open(data_dir)?;
    let mut l = store.team_limits(team).await?.unwrap_or_default();
    l.sandboxes = given.sandboxes.or(l.sandboxes);
    l.vcpus = given.vcpus.or(l.vcpus);
    l.memory_mib = given.memory_mib.or(l.memory_mib);
    l.disk_mib = given.disk_mib.or(l.disk_mib);
    kiln_core::limits::set_team_limits(&store, team, &l).await?;
    println!(
        "team {team}: sandboxes {}, vcpus {}, memory_mib {}, disk_mib {}",
        show(l.sandboxes),
        show(l.vcpus),
        show(l.memory_mib),
        show(l.disk_mib)
    );
    Ok(())
}

pub async fn reset(data_dir: &Path, team: &str) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    kiln_core::limits::set_team_limits(&store, team, &TeamLimits::default()).await?;
    println!("team {team}: the default limits");
    Ok(())
}
