//! `kiln snapshot create|list|rm`.

use anyhow::bail;

use super::connection::{print_json, ClientArgs};

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot of a sandbox (it goes on as it was); prints its id,
    /// which `kiln sandbox create -t <id>` starts sandboxes from.
    Create {
        sandbox: String,
        /// A name; one that is taken gets the new content under its id.
        #[arg(long)]
        name: Option<String>,
        /// Keep only the filesystem (sandboxes started from it boot).
        #[arg(long, conflicts_with = "memory")]
        filesystem: bool,
        /// Keep memory too (runtimes that can: gvisor, microvm).
        #[arg(long)]
        memory: bool,
    },
    /// List snapshots (of one sandbox with --sandbox) as a table.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Delete snapshots; sandboxes started from them are not affected.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub async fn run(cmd: SnapshotCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    match cmd {
        SnapshotCommand::Create {
            sandbox,
            name,
            filesystem,
            memory,
        } => {
            let mode = match (filesystem, memory) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => None,
            };
            let s = client.create_snapshot(&sandbox, name, mode).await?;
            if args.json {
                return print_json(&s);
            }
            println!("{}", s.snapshot_id);
            eprintln!(
                "snapshot of {} ({}, {}): `kiln sandbox create -t {}` starts a sandbox from it",
                s.sandbox_id,
                s.mode,
                human(s.size_bytes),
                s.snapshot_id
            );
        }
        SnapshotCommand::List { sandbox } => {
            let list = client.snapshots(sandbox.as_deref()).await?;
            if args.json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("no snapshots (`kiln snapshot create <sandbox>` takes one)");
                return Ok(());
            }
            println!(
                "{:<28} {:<22} {:<10} {:>10} {:<20} NAMES",
                "ID", "SANDBOX", "MODE", "SIZE", "CREATED"
            );
            for s in &list {
                println!(
                    "{:<28} {:<22} {:<10} {:>10} {:<20} {}",
                    s.snapshot_id,
                    s.sandbox_id,
                    s.mode,
                    human(s.size_bytes),
                    s.created_at.format("%Y-%m-%d %H:%M:%S"),
                    s.names.join(",")
                );
            }
        }
        SnapshotCommand::Rm { ids } => {
            let mut failed = 0;
            for id in &ids {
                match client.delete_snapshot(id).await {
                    Ok(()) if args.json => {
                        println!("{}", serde_json::json!({"snapshotID": id, "deleted": true}))
                    }
                    Ok(()) => println!("deleted {id}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} snapshots could not be deleted", ids.len());
            }
        }
    }
    Ok(())
}
