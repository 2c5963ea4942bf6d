//! `kiln`: set up and serve (`kiln up`), manage API keys (`kiln keys`) and
//! teams' limits (`kiln teams`), and
//! the client verbs (`kiln sandbox`, `exec`, `shell`, `cp`, `template`,
//! `doctor`, `mcp`) in `commands/`, one file per verb, built on kiln-client.

mod commands;
mod host;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Self-hosted sandboxes for AI agents, E2B-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: commands::connection::ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check and prepare the host, then serve the API and proxy until Ctrl-C.
    Up(UpArgs),
    /// Check the host and the server; say how to fix what is missing.
    Doctor,
    /// Print the isolation backends this build can run, one per line.
    Runtimes,
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        /// Data directory holding the store.
        #[arg(
            long,
            env = "KILN_DATA_DIR",
            default_value = "/var/lib/kiln",
            global = true
        )]
        data_dir: PathBuf,
    },
    /// Per-team limits: concurrent sandboxes, vCPUs, memory, disk.
    Teams {
        #[command(subcommand)]
        command: TeamsCommand,
        /// Data directory holding the store.
        #[arg(
            long,
            env = "KILN_DATA_DIR",
            default_value = "/var/lib/kiln",
            global = true
        )]
        data_dir: PathBuf,
    },
    /// Create, list, inspect, kill sandboxes and set their timeout.
    #[command(alias = "sandboxes", alias = "sbx")]
    Sandbox {
        #[command(subcommand)]
        command: commands::sandbox::SandboxCommand,
    },
    /// Take, list and delete snapshots (new sandboxes start from them).
    #[command(alias = "snapshots")]
    Snapshot {
        #[command(subcommand)]
        command: commands::snapshot::SnapshotCommand,
    },
    /// Run a command in a sandbox; exits with its exit code.
    Exec(commands::exec::ExecArgs),
    /// Open an interactive shell (a PTY) in a sandbox.
    Shell(commands::shell::ShellArgs),
    /// Copy files and directories between here and a sandbox (<id>:<path>).
    Cp(commands::cp::CpArgs),
    /// List templates, or build one.
    #[command(alias = "templates")]
    Template {
        #[command(subcommand)]
        command: commands::template::TemplateCommand,
    },
    /// Serve the MCP tools (sandboxes, commands, code, files) on stdio or HTTP.
    Mcp(commands::mcp::McpArgs),
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory for the store, templates and sandboxes.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "/var/lib/kiln")]
    pub data_dir: PathBuf,
    /// Address of the control API and sandbox proxy.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Config file (default: <data-dir>/kiln.toml if it exists).
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Default runtime of sandboxes: container, gvisor, microvm, or fake (no isolation, tests only).
    #[arg(long, env = "KILN_RUNTIME")]
    pub runtime: Option<kiln_runtime::RuntimeKind>,
    /// Do not install missing Debian packages.
    #[arg(long)]
    pub no_install: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its hash is kept).
    Create {
        /// Team the key acts for; sandboxes are visible only within a team.
        #[arg(long, default_value = kiln_core::keys::DEFAULT_TEAM)]
        team: String,
        /// A note for people.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id (from `kiln keys list`).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TeamsCommand {
    /// Teams (those with keys or limits of their own) and their limits.
    List,
    /// Set some of a team's limits (the others stay); applies to its next create.
    Set {
        team: String,
        /// Concurrent (running) sandboxes.
        #[arg(long)]
        sandboxes: Option<u64>,
        /// vCPUs of its running sandboxes together.
        #[arg(long)]
        vcpus: Option<u64>,
        /// Memory limits (MiB) of its sandboxes together.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Disk limits (MiB) of its sandboxes together.
        #[arg(long)]
        disk_mib: Option<u64>,
    },
    /// Give a team the default limits again.
    Reset { team: String },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            kiln_server::init_logging();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(commands::up::run(args))
        }
        Command::Runtimes => {
            for r in kiln_server::runtime::AVAILABLE_RUNTIMES {
                println!("{r}");
            }
            Ok(())
        }
        Command::Keys { command, data_dir } => match command {
            KeysCommand::Create { team, name } => {
                block_on(commands::keys::create(&data_dir, &team, &name))
            }
            KeysCommand::List => block_on(commands::keys::list(&data_dir)),
            KeysCommand::Revoke { id } => block_on(commands::keys::revoke(&data_dir, &id)),
        },
        Command::Teams { command, data_dir } => match command {
            TeamsCommand::List => block_on(commands::teams::list(&data_dir)),
            TeamsCommand::Set {
                team,
                sandboxes,
                vcpus,
                memory_mib,
                disk_mib,
            } => block_on(commands::teams::set(
                &data_dir,
                &team,
                kiln_core::limits::TeamLimits {
                    sandboxes,
                    vcpus,
                    memory_mib,
                    disk_mib,
                },
            )),
            TeamsCommand::Reset { team } => block_on(commands::teams::reset(&data_dir, &team)),
        },
        Command::Sandbox { command } => block_on(commands::sandbox::run(command, &cli.client)),
        Command::Snapshot { command } => block_on(commands::snapshot::run(command, &cli.client)),
        Command::Exec(args) => {
            let code = block_on(commands::exec::run(args, &cli.client))?;
            std::process::exit(code)
        }
        Command::Template { command } => block_on(commands::template::run(command, &cli.client)),
        Command::Doctor => {
            let code = block_on(commands::doctor::run(&cli.client))?;
            std::process::exit(code)
        }
        Command::Mcp(args) => {
            init_mcp_logging();
            block_on(commands::mcp::run(args, &cli.client))
        }
        Command::Cp(args) => block_on(commands::cp::run(args, &cli.client)),
        Command::Shell(args) => {
            let code = block_on(commands::shell::run(args, &cli.client))?;
            std::process::exit(code)
        }
    }
}

/// Logs go to stderr: stdout is the MCP transport.
fn init_mcp_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(f);
    // Do not wait for a blocked read of stdin.
    rt.shutdown_background();
    result
}
