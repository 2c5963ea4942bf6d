//! `kiln keys create|list|revoke`, directly on the store (kilnd may be running:
//! it reads keys from the store on every request).

use std::path::Path;

use anyhow::{bail, Context};
use chrono::Utc;
use kiln_core::keys;
use kiln_core::store::{SqliteStore, Store};

fn open(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open_in(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

pub async fn create(data_dir: &Path, team: &str, name: &str) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let (key, rec) = keys::create_key(&store, team, name).await?;
    println!("{key}");
    eprintln!(
        "created key {} for team {} (shown once: store it now)",
        rec.id, rec.team_id
    );
    Ok(())
}

pub async fn list(data_dir: &Path) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    println!(
        "{:<18} {:<16} {:<14} {:<22} {:<10} NAME",
        "ID", "TEAM", "KEY", "CREATED", "STATUS"
    );
    for k in store.list_keys().await? {
        println!(
            "{:<18} {:<16} {:<14} {:<22} {:<10} {}",
            k.id,
            k.team_id,
            format!("{}…", k.prefix),
            k.created_at.format("%Y-%m-%d %H:%M:%S"),
            if k.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            k.name
        );
    }
    Ok(())
}

pub async fn revoke(data_dir: &Path, id: &str) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    if !store.revoke_key(id, Utc::now()).await? {
        bail!("no active key with id {id:?} (see `kiln keys list`)");
    }
    println!("revoked {id}");
    Ok(())
}
