//! `kiln sandbox create|list|info|kill|timeout`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use chrono::Utc;
use kiln_api::rest::{NewSandbox, SandboxDetail, SandboxState};
use kiln_client::rest::ListState;

use super::connection::{print_json, ClientArgs};

#[derive(clap::Subcommand, Debug)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create {
        /// Template id or alias.
        #[arg(long, short, default_value = "base")]
        template: String,
        /// Seconds until the sandbox is killed (default: the server's, 300).
        #[arg(long)]
        timeout: Option<i64>,
        /// Pause instead of kill when the timeout expires.
        #[arg(long)]
        auto_pause: bool,
        /// Label, KEY=VALUE (repeatable).
        #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Environment variable of every process, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Cut the sandbox off from the internet.
        #[arg(long)]
        no_internet: bool,
        /// Isolation backend: container or gvisor (default: the
        /// template's, else the server's; `kiln doctor` says which work).
        #[arg(long)]
        runtime: Option<String>,
    },
    /// List sandboxes as a table.
    #[command(alias = "ls")]
    List {
        /// running, paused or all.
        #[arg(long, default_value = "all")]
        state: String,
    },
    /// Show one sandbox.
    Info { id: String },
    /// Kill sandboxes.
    #[command(alias = "rm")]
    Kill {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set the sandbox to end SECONDS from now.
    Timeout { id: String, seconds: i64 },
    /// Pause a sandbox (its timeout stops): with memory by default
    /// (processes go on where they were at resume); exec, shell and cp
    /// resume it.
    Pause {
        id: String,
        /// Keep only the filesystem: every process ends, resume boots it
        /// anew (survives host reboots on every runtime).
        #[arg(long)]
        filesystem: bool,
    },
    /// Make COUNT new sandboxes from a snapshot of a running one (which
    /// goes on as it was); prints their ids.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds each copy lives (default 15, as E2B's).
        #[arg(long)]
        timeout: Option<i64>,
    },
    /// Resume a paused sandbox.
    Resume {
        id: String,
        /// Seconds it then lives (default: the server's).
        #[arg(long)]
        timeout: Option<i64>,
    },
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut m = BTreeMap::new();
    for it in items {
        let Some((k, v)) = it.split_once('=') else {
            bail!("{what} {it:?} must be KEY=VALUE");
        };
        if k.is_empty() {
            bail!("{what} {it:?} has an empty key");
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(Some(m))
}

fn remaining(d: &SandboxDetail) -> String {
    let secs = (d.end_at - Utc::now()).num_seconds().max(0);
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

fn state(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Running => "running",
        SandboxState::Paused => "paused",
    }
}

pub async fn run(cmd: SandboxCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    match cmd {
        SandboxCommand::Create {
            template,
            timeout,
            auto_pause,
            metadata,
            env,
            no_internet,
            runtime,
        } => {
            let req = NewSandbox {
                template_id: template,
                timeout,
                auto_pause: auto_pause.then_some(true),
                allow_internet_access: no_internet.then_some(false),
                metadata: pairs(&metadata, "metadata")?,
                env_vars: pairs(&env, "env")?,
                runtime,
                ..Default::default()
            };
            let s = client.create(&req).await?;
            if args.json {
                return print_json(&s);
            }
            println!("{}", s.sandbox_id);
            eprintln!(
                "created sandbox {} from template {}: `kiln shell {0}` opens a shell, `kiln sandbox kill {0}` ends it",
                s.sandbox_id, s.template_id
            );
        }
        SandboxCommand::List { state: st } => {
            let which = match st.as_str() {
                "all" => ListState::All,
                "running" => ListState::Running,
                "paused" => ListState::Paused,
                other => bail!("--state {other:?}: use running, paused or all"),
            };
            let mut list = client.list(which).await?;
            list.sort_by_key(|d| d.started_at);
            if args.json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("no sandboxes (`kiln sandbox create` makes one)");
                return Ok(());
            }
            println!(
                "{:<22} {:<12} {:<8} {:<20} {:>9} {:>4} {:>7}  METADATA",
                "ID", "TEMPLATE", "STATE", "STARTED", "LEFT", "CPU", "MEM MiB"
            );
            for d in &list {
                let meta: Vec<String> =
                    d.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<22} {:<12} {:<8} {:<20} {:>9} {:>4} {:>7}  {}",
                    d.sandbox_id,
                    d.alias.as_deref().unwrap_or(&d.template_id),
                    state(d.state),
                    d.started_at.format("%Y-%m-%d %H:%M:%S"),
                    remaining(d),
                    d.cpu_count,
                    d.memory_mb,
                    meta.join(",")
                );
            }
        }
        SandboxCommand::Info { id } => {
            let mut d = client.get(&id).await?;
            d.envd_access_token = None;
            if args.json {
                return print_json(&d);
            }
            println!("id:          {}", d.sandbox_id);
            println!(
                "template:    {}{}",
                d.template_id,
                d.alias
                    .as_deref()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default()
            );
            println!("state:       {}", state(d.state));
            println!("started:     {}", d.started_at.to_rfc3339());
            println!(
                "ends:        {} ({} left)",
                d.end_at.to_rfc3339(),
                remaining(&d)
            );
            println!(
                "resources:   {} vCPU, {} MiB memory, {} MiB disk",
                d.cpu_count, d.memory_mb, d.disk_size_mb
            );
            println!("agent:       envd {}", d.envd_version);
            if let Some(dom) = &d.domain {
                println!("ports:       http://<port>-{}.{dom}", d.sandbox_id);
            }
            for (k, v) in &d.metadata {
                println!("metadata:    {k}={v}");
            }
        }
        SandboxCommand::Kill { ids } => {
            let mut failed = 0;
            for id in &ids {
                match client.kill(id).await {
                    Ok(()) => {
                        if args.json {
                            println!("{}", serde_json::json!({"sandboxID": id, "killed": true}));
                        } else {
                            println!("killed {id}");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} sandboxes could not be killed", ids.len());
            }
        }
        SandboxCommand::Pause { id, filesystem } => {
            client.pause(&id, !filesystem).await?;
            let kept = if filesystem { "filesystem" } else { "full" };
            if args.json {
                return print_json(
                    &serde_json::json!({"sandboxID": id, "state": "paused", "pauseMode": kept}),
                );
            }
            println!("paused {id} ({kept})");
        }
        SandboxCommand::Fork { id, count, timeout } => {
            let results = client.fork(&id, Some(count), timeout).await?;
            if args.json {
                return print_json(&results);
            }
            let mut failed = 0;
            for r in &results {
                match (&r.sandbox, &r.error) {
                    (Some(s), _) => println!("{}", s.sandbox_id),
                    (None, Some(e)) => {
                        failed += 1;
                        eprintln!("error: a copy failed ({}): {}", e.code, e.message);
                    }
                    (None, None) => failed += 1,
                }
            }
            if failed > 0 {
                bail!("{failed} of {count} copies failed");
            }
        }
        SandboxCommand::Resume { id, timeout } => {
            let (_, resumed) = client.connect(&id, timeout).await?;
            if args.json {
                return print_json(
                    &serde_json::json!({"sandboxID": id, "state": "running", "resumed": resumed}),
                );
            }
            if resumed {
                println!("resumed {id}");
            } else {
                println!("{id} was already running");
            }
        }
        SandboxCommand::Timeout { id, seconds } => {
            if seconds <= 0 {
                bail!("the timeout must be a positive number of seconds (use `kiln sandbox kill` to end it now)");
            }
            client
                .set_timeout(&id, seconds)
                .await
                .with_context(|| format!("setting the timeout of {id}"))?;
            let d = client.get(&id).await?;
            if args.json {
                return print_json(&serde_json::json!({"sandboxID": id, "endAt": d.end_at}));
            }
            println!("{id} now ends at {}", d.end_at.to_rfc3339());
        }
    }
    Ok(())
}
