//! Flags every client command shares, and the client built from them.

use kiln_client::{Client, ClientConfig};

/// Where kilnd is and which key to send. Flags win over the environment
/// (KILN_API_URL, KILN_API_KEY, then E2B_API_URL, E2B_API_KEY), which wins
/// over the config file (~/.config/kiln/config.toml: api_url, api_key).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientArgs {
    /// kilnd's URL [env: KILN_API_URL, E2B_API_URL] (default http://127.0.0.1:3000).
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// API key [env: KILN_API_KEY, E2B_API_KEY].
    #[arg(long, global = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let config = ClientConfig::resolve(self.api_url.as_deref(), self.api_key.as_deref())?;
        Ok(Client::new(config)?)
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
