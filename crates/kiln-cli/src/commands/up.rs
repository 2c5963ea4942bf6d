//! `kiln up`: check the host, install what is missing, prepare the base
//! template, serve until Ctrl-C.

use anyhow::Context;
use kiln_server::config::{Config, Overrides};
use kiln_server::serve;

use crate::host;
use crate::UpArgs;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = Config::load(&Overrides {
        config_file: args.config.clone(),
        data_dir: Some(args.data_dir.clone()),
        listen: Some(args.listen),
        runtime: args.runtime,
    })
    .context("loading the configuration")?;

    let report = host::check();
    report.print();
    if kiln_server::runtime::enabled_runtimes(&config)
        .iter()
        .any(|k| *k != kiln_runtime::RuntimeKind::Fake)
    {
        report.require_for_container()?;
        host::install_packages(!args.no_install)?;
    }

    eprintln!(
        "preparing templates in {} …",
        config.template_dir().display()
    );
    let prepared = serve::prepare(&config).await.context("starting kilnd")?;
    let url = format!("http://{}", prepared.addr);
    println!();
    let runtimes = prepared.state.core.runtimes();
    println!(
        "Kiln is serving at {url} (default runtime: {}; runtimes: {})",
        runtimes.default_kind(),
        runtimes
            .kinds()
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (kind, why) in runtimes.unavailable() {
        println!("runtime {kind} is not available here: {why}");
    }
    let key_line = match (&prepared.new_api_key, &config.api_key) {
        (Some(key), _) => {
            println!("API key (shown once, store it now): {key}");
            key.clone()
        }
        (None, Some(_)) => {
            println!("API key: the one in KILN_API_KEY");
            "$KILN_API_KEY".into()
        }
        (None, None) => {
            println!("API key: created at the first start; `kiln keys create` makes another");
            "<your key>".into()
        }
    };
    let r = &prepared.recovery;
    if r.reattached + r.cleaned + r.orphans_killed > 0 {
        println!(
            "Recovered the previous run: {} sandboxes re-attached, {} cleaned up, {} orphans killed",
            r.reattached, r.cleaned, r.orphans_killed
        );
    }
    println!();
    println!("Try it (pip install e2b):");
    println!("  export E2B_API_URL={url} E2B_SANDBOX_URL={url} E2B_API_KEY={key_line}");
    println!("  python3 -c 'from e2b import Sandbox; s = Sandbox.create()");
    println!("print(s.commands.run(\"uname -a\").stdout); s.kill()'");
    println!();
    println!("Ctrl-C stops kilnd; running sandboxes are kept and re-attached at the next start.");
    serve::run(prepared, serve::shutdown_signal()).await?;
    eprintln!("kilnd stopped");
    Ok(())
}
