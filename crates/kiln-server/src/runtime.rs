//! The one place that turns configuration into a runtime, an agent client
//! and the template catalog.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kiln_core::templates::{StartCommand, TemplateCatalog, TemplateInfo};
use kiln_core::{Backend, NoAgent, Runtimes};
use kiln_runtime::container::{ContainerConfig, ContainerRuntime, DEFAULT_UID_BASE};
use kiln_runtime::gvisor::{GvisorConfig, GvisorRuntime};
use kiln_runtime::{RuntimeError, RuntimeKind, TemplateRef};

use crate::agent_client::HttpAgentClient;
use crate::config::Config;

/// The envd version Kiln's agent implements, reported to the SDKs.
///
/// The agent's own constant, so the two cannot drift apart.
pub const ENVD_VERSION: &str = kiln_api::agent::ENVD_VERSION;

/// The alias of the default template (the SDKs' default).
pub const BASE_TEMPLATE: &str = "base";

/// The runtimes this build of kilnd can run.
pub const AVAILABLE_RUNTIMES: &[RuntimeKind] = &[
    RuntimeKind::Container,
    RuntimeKind::Gvisor,
    RuntimeKind::Fake,
];

/// Runtimes served only when asked for (`KILN_RUNTIMES`, or as the
/// default): gVisor's memory pause and the e2b suite do not pass on it yet
/// (see README, Runtimes), so a plain `kiln up` does not set it up.
pub const PREVIEW_RUNTIMES: &[RuntimeKind] = &[RuntimeKind::Gvisor];

/// The runtimes a kilnd with `config` sets up: the configured list, else
/// the default plus every other real runtime of this build that is not a
/// preview (the fake only when it is the default).
pub fn enabled_runtimes(config: &Config) -> Vec<RuntimeKind> {
    if let Some(list) = &config.runtime.enabled {
        return list.clone();
    }
    let default = config.runtime.default;
    if default == RuntimeKind::Fake {
        return vec![RuntimeKind::Fake];
    }
    let mut kinds = vec![default];
    kinds.extend(
        AVAILABLE_RUNTIMES
            .iter()
            .copied()
            .filter(|k| *k != default && *k != RuntimeKind::Fake && !PREVIEW_RUNTIMES.contains(k)),
    );
    kinds
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("runtime {0} is not in this build of kilnd")]
    NotBuilt(RuntimeKind),
    #[error("the default runtime {kind} cannot run on this host")]
    DefaultUnavailable {
        kind: RuntimeKind,
        #[source]
        source: Box<SetupError>,
    },
    #[error("{what} not found at {path}: build it ({hint}) or set {var}")]
    MissingBinary {
        what: &'static str,
        path: String,
        hint: &'static str,
        var: &'static str,
    },
    #[error("the sandbox subnet {subnet}/16 is already routed on the host through {iface}: set KILN_SUBNET to a free private /16")]
    SubnetInUse {
        subnet: std::net::Ipv4Addr,
        iface: String,
    },
    #[error("runsc (gVisor) is not installed: install the runsc package or set KILN_RUNSC")]
    NoRunsc,
    #[error("the {0} runtime could not start")]
    Runtime(RuntimeKind, #[source] RuntimeError),
    #[error("building the {name} template failed")]
    Template {
        name: &'static str,
        #[source]
        source: kiln_template::TemplateError,
    },
    #[error("the template build task failed: {0}")]
    TemplateTask(String),
}

fn require(
    path: &Path,
    what: &'static str,
    hint: &'static str,
    var: &'static str,
) -> Result<(), SetupError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(SetupError::MissingBinary {
            what,
            path: path.display().to_string(),
            hint,
            var,
        })
    }
}

/// Sets up every enabled runtime with the matching agent client. A runtime
/// that cannot run here is recorded as unavailable, with why (creates that
/// ask for it get a 400 saying so); the default runtime must start. The
/// container runtime re-attaches the sandboxes of a previous run here.
/// `templates` says which templates get the code interpreter's binary.
pub async fn build_runtimes(
    config: &Config,
    templates: &TemplateCatalog,
) -> Result<Runtimes, SetupError> {
    let mut set = Runtimes::new(config.runtime.default);
    for kind in enabled_runtimes(config) {
        match build_one(kind, config, templates).await {
            Ok(backend) => set.add(backend),
            Err(e) if kind == config.runtime.default => {
                return Err(SetupError::DefaultUnavailable {
                    kind,
                    source: Box::new(e),
                })
            }
            Err(e) => {
                let why = error_chain(&e);
                tracing::warn!(runtime = %kind, reason = %why, "runtime not available");
                set.mark_unavailable(kind, why);
            }
        }
    }
    Ok(set)
}

/// An error and its sources, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

async fn build_one(
    kind: RuntimeKind,
    config: &Config,
    templates: &TemplateCatalog,
) -> Result<Backend, SetupError> {
    match kind {
        RuntimeKind::Fake => Ok(Backend {
            runtime: Arc::new(kiln_runtime::fake::FakeRuntime::new()),
            agent: Arc::new(NoAgent),
        }),
        RuntimeKind::Container => {
            let agent_bin = config.agent_bin();
            let spawn_bin = config.spawn_bin();
            require(
                &agent_bin,
                "the kiln-agent binary",
                "scripts/lib.sh kiln_build_agent",
                "KILN_AGENT_BIN",
            )?;
            require(
                &spawn_bin,
                "the kiln-spawn helper",
                "cargo build -p kiln-runtime --bins",
                "KILN_SPAWN_BIN",
            )?;
            check_subnet_free(config.subnet, &format!("kb-{}", config.runtime_tag))?;
            let mut cfg =
                ContainerConfig::new(config.data_dir.join("container"), agent_bin, spawn_bin);
            cfg.tag = config.runtime_tag.clone();
            cfg.warm_pool = config.runtime.container.warm_pool;
            // Warm helpers and the disk pool hold disks of the default size
            // from the start, not only after the first create asked for it:
            // a burst of creates on a fresh kilnd skips mkfs.
            cfg.disk_pool_sizes_mib = vec![config.sandbox_disk_mib];
            cfg.net.tag = config.runtime_tag.clone();
            cfg.net.subnet = config.subnet;
            cfg.template_binds = interpreter_binds(config, templates);
            let rt = ContainerRuntime::new(cfg)
                .await
                .map_err(|e| SetupError::Runtime(kind, e))?;
            Ok(Backend {
                runtime: Arc::new(rt),
                agent: Arc::new(HttpAgentClient::new()),
            })
        }
        RuntimeKind::Gvisor => {
            let agent_bin = config.agent_bin();
            require(
                &agent_bin,
                "the kiln-agent binary",
                "scripts/lib.sh kiln_build_agent",
                "KILN_AGENT_BIN",
            )?;
            let runsc = kiln_runtime::gvisor::runsc::find(config.runtime.gvisor.runsc.as_deref())
                .ok_or(SetupError::NoRunsc)?;
            let tag = config.gvisor_tag();
            let subnet = config.gvisor_subnet();
            check_subnet_free(subnet, &format!("kb-{tag}"))?;
            let mut cfg = GvisorConfig::new(config.data_dir.join("gvisor"), agent_bin, runsc);
            cfg.tag = tag.clone();
            cfg.net.tag = tag;
            cfg.net.subnet = subnet;
            cfg.disk_pool_sizes_mib = vec![config.sandbox_disk_mib];
            cfg.template_binds = interpreter_binds(config, templates);
            cfg.debug_log = config.runtime.gvisor.debug_log.clone();
            let rt = GvisorRuntime::new(cfg)
                .await
                .map_err(|e| SetupError::Runtime(kind, e))?;
            Ok(Backend {
                runtime: Arc::new(rt),
                agent: Arc::new(HttpAgentClient::new()),
            })
        }
        other => Err(SetupError::NotBuilt(other)),
    }
}

/// The code interpreter's binary, bound into the code-interpreter
/// template's sandboxes (by template id).
fn interpreter_binds(
    config: &Config,
    templates: &TemplateCatalog,
) -> std::collections::BTreeMap<String, Vec<(std::path::PathBuf, String)>> {
    templates
        .list()
        .into_iter()
        .filter(|t| {
            t.aliases
                .iter()
                .any(|a| a == kiln_interpreter::template::NAME)
        })
        .map(|t| {
            (
                t.template.id.clone(),
                vec![(
                    config.interpreter_bin(),
                    kiln_interpreter::template::BINARY.to_owned(),
                )],
            )
        })
        .collect()
}

/// Refuses a subnet that another interface (another kilnd's bridge, a VPN,
/// the LAN) already routes: sandboxes there would be unreachable.
fn check_subnet_free(subnet: std::net::Ipv4Addr, own_bridge: &str) -> Result<(), SetupError> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Ok(()); // not Linux procfs: nothing to check against
    };
    let ours = u32::from(subnet);
    let our_mask = 0xffff_0000u32;
    for (iface, dest, mask) in parse_routes(&table) {
        if mask == 0 || iface == own_bridge {
            continue; // the default route, or our own bridge from a previous run
        }
        let common = mask & our_mask;
        if dest & common == ours & common {
            return Err(SetupError::SubnetInUse { subnet, iface });
        }
    }
    Ok(())
}

/// (interface, destination, mask) of each line of /proc/net/route, whose
/// addresses are network-order words printed as host-order hex.
fn parse_routes(table: &str) -> Vec<(String, u32, u32)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| {
                u32::from_str_radix(s, 16)
                    .ok()
                    .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
            };
            Some((f.first()?.to_string(), hex(f.get(1)?)?, hex(f.get(7)?)?))
        })
        .collect()
}

/// Prints template build phases on stderr (the first build takes a minute
/// or two; later starts find the cached one).
struct StderrProgress;

impl kiln_template::Progress for StderrProgress {
    fn phase(&self, message: &str) {
        eprintln!("template: {message}");
    }
}

/// The code-interpreter template's recipe: the base template plus the
/// interpreter's packages and build steps (`kiln_interpreter::template`),
/// cached under its own hash like the base.
pub fn code_interpreter_recipe(uid_offset: u32) -> kiln_template::Recipe {
    let extra = kiln_interpreter::template::recipe();
    let mut recipe = kiln_template::Recipe::base(uid_offset);
    recipe.name = extra.name;
    recipe.packages.extend(extra.packages);
    recipe.customize.extend(extra.customize);
    recipe
}

/// The code interpreter's start command, as the core runs it.
pub fn code_interpreter_start() -> StartCommand {
    let s = kiln_interpreter::template::recipe().start;
    StartCommand {
        argv: s.argv,
        user: s.user,
        cwd: s.cwd,
        env: s.env,
        ready_port: kiln_interpreter::template::PORT,
        ready_path: "/health".into(),
        // Its /health answers as soon as it listens (kernels start in the
        // background), normally within tens of milliseconds.
        ready_timeout: Duration::from_secs(20),
        // A warm sandbox's default kernel is running, with what data
        // agents import first already imported.
        warm: Some(kiln_core::templates::WarmRequest {
            port: kiln_interpreter::template::PORT,
            path: "/execute".into(),
            body: serde_json::json!({
                "code": "import numpy, pandas, matplotlib.pyplot",
                "language": "python",
            })
            .to_string(),
        }),
    }
}

async fn ensure(
    name: &'static str,
    dir: std::path::PathBuf,
    recipe: kiln_template::Recipe,
) -> Result<TemplateRef, SetupError> {
    let built = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let r = kiln_template::ensure(&dir, &recipe, &StderrProgress);
        if r.is_ok() && started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "template: {name} built in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        r
    })
    .await
    .map_err(|e| SetupError::TemplateTask(e.to_string()))?
    .map_err(|source| SetupError::Template { name, source })?;
    Ok(TemplateRef {
        id: built.id,
        rootfs: built.rootfs,
    })
}

/// The templates sandboxes can start from: for the container runtime the
/// base template and (unless `code_interpreter` is off) the code-interpreter
/// template, built (once, then cached) by kiln-template; for the fake
/// runtime a placeholder base.
///
/// The code-interpreter template is built here, at start, rather than on
/// its first request: `Sandbox.create()` of the e2b-code-interpreter SDK is
/// expected to work as soon as `kiln up` says it serves, and a first create
/// that waited minutes for a build would hit the SDK's request timeout.
pub async fn load_templates(config: &Config) -> Result<TemplateCatalog, SetupError> {
    let catalog = TemplateCatalog::new();
    let info = |template, aliases: Vec<String>, start| TemplateInfo {
        template,
        aliases,
        vcpus: config.sandbox_vcpus,
        memory_mib: config.sandbox_memory_mib,
        disk_mib: config.sandbox_disk_mib,
        created_at: Utc::now(),
        runtime: None,
        start,
    };
    if enabled_runtimes(config) == [RuntimeKind::Fake] {
        let template = TemplateRef {
            id: BASE_TEMPLATE.into(),
            rootfs: config.template_dir().join("templates").join(BASE_TEMPLATE),
        };
        catalog.add(info(template, vec![], None));
        return Ok(catalog);
    }
    let base = ensure(
        "base",
        config.template_dir(),
        kiln_template::Recipe::base(DEFAULT_UID_BASE),
    )
    .await?;
    catalog.add(info(base, vec![BASE_TEMPLATE.to_owned()], None));
    let bin = config.interpreter_bin();
    let wanted = match config.code_interpreter {
        Some(false) => false,
        Some(true) => {
            require(
                &bin,
                "the kiln-interpreter binary",
                "cargo build --release -p kiln-interpreter",
                "KILN_INTERPRETER_BIN",
            )?;
            true
        }
        None if bin.is_file() => true,
        None => {
            eprintln!(
                "template: code-interpreter skipped: the kiln-interpreter binary is not at {} \
                 (build it with `cargo build --release -p kiln-interpreter` or set \
                 KILN_INTERPRETER_BIN; KILN_CODE_INTERPRETER=false silences this)",
                bin.display()
            );
            false
        }
    };
    if wanted {
        let ci = ensure(
            "code-interpreter",
            config.template_dir(),
            code_interpreter_recipe(DEFAULT_UID_BASE),
        )
        .await?;
        let aliases = kiln_interpreter::template::ALIASES
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        catalog.add(info(ci, aliases, Some(code_interpreter_start())));
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_in_host_order() {
        let table =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                     kb-cli\t0000C60A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = parse_routes(table);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].0, "kb-cli");
        assert_eq!(
            std::net::Ipv4Addr::from(routes[0].1),
            std::net::Ipv4Addr::new(10, 198, 0, 0)
        );
        assert_eq!(routes[0].2, 0xffff_0000);
    }

    #[test]
    fn code_interpreter_recipe_extends_the_base() {
        let base = kiln_template::Recipe::base(DEFAULT_UID_BASE);
        let ci = code_interpreter_recipe(DEFAULT_UID_BASE);
        assert_eq!(ci.name, "code-interpreter");
        assert!(base.packages.iter().all(|p| ci.packages.contains(p)));
        assert!(ci.packages.iter().any(|p| p == "python3-ipykernel"));
        assert_eq!(ci.customize[..base.customize.len()], base.customize[..]);
        assert_ne!(ci.hash(), base.hash());
        let start = code_interpreter_start();
        assert_eq!(start.argv[0], kiln_interpreter::template::BINARY);
        assert_eq!(start.ready_port, 49999);
    }
}
