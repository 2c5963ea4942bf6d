//! kilnd's configuration: one struct, read from a TOML file, then environment
//! variables, then command-line flags (each overriding the previous).
//!
//! [`ENV_VARS`] is the one documented list of every variable Kiln reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kiln_runtime::RuntimeKind;
use serde::{Deserialize, Serialize};

/// Every environment variable Kiln reads, with what it sets. The config file
/// takes the same settings under the names of [`Config`]'s fields.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("KILN_CONFIG", "Path of the TOML config file (default: <data_dir>/kiln.toml, if it exists)."),
    ("KILN_DATA_DIR", "Directory of the store, templates and sandboxes (default /var/lib/kiln)."),
    ("KILN_LISTEN", "Address of the control API and proxy (default 127.0.0.1:3000)."),
    ("KILN_DOMAIN", "Domain reported to the SDKs: `<port>-<id>.<domain>` reaches a sandbox port (default: localhost:<listen port>)."),
    ("KILN_RUNTIME", "Runtime of a sandbox whose template and create request name none: container (default), gvisor, microvm, or fake (no isolation; tests only). TOML: runtime.default."),
    ("KILN_RUNTIMES", "Comma-separated runtimes kilnd sets up at start (default: the default runtime plus every other one this build has, except gvisor, a preview that is set up only when named here or as the default; one that cannot run on this host is reported, not fatal, unless it is the default). TOML: runtime.enabled."),
    ("KILN_TEMPLATE_DIR", "Directory whose templates/ holds the built templates, reused across restarts (default: the data dir)."),
    ("KILN_DEFAULT_TIMEOUT", "Sandbox timeout in seconds when the caller gives none (default 300)."),
    ("KILN_MAX_TIMEOUT", "Largest sandbox timeout in seconds a caller may ask for (default 86400)."),
    ("KILN_SANDBOX_VCPUS", "vCPUs of a sandbox (default 2)."),
    ("KILN_SANDBOX_MEMORY_MIB", "Memory limit of a sandbox in MiB (default 1024)."),
    ("KILN_SANDBOX_DISK_MIB", "Disk limit of a sandbox in MiB (default 4096)."),
    ("KILN_TEAM_SANDBOXES", "TOML: limits.sandboxes. Concurrent (running) sandboxes a team may hold, unless `kiln teams set` gave it its own (default: the host's memory capacity / 256 MiB)."),
    ("KILN_TEAM_VCPUS", "TOML: limits.vcpus. vCPUs a team's running sandboxes may hold together (default: the host's capacity, see KILN_VCPU_OVERCOMMIT)."),
    ("KILN_TEAM_MEMORY_MIB", "TOML: limits.memory_mib. Memory limits (MiB) a team's sandboxes may hold together, running or paused with memory (default: the host's capacity)."),
    ("KILN_TEAM_DISK_MIB", "TOML: limits.disk_mib. Disk limits (MiB) a team's sandboxes may hold together, running or paused (default: the host's capacity)."),
    ("KILN_VCPU_OVERCOMMIT", "TOML: limits.vcpu_overcommit. The host admits sandboxes while their vCPUs add up to at most this many times its CPUs, 1-1000 (default 64: vCPUs are CPU-time ceilings)."),
    ("KILN_MEMORY_OVERCOMMIT", "TOML: limits.memory_overcommit. The host admits sandboxes while their memory limits add up to at most this many times its memory, 1-1000 (default 4)."),
    ("KILN_DISK_OVERCOMMIT", "TOML: limits.disk_overcommit. The host admits sandboxes while their disk limits add up to at most this many times the size of the data directory's file system, 1-1000 (default 4: disks are sparse)."),
    ("KILN_WARM_POOL", "TOML: runtime.container.warm_pool. Sandboxes the container runtime keeps started ahead of time, each with its namespaces, cgroups and disk ready (about 1 MiB of host memory apiece): creates beyond it in a burst take the slower cold path (default 64, at most 1000)."),
    ("KILN_READY_POOL", "TOML: runtime.container.ready_pool. Base-template sandboxes the container runtime keeps booted, their agent answering, ahead of time: a create (one that names no egress lists) is handed one with its own token, env vars and metadata, so it only assigns and configures (about 2 MiB of host memory apiece; default 4, at most 100, 0 turns it off)."),
    ("KILN_AGENT_BIN", "The static kiln-agent binary put into every sandbox (default: kiln-agent next to this program, or the agent build in target/)."),
    ("KILN_CODE_INTERPRETER", "Build and serve the code-interpreter template (aliases code-interpreter-v1, code-interpreter: the e2b-code-interpreter SDK's default) with the container runtime: true (required: kilnd does not start without it), false (off), or unset (default: built when the kiln-interpreter binary is found, else a warning). Its first build takes a few minutes; later starts use the cache."),
    ("KILN_INTERPRETER_BIN", "The kiln-interpreter binary mounted into code-interpreter sandboxes (default: kiln-interpreter next to this program)."),
    ("KILN_SPAWN_BIN", "The container runtime's kiln-spawn helper (default: kiln-spawn next to this program). TOML: runtime.container.spawn_bin."),
    ("KILN_RUNSC", "The gVisor runtime's runsc binary (default: runsc on the PATH; Debian's package installs it). TOML: runtime.gvisor.runsc."),
    ("KILN_GVISOR_WARM_POOL", "TOML: runtime.gvisor.warm_pool. Base-template sandboxes the gVisor runtime keeps booted ahead of time, so that a create takes milliseconds instead of runsc's start (a few hundred ms); each holds an idle runsc sandbox's memory (default 2, at most 100, 0 turns it off)."),
    ("KILN_GVISOR_SUBNET", "The gVisor runtime's sandbox bridge /16, given by its first address (default: the /16 after KILN_SUBNET, 10.89.0.0). TOML: runtime.gvisor.subnet."),
    ("KILN_RUNTIME_TAG", "Tag naming the container runtime's host objects (cgroups, bridge, namespaces, firewall table), 1-4 of [a-z0-9]; two kilnds on one host need different tags (default k0)."),
    ("KILN_SUBNET", "The sandbox bridge's private /16, given by its first address (default 10.88.0.0); distinct per tag."),
    ("KILN_INTERPRETER_WARM_POOL", "Code-interpreter sandboxes kept started ahead of time, their default Python kernel running with numpy, pandas and matplotlib imported (about 150 MiB of memory apiece), so that create → first run_code takes milliseconds; 0 turns it off (default: one per 3 GiB of host memory, 1 to 8)."),
    ("KILN_METRICS_INTERVAL", "Seconds between two resource-use samples of every running sandbox, 1-3600 (default 5); the last 720 samples of each are kept in memory for GET /sandboxes/{id}/metrics."),
    ("KILN_MAX_CONNECTIONS_PER_IP", "Open connections kilnd accepts from one client address, the proxy's included; one more is answered 429 and closed (default 1024; 0: no limit). Keep it below kilnd's open-files limit (ulimit -n)."),
    ("KILN_NODE_NAME", "This node's name, reported as clientID (default kiln)."),
    ("KILN_API_KEY", "An API key kilnd accepts (added to the store at start, team `default`); environment only, never in the file."),
    ("KILN_LOG", "Log filter in tracing's EnvFilter syntax (default info)."),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub domain: Option<String>,
    /// `[runtime]`: the default, which runtimes to set up, and a section
    /// per runtime (`[runtime.container]`, ...).
    #[serde(deserialize_with = "runtime_config")]
    pub runtime: RuntimeConfig,
    pub template_dir: Option<PathBuf>,
    pub default_timeout_secs: i64,
    pub max_timeout_secs: i64,
    pub sandbox_vcpus: u32,
    pub sandbox_memory_mib: u64,
    pub sandbox_disk_mib: u64,
    pub node_name: String,
    pub metrics_interval_secs: u64,
    /// Open connections from one client address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// `None`: sized from the host's memory.
    pub interpreter_warm_pool: Option<usize>,
    pub agent_bin: Option<PathBuf>,
    /// `None`: when the interpreter binary is there.
    pub code_interpreter: Option<bool>,
    pub interpreter_bin: Option<PathBuf>,
    pub runtime_tag: String,
    pub subnet: std::net::Ipv4Addr,
    /// `[limits]`: per-team defaults and the host's overcommit factors.
    pub limits: LimitsConfig,
    /// From `KILN_API_KEY` only.
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/kiln"),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            domain: None,
            runtime: RuntimeConfig::default(),
            template_dir: None,
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            sandbox_vcpus: 2,
            sandbox_memory_mib: 1024,
            sandbox_disk_mib: 4096,
            node_name: "kiln".into(),
            metrics_interval_secs: 5,
            max_connections_per_ip: crate::listener::DEFAULT_MAX_CONNECTIONS_PER_IP,
            interpreter_warm_pool: None,
            agent_bin: None,
            code_interpreter: None,
            interpreter_bin: None,
            runtime_tag: "k0".into(),
            subnet: std::net::Ipv4Addr::new(10, 88, 0, 0),
            limits: LimitsConfig::default(),
            api_key: None,
        }
    }
}

/// `[limits]` of the config file: what a team may hold unless `kiln teams
/// set` gave it its own limits (`None`: sized from the host), and how far
/// the host's own resources are overcommitted when admitting sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub sandboxes: Option<u64>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub vcpu_overcommit: u32,
    pub memory_overcommit: u32,
    pub disk_overcommit: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            sandboxes: None,
            vcpus: None,
            memory_mib: None,
            disk_mib: None,
            vcpu_overcommit: 64,
            memory_overcommit: 4,
            disk_overcommit: 4,
        }
    }
}

/// What admission is sized from: the host's CPUs, memory and the size of
/// the data directory's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

impl HostResources {
    /// This host's, for a data directory at `data_dir`.
    pub fn read(data_dir: &Path) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map(|kib| kib >> 10)
            .unwrap_or(1024);
        let disk_mib = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks().saturating_mul(s.fragment_size()) >> 20)
            .unwrap_or(0);
        Self {
            cpus,
            memory_mib,
            disk_mib,
        }
    }
}

impl LimitsConfig {
    /// The core's admission settings on a host with `host`'s resources.
    pub fn admission(&self, host: HostResources) -> kiln_core::limits::AdmissionConfig {
        use kiln_core::limits::{AdmissionConfig, Amounts};
        let capacity = Amounts {
            sandboxes: u64::MAX,
            vcpus: host.cpus.saturating_mul(self.vcpu_overcommit.into()),
            memory_mib: host
                .memory_mib
                .saturating_mul(self.memory_overcommit.into()),
            disk_mib: host.disk_mib.saturating_mul(self.disk_overcommit.into()),
        };
        AdmissionConfig {
            team_default: Amounts {
                sandboxes: self
                    .sandboxes
                    .unwrap_or((capacity.memory_mib / 256).max(1)),
                vcpus: self.vcpus.unwrap_or(capacity.vcpus),
                memory_mib: self.memory_mib.unwrap_or(capacity.memory_mib),
                disk_mib: self.disk_mib.unwrap_or(capacity.disk_mib),
            },
            host: capacity,
            host_note: format!(
                "it admits {}x its {} CPUs, {}x its {} MiB of memory and {}x its {} MiB data file system",
                self.vcpu_overcommit,
                host.cpus,
                self.memory_overcommit,
                host.memory_mib,
                self.disk_overcommit,
                host.disk_mib
            ),
        }
    }
}

/// `[runtime]` of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The runtime of a sandbox whose template and create request name none.
    pub default: RuntimeKind,
    /// The runtimes set up at start; `None`: the default plus every other
    /// real runtime this build has.
    pub enabled: Option<Vec<RuntimeKind>>,
    pub container: ContainerRuntimeConfig,
    pub gvisor: GvisorRuntimeConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default: RuntimeKind::Container,
            enabled: None,
            container: ContainerRuntimeConfig::default(),
            gvisor: GvisorRuntimeConfig::default(),
        }
    }
}

/// `[runtime.gvisor]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GvisorRuntimeConfig {
    /// The runsc binary (default: `runsc` on the PATH).
    pub runsc: Option<PathBuf>,
    /// The bridge subnet of gVisor sandboxes (default: the /16 after
    /// `subnet`).
    pub subnet: Option<std::net::Ipv4Addr>,
    /// Directory for runsc's debug logs (debugging only).
    pub debug_log: Option<PathBuf>,
    /// Base-template sandboxes kept booted ahead of time (at most 100), so
    /// that a create does not wait for runsc's start.
    pub warm_pool: usize,
}

impl Default for GvisorRuntimeConfig {
    fn default() -> Self {
        Self {
            runsc: None,
            subnet: None,
            debug_log: None,
            warm_pool: 2,
        }
    }
}

/// `[runtime.container]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerRuntimeConfig {
    /// Sandboxes kept started ahead of time (at most 1000).
    pub warm_pool: usize,
    /// Base-template sandboxes kept booted ahead of time, handed over at
    /// create (at most 100).
    pub ready_pool: usize,
    /// The `kiln-spawn` helper (default: next to this program).
    pub spawn_bin: Option<PathBuf>,
}

impl Default for ContainerRuntimeConfig {
    fn default() -> Self {
        Self {
            warm_pool: 64,
            ready_pool: 4,
            spawn_bin: None,
        }
    }
}

/// The file may also say just `runtime = "<name>"` (the default runtime),
/// as Kiln's first config files did.
fn runtime_config<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RuntimeConfig, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Name(RuntimeKind),
        Section(RuntimeConfig),
    }
    Ok(match Either::deserialize(d)? {
        Either::Name(default) => RuntimeConfig {
            default,
            ..RuntimeConfig::default()
        },
        Either::Section(s) => s,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value {value:?} of {name}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Settings given on the command line; they override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub runtime: Option<RuntimeKind>,
}

impl Config {
    /// Reads the configuration from the process environment (and the config
    /// file it points to), then applies `overrides`.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with(overrides, |name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], with the environment given as a function.
    pub fn load_with(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| env("KILN_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| Config::default().data_dir);
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env("KILN_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => {
                let default = data_dir.join("kiln.toml");
                if default.exists() {
                    Self::from_file(&default)?
                } else {
                    Config::default()
                }
            }
        };
        config.apply_env(&env)?;
        config.data_dir = data_dir;
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(r) = overrides.runtime {
            config.runtime.default = r;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env {
                name,
                value,
                message: e.to_string(),
            })
        }
        if let Some(v) = env("KILN_LISTEN") {
            self.listen = parse("KILN_LISTEN", v)?;
        }
        if let Some(v) = env("KILN_DOMAIN") {
            self.domain = Some(v).filter(|d| !d.is_empty());
        }
        if let Some(v) = env("KILN_RUNTIME") {
            self.runtime.default = parse("KILN_RUNTIME", v)?;
        }
        if let Some(v) = env("KILN_RUNTIMES") {
            let list = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| n.parse::<RuntimeKind>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::Env {
                    name: "KILN_RUNTIMES",
                    value: v.clone(),
                    message: e.to_string(),
                })?;
            self.runtime.enabled = Some(list);
        }
        if let Some(v) = env("KILN_TEMPLATE_DIR") {
            self.template_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KILN_DEFAULT_TIMEOUT") {
            self.default_timeout_secs = parse("KILN_DEFAULT_TIMEOUT", v)?;
        }
        if let Some(v) = env("KILN_MAX_TIMEOUT") {
            self.max_timeout_secs = parse("KILN_MAX_TIMEOUT", v)?;
        }
        if let Some(v) = env("KILN_SANDBOX_VCPUS") {
            self.sandbox_vcpus = parse("KILN_SANDBOX_VCPUS", v)?;
        }
        if let Some(v) = env("KILN_SANDBOX_MEMORY_MIB") {
            self.sandbox_memory_mib = parse("KILN_SANDBOX_MEMORY_MIB", v)?;
        }
        if let Some(v) = env("KILN_SANDBOX_DISK_MIB") {
            self.sandbox_disk_mib = parse("KILN_SANDBOX_DISK_MIB", v)?;
        }
        if let Some(v) = env("KILN_TEAM_SANDBOXES") {
            self.limits.sandboxes = Some(parse("KILN_TEAM_SANDBOXES", v)?);
        }
        if let Some(v) = env("KILN_TEAM_VCPUS") {
            self.limits.vcpus = Some(parse("KILN_TEAM_VCPUS", v)?);
        }
        if let Some(v) = env("KILN_TEAM_MEMORY_MIB") {
            self.limits.memory_mib = Some(parse("KILN_TEAM_MEMORY_MIB", v)?);
        }
        if let Some(v) = env("KILN_TEAM_DISK_MIB") {
            self.limits.disk_mib = Some(parse("KILN_TEAM_DISK_MIB", v)?);
        }
        if let Some(v) = env("KILN_VCPU_OVERCOMMIT") {
            self.limits.vcpu_overcommit = parse("KILN_VCPU_OVERCOMMIT", v)?;
        }
        if let Some(v) = env("KILN_MEMORY_OVERCOMMIT") {
            self.limits.memory_overcommit = parse("KILN_MEMORY_OVERCOMMIT", v)?;
        }
        if let Some(v) = env("KILN_DISK_OVERCOMMIT") {
            self.limits.disk_overcommit = parse("KILN_DISK_OVERCOMMIT", v)?;
        }
        if let Some(v) = env("KILN_WARM_POOL") {
            self.runtime.container.warm_pool = parse("KILN_WARM_POOL", v)?;
        }
        if let Some(v) = env("KILN_READY_POOL") {
            self.runtime.container.ready_pool = parse("KILN_READY_POOL", v)?;
        }
        if let Some(v) = env("KILN_INTERPRETER_WARM_POOL") {
            self.interpreter_warm_pool = Some(parse("KILN_INTERPRETER_WARM_POOL", v)?);
        }
        if let Some(v) = env("KILN_METRICS_INTERVAL") {
            self.metrics_interval_secs = parse("KILN_METRICS_INTERVAL", v)?;
        }
        if let Some(v) = env("KILN_MAX_CONNECTIONS_PER_IP") {
            self.max_connections_per_ip = parse("KILN_MAX_CONNECTIONS_PER_IP", v)?;
        }
        if let Some(v) = env("KILN_NODE_NAME") {
            self.node_name = v;
        }
        if let Some(v) = env("KILN_AGENT_BIN") {
            self.agent_bin = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KILN_SPAWN_BIN") {
            self.runtime.container.spawn_bin = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KILN_CODE_INTERPRETER") {
            self.code_interpreter = match v.to_ascii_lowercase().as_str() {
                "" => None,
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => {
                    return Err(ConfigError::Env {
                        name: "KILN_CODE_INTERPRETER",
                        value: v,
                        message: "use true or false".into(),
                    })
                }
            };
        }
        if let Some(v) = env("KILN_INTERPRETER_BIN") {
            self.interpreter_bin = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KILN_RUNSC") {
            self.runtime.gvisor.runsc =
                Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        }
        if let Some(v) = env("KILN_GVISOR_WARM_POOL") {
            self.runtime.gvisor.warm_pool = parse("KILN_GVISOR_WARM_POOL", v)?;
        }
        if let Some(v) = env("KILN_GVISOR_SUBNET") {
            self.runtime.gvisor.subnet = Some(parse("KILN_GVISOR_SUBNET", v)?);
        }
        if let Some(v) = env("KILN_RUNTIME_TAG") {
            self.runtime_tag = v;
        }
        if let Some(v) = env("KILN_SUBNET") {
            self.subnet = parse("KILN_SUBNET", v)?;
        }
        if let Some(v) = env("KILN_API_KEY") {
            self.api_key = Some(v).filter(|k| !k.is_empty());
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_timeout_secs < 1 {
            return Err(ConfigError::Invalid(
                "max_timeout_secs must be at least 1".into(),
            ));
        }
        if !(1..=self.max_timeout_secs).contains(&self.default_timeout_secs) {
            return Err(ConfigError::Invalid(format!(
                "default_timeout_secs must be between 1 and max_timeout_secs ({})",
                self.max_timeout_secs
            )));
        }
        let tag_ok = (1..=4).contains(&self.runtime_tag.len())
            && self
                .runtime_tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !tag_ok {
            return Err(ConfigError::Invalid(format!(
                "runtime_tag {:?} must be 1-4 of [a-z0-9]",
                self.runtime_tag
            )));
        }
        if self.sandbox_vcpus == 0 || self.sandbox_memory_mib == 0 || self.sandbox_disk_mib == 0 {
            return Err(ConfigError::Invalid(
                "sandbox vCPUs, memory and disk must be positive".into(),
            ));
        }
        if !(1..=3600).contains(&self.metrics_interval_secs) {
            return Err(ConfigError::Invalid(format!(
                "metrics_interval_secs {} must be between 1 and 3600",
                self.metrics_interval_secs
            )));
        }
        let l = &self.limits;
        for (name, f) in [
            ("vcpu_overcommit", l.vcpu_overcommit),
            ("memory_overcommit", l.memory_overcommit),
            ("disk_overcommit", l.disk_overcommit),
        ] {
            if !(1..=1000).contains(&f) {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name} {f} must be between 1 and 1000"
                )));
            }
        }
        if self.runtime.container.warm_pool > 1000 {
            return Err(ConfigError::Invalid(format!(
                "runtime.container.warm_pool {} is more than 1000",
                self.runtime.container.warm_pool
            )));
        }
        if self.runtime.container.ready_pool > 100 {
            return Err(ConfigError::Invalid(format!(
                "runtime.container.ready_pool {} is more than 100",
                self.runtime.container.ready_pool
            )));
        }
        if self.runtime.gvisor.warm_pool > 100 {
            return Err(ConfigError::Invalid(format!(
                "runtime.gvisor.warm_pool {} is more than 100",
                self.runtime.gvisor.warm_pool
            )));
        }
        if let Some(enabled) = &self.runtime.enabled {
            if !enabled.contains(&self.runtime.default) {
                return Err(ConfigError::Invalid(format!(
                    "the default runtime {} is not among the enabled runtimes ({})",
                    self.runtime.default,
                    enabled
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The template cache's parent directory (templates are in its `templates/`).
    pub fn template_dir(&self) -> PathBuf {
        self.template_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.clone())
    }

    /// The agent binary: configured, else next to the running program, else
    /// the static build in the cargo target directory this program came from.
    pub fn agent_bin(&self) -> PathBuf {
        if let Some(p) = &self.agent_bin {
            return p.clone();
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let candidates = [
            exe_dir.join("kiln-agent"),
            exe_dir.join("../x86_64-unknown-linux-gnu/agent/kiln-agent"),
        ];
        candidates
            .iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| candidates[0].clone())
    }

    /// The container runtime's spawn helper: configured, else next to the
    /// running program.
    pub fn spawn_bin(&self) -> PathBuf {
        self.runtime.container.spawn_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("kiln-spawn")))
                .unwrap_or_else(|| PathBuf::from("kiln-spawn"))
        })
    }

    /// The gVisor runtime's tag: the runtime tag with `g` (its last
    /// character replaced when the tag has 4 already).
    pub fn gvisor_tag(&self) -> String {
        let mut t: String = self.runtime_tag.chars().take(3).collect();
        t.push('g');
        t
    }

    /// The gVisor sandboxes' subnet: configured, else the /16 after the
    /// container runtime's.
    pub fn gvisor_subnet(&self) -> std::net::Ipv4Addr {
        self.runtime.gvisor.subnet.unwrap_or_else(|| {
            let o = self.subnet.octets();
            std::net::Ipv4Addr::new(o[0], o[1].wrapping_add(1), 0, 0)
        })
    }

    /// The code interpreter's binary: configured, else next to the running
    /// program.
    pub fn interpreter_bin(&self) -> PathBuf {
        self.interpreter_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("kiln-interpreter")))
                .unwrap_or_else(|| PathBuf::from("kiln-interpreter"))
        })
    }

    /// How many warm code-interpreter sandboxes to keep: as configured, else
    /// one per 3 GiB of host memory, 1 to 8.
    pub fn interpreter_warm_pool(&self) -> usize {
        self.interpreter_warm_pool.unwrap_or_else(|| {
            let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0);
            ((total_kib >> 20) / 3).clamp(1, 8) as usize
        })
    }

    /// The domain the SDKs are told (`<port>-<id>.<domain>`).
    pub fn domain(&self) -> String {
        self.domain
            .clone()
            .unwrap_or_else(|| format!("localhost:{}", self.listen.port()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kiln.toml"),
            "listen = \"127.0.0.1:4000\"\nmax_timeout_secs = 600\nruntime = \"fake\"\n",
        )
        .unwrap();
        let env: HashMap<&str, String> = HashMap::from([
            ("KILN_DATA_DIR", dir.path().display().to_string()),
            ("KILN_MAX_TIMEOUT", "900".into()),
            ("KILN_API_KEY", "e2b_00112233445566778899".into()),
        ]);
        let get = |k: &str| env.get(k).cloned();
        let c = Config::load_with(&Overrides::default(), get).unwrap();
        assert_eq!(c.listen.port(), 4000);
        assert_eq!(c.max_timeout_secs, 900);
        assert_eq!(c.runtime.default, RuntimeKind::Fake);
        assert_eq!(c.api_key.as_deref(), Some("e2b_00112233445566778899"));
        assert_eq!(c.domain(), "localhost:4000");

        let flags = Overrides {
            listen: Some("127.0.0.1:5000".parse().unwrap()),
            ..Overrides::default()
        };
        assert_eq!(Config::load_with(&flags, get).unwrap().listen.port(), 5000);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let env = |k: &str| (k == "KILN_MAX_TIMEOUT").then(|| "soon".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("KILN_MAX_TIMEOUT"), "{e}");
        let env = |k: &str| (k == "KILN_DEFAULT_TIMEOUT").then(|| "0".to_string());
        assert!(Config::load_with(&Overrides::default(), env).is_err());
        let env = |k: &str| (k == "KILN_CODE_INTERPRETER").then(|| "maybe".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("KILN_CODE_INTERPRETER"), "{e}");
        let env = |k: &str| (k == "KILN_CODE_INTERPRETER").then(|| "false".to_string());
        let c = Config::load_with(&Overrides::default(), env).unwrap();
        assert_eq!(c.code_interpreter, Some(false));
    }

    #[test]
    fn warm_pool_is_bounded() {
        let c = Config::load_with(&Overrides::default(), |_| None).unwrap();
        assert_eq!(c.runtime.container.warm_pool, 64);
        let env = |k: &str| (k == "KILN_WARM_POOL").then(|| "0".to_string());
        assert_eq!(
            Config::load_with(&Overrides::default(), env)
                .unwrap()
                .runtime
                .container
                .warm_pool,
            0
        );
        let env = |k: &str| (k == "KILN_WARM_POOL").then(|| "1001".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("warm_pool"), "{e}");
        assert_eq!(c.runtime.container.ready_pool, 4);
        let env = |k: &str| (k == "KILN_READY_POOL").then(|| "101".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("ready_pool"), "{e}");
    }

    #[test]
    fn runtime_sections_and_the_list_of_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(
            &file,
            "[runtime]\ndefault = \"container\"\nenabled = [\"container\", \"fake\"]\n\
             [runtime.container]\nwarm_pool = 3\n",
        )
        .unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.runtime.default, RuntimeKind::Container);
        assert_eq!(
            c.runtime.enabled,
            Some(vec![RuntimeKind::Container, RuntimeKind::Fake])
        );
        assert_eq!(c.runtime.container.warm_pool, 3);
        std::fs::write(&file, "[runtime.container]\nwarm_pol = 3\n").unwrap();
        let e = Config::from_file(&file).unwrap_err();
        assert!(e.to_string().contains("kiln.toml"), "{e}");
        let env = |k: &str| (k == "KILN_RUNTIMES").then(|| "container, gvisor".to_string());
        let c = Config::load_with(&Overrides::default(), env).unwrap();
        assert_eq!(
            c.runtime.enabled,
            Some(vec![RuntimeKind::Container, RuntimeKind::Gvisor])
        );
        let env = |k: &str| (k == "KILN_RUNTIMES").then(|| "container,bsd-jail".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("bsd-jail"), "{e}");
        let env = |k: &str| match k {
            "KILN_RUNTIMES" => Some("container".to_string()),
            "KILN_RUNTIME" => Some("gvisor".to_string()),
            _ => None,
        };
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("not among the enabled"), "{e}");
    }

    #[test]
    fn limits_from_file_env_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(&file, "[limits]\nsandboxes = 5\nmemory_overcommit = 2\n").unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.limits.sandboxes, Some(5));
        let env = |k: &str| match k {
            "KILN_CONFIG" => Some(file.display().to_string()),
            "KILN_TEAM_VCPUS" => Some("8".to_string()),
            _ => None,
        };
        let c = Config::load_with(&Overrides::default(), env).unwrap();
        let host = HostResources {
            cpus: 2,
            memory_mib: 1000,
            disk_mib: 10_000,
        };
        let a = c.limits.admission(host);
        assert_eq!(a.team_default.sandboxes, 5);
        assert_eq!(a.team_default.vcpus, 8);
        assert_eq!(a.host.vcpus, 128);
        assert_eq!(a.host.memory_mib, 2000);
        assert_eq!(a.team_default.memory_mib, 2000);
        assert_eq!(a.host.disk_mib, 40_000);
        let d = LimitsConfig::default().admission(host);
        assert_eq!(d.team_default.sandboxes, 4000 / 256);
        let env = |k: &str| (k == "KILN_MEMORY_OVERCOMMIT").then(|| "0".to_string());
        let e = Config::load_with(&Overrides::default(), env).unwrap_err();
        assert!(e.to_string().contains("memory_overcommit"), "{e}");
    }

    #[test]
    fn every_env_var_is_documented_once() {
        let names: Vec<_> = ENV_VARS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        let src = include_str!("config.rs");
        for n in names {
            if n != "KILN_LOG" && n != "KILN_CONFIG" && n != "KILN_DATA_DIR" {
                assert!(
                    src.contains(&format!("env(\"{n}\")")),
                    "{n} documented but not read"
                );
            }
        }
    }
}
