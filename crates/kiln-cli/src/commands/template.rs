//! `kiln template list|build`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln_server::config::{Config, Overrides};

use super::connection::{print_json, ClientArgs};

#[derive(clap::Subcommand, Debug)]
pub enum TemplateCommand {
    /// List the templates kilnd offers.
    #[command(alias = "ls")]
    List,
    /// Build a template into kilnd's template cache (on this host, as root).
    /// This version builds `base` (Debian bookworm, python3, the e2b user
    /// layout) from its recipe; a running kilnd picks a new build up at its
    /// next start.
    Build {
        /// Template to build.
        #[arg(default_value = "base")]
        name: String,
        /// kilnd's data directory (its templates/ holds the cache).
        #[arg(long, env = "KILN_DATA_DIR", default_value = "/var/lib/kiln")]
        data_dir: PathBuf,
        /// kilnd's config file (default: <data-dir>/kiln.toml if it exists).
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
}

struct Phases;

impl kiln_template::Progress for Phases {
    fn phase(&self, message: &str) {
        eprintln!("template: {message}");
    }
}

pub async fn run(cmd: TemplateCommand, args: &ClientArgs) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::List => {
            let list = args.client()?.templates().await?;
            if args.json {
                return print_json(&list);
            }
            println!(
                "{:<28} {:<12} {:>4} {:>7} {:>8} {:>7}  BUILT",
                "ID", "ALIASES", "CPU", "MEM MiB", "DISK MiB", "SPAWNS"
            );
            for t in &list {
                println!(
                    "{:<28} {:<12} {:>4} {:>7} {:>8} {:>7}  {}",
                    t.template_id,
                    t.aliases.join(","),
                    t.cpu_count,
                    t.memory_mb,
                    t.disk_size_mb,
                    t.spawn_count,
                    t.created_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
            Ok(())
        }
        TemplateCommand::Build {
            name,
            data_dir,
            config,
        } => {
            if name != "base" {
                bail!("this version of kiln builds only the `base` template (Dockerfile and OCI builds are not there yet)");
            }
            let config = Config::load(&Overrides {
                config_file: config,
                data_dir: Some(data_dir),
                listen: None,
                runtime: None,
            })
            .context("loading kilnd's configuration")?;
            let dir = config.template_dir();
            eprintln!("building the base template in {} …", dir.display());
            let built = tokio::task::spawn_blocking(move || {
                kiln_template::ensure_base(&dir, kiln_runtime::container::DEFAULT_UID_BASE, &Phases)
            })
            .await
            .context("the build task failed")??;
            if args.json {
                return print_json(&serde_json::json!({
                    "templateID": built.id,
                    "rootfs": built.rootfs,
                }));
            }
            println!("{}", built.id);
            eprintln!(
                "template {} ready at {} (kilnd serves it as `base`)",
                built.id,
                built.rootfs.display()
            );
            Ok(())
        }
    }
}
