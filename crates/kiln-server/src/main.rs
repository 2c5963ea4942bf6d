//! `kilnd`: serve the control API and proxy with the configuration from the
//! environment and config file (see `kiln_server::config::ENV_VARS`). `kiln up`
//! does the same after checking and preparing the host.

use anyhow::Context;
use kiln_server::config::{Config, Overrides};
use kiln_server::serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln_server::init_logging();
    let config = Config::load(&Overrides::default()).context("loading the configuration")?;
    let prepared = serve::prepare(&config).await.context("starting kilnd")?;
    if let Some(key) = &prepared.new_api_key {
        println!("API key (shown once): {key}");
    }
    println!("kilnd listening on http://{}", prepared.addr);
    serve::run(prepared, serve::shutdown_signal()).await?;
    Ok(())
}
