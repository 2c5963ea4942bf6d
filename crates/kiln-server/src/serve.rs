//! Starting and stopping kilnd: store, keys, runtime, recovery, listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::keys::{self, DEFAULT_TEAM};
use kiln_core::recovery::RecoveryReport;
use kiln_core::store::{SqliteStore, Store, StoreError};
use kiln_core::{Core, CoreConfig, CoreError, WarmPool};
use kiln_runtime::RuntimeKind;
use tokio::net::TcpListener;

use crate::app::app;
use crate::config::Config;
use crate::listener::{self, Limits};
use crate::runtime::{build_runtimes, load_templates, SetupError, ENVD_VERSION};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot open the store in {dir}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving failed")]
    Serve(#[source] std::io::Error),
}

/// A kilnd ready to serve.
pub struct Prepared {
    pub listener: TcpListener,
    pub state: AppState,
    /// The address actually bound (differs from the config for port 0).
    pub addr: SocketAddr,
    /// A key created because the store had none: print it once.
    pub new_api_key: Option<String>,
    pub recovery: RecoveryReport,
    /// What the listener enforces per connection and per client.
    pub limits: Limits,
}

/// Checks and closes the data directory (see [`crate::datadir`]), opens
/// the store, makes sure an API key exists, builds the runtime,
/// recovers the previous run's sandboxes and binds the listener.
pub async fn prepare(config: &Config) -> Result<Prepared, ServeError> {
    if let Err(e) = kiln_runtime::host::sys::cloexec_inherited() {
        tracing::warn!(error = %e, "could not mark inherited descriptors close-on-exec");
    }
    crate::datadir::private_umask();
    crate::datadir::secure(&config.data_dir, &config.template_dir())?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in(&config.data_dir).map_err(
        |source| ServeError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        },
    )?);
    let mut new_api_key = None;
    if let Some(key) = &config.api_key {
        if !keys::is_sdk_form(key) {
            tracing::warn!("KILN_API_KEY is not of the form e2b_<lowercase hex>; some SDK versions reject such keys");
        }
        keys::ensure_key(store.as_ref(), key, DEFAULT_TEAM, "KILN_API_KEY").await?;
    } else if store.list_keys().await.map_err(CoreError::from)?.is_empty() {
        let (key, _) = keys::create_key(store.as_ref(), DEFAULT_TEAM, "first key").await?;
        new_api_key = Some(key);
    }

    // Bind first: a taken port should fail before any slow setup.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let templates = Arc::new(load_templates(config).await?);
    let runtimes = build_runtimes(config, &templates).await?;
    let mut config = config.clone();
    config.listen = addr;
    let core = Core::new(
        CoreConfig {
            default_timeout_secs: config.default_timeout_secs,
            max_timeout_secs: config.max_timeout_secs,
            envd_version: ENVD_VERSION.into(),
            client_id: config.node_name.clone(),
            domain: Some(config.domain()),
            metrics_interval: Duration::from_secs(config.metrics_interval_secs),
            warm_pools: vec![
                WarmPool {
                    template: kiln_interpreter::template::NAME.to_owned(),
                    runtime: None,
                    size: config.interpreter_warm_pool(),
                },
                WarmPool {
                    template: crate::runtime::BASE_TEMPLATE.to_owned(),
                    runtime: Some(RuntimeKind::Gvisor),
                    size: config.runtime.gvisor.warm_pool,
                },
                WarmPool {
                    template: crate::runtime::BASE_TEMPLATE.to_owned(),
                    runtime: Some(RuntimeKind::Container),
                    size: config.runtime.container.ready_pool,
                },
            ],
            admission: config
                .limits
                .admission(crate::config::HostResources::read(&config.data_dir)),
        },
        store,
        runtimes,
        templates,
    );
    let recovery = core.start().await?;
    Ok(Prepared {
        listener,
        state: AppState::new(core, config.domain()),
        addr,
        new_api_key,
        recovery,
        limits: Limits {
            max_connections_per_ip: config.max_connections_per_ip,
            ..Limits::default()
        },
    })
}

/// Serves until `shutdown` completes, then stops accepting, gives open
/// requests a few seconds and returns. Sandboxes keep running: the next
/// start re-attaches them.
pub async fn run(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut graceful_rx = rx.clone();
    let core = prepared.state.core.clone();
    let server = listener::serve(
        prepared.listener,
        app(prepared.state),
        prepared.limits,
        async move {
            let _ = graceful_rx.wait_for(|v| *v).await;
        },
    );
    let mut deadline_rx = rx;
    let result = tokio::select! {
        r = server => r.map_err(ServeError::Serve),
        () = async move {
            let _ = deadline_rx.wait_for(|v| *v).await;
            // Long streams (command output, watches) would hold shutdown open.
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    };
    core.stop_pools().await;
    for b in core.runtimes().backends() {
        if let Err(e) = b.runtime.shutdown().await {
            tracing::error!(runtime = %b.runtime.kind(), error = %e, "releasing a runtime's pools failed");
        }
    }
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
