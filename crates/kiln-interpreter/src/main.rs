//! `kiln-interpreter`: the code-interpreter server of a sandbox.
//!
//! ```text
//! kiln-interpreter [--listen ADDR] [--cwd DIR] [--preload LANG,…] [--spares LANG,…]
//! ```
//! Defaults: `--listen 0.0.0.0:49999`, `--cwd /home/user` (else the current
//! directory), `--preload python` (default contexts started at once),
//! `--spares python` (a kernel kept ready for the next new context; empty
//! keeps none). Kernels are found in the Jupyter data
//! directories (`JUPYTER_PATH`, then `~/.local/share/jupyter`,
//! `/usr/local/share/jupyter`, `/usr/share/jupyter`).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use kiln_interpreter::context::Registry;
use kiln_interpreter::kernelspec::Catalog;

struct Args {
    listen: String,
    cwd: PathBuf,
    preload: Vec<String>,
    spares: Vec<String>,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        listen: "0.0.0.0:49999".to_owned(),
        cwd: PathBuf::from("/home/user"),
        preload: vec!["python".to_owned()],
        spares: vec!["python".to_owned()],
    };
    if !args.cwd.is_dir() {
        args.cwd = std::env::current_dir().context("failed to read the current directory")?;
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--cwd" => args.cwd = PathBuf::from(value()?),
            "--preload" => args.preload = list(&value()?),
            "--spares" => args.spares = list(&value()?),
            // For the template build (tests/interpreter/template.sh and the
            // template builder): the recipe as JSON.
            "--print-template-recipe" => {
                let json = serde_json::to_string_pretty(&kiln_interpreter::template::recipe())?;
                let _ = writeln!(std::io::stdout(), "{json}");
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "usage: kiln-interpreter [--listen ADDR] [--cwd DIR] [--preload LANG,...] [--spares LANG,...]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = parse_args()?;

    let runtime_dir = std::env::temp_dir().join(format!("kiln-interpreter-{}", std::process::id()));
    std::fs::create_dir_all(&runtime_dir)
        .with_context(|| format!("failed to create {}", runtime_dir.display()))?;

    let catalog = Catalog::discover().await;
    tracing::info!(languages = ?catalog.languages(), "kernels found");
    let registry = Arc::new(
        Registry::new(catalog, args.cwd.clone(), runtime_dir.clone())
            .keep_spares(&args.spares)
            .reading_sandbox_env(kiln_interpreter::envs::SandboxEnv::from_env()),
    );

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving");

    // Listed from the start, as on E2B; their kernels start on first use or,
    // for the preloaded ones, in the background while /health answers.
    registry
        .declare_defaults(kiln_interpreter::language::DEFAULT_CONTEXTS)
        .await;
    for language in args.preload.clone() {
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = registry.default_for(Some(&language)).await {
                tracing::error!("failed to start the default {language} context: {e}");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to handle SIGTERM")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let server = kiln_interpreter::server::serve(
        listener,
        kiln_interpreter::server::app(registry.clone()),
        kiln_interpreter::server::HEADER_READ_TIMEOUT,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    );
    let server = tokio::spawn(server);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    // Clients keep idle connections open: give requests in flight a moment, no more.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    drop(stop_rx);
    registry.shutdown_all().await;
    let _ = std::fs::remove_dir_all(&runtime_dir);
    Ok(())
}
