//! The OCI bundle of a sandbox: `config.json` in the sandbox's directory,
//! its root the overlay mounted at `rootfs/`.
//!
//! Inside runsc: the agent as init (root with Docker's default
//! capabilities), the template's users mapped by a user namespace exactly
//! as the container runtime maps them (uid 0 inside ↦ `uid_base` on the
//! host, so the same template rootfs and the same disk images serve both
//! runtimes), the sandbox's network namespace from kiln-net by path, and
//! the limits as `linux.resources` on the cgroup `kiln/<tag>/<id>`. /proc,
//! /sys and /dev are gVisor's own (its kernel's, not the host's); /tmp is
//! a tmpfs in the sandbox's memory (kept by a checkpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// What goes into one sandbox's config.json.
#[derive(Debug, Clone)]
pub struct Bundle<'a> {
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    /// cgroupsPath, `/kiln/<tag>/<id>`.
    pub cgroup: String,
    pub uid_base: u32,
    pub uid_count: u32,
    pub agent_path: &'a str,
    pub agent_args: &'a [String],
    /// Read-only binds: (host path, path inside); the agent first.
    pub binds: Vec<(PathBuf, String)>,
    pub env: &'a BTreeMap<String, String>,
    pub memory_bytes: u64,
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    pub pids_max: u64,
    pub tmp_size_bytes: u64,
}

/// Docker's default capability set (what the container runtime keeps).
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The host cgroup's memory limit for a sandbox of `bytes`: the sentry's
/// own memory above the sandbox's, and room for the agent to see the
/// sandbox over its limit and kill a process before the host's OOM killer
/// would end the whole sandbox.
pub fn host_memory_limit(bytes: u64) -> u64 {
    bytes + (64 << 20) + bytes / 8
}

/// Processes each uid inside may have, for a sandbox whose tasks limit is
/// `pids`: on runsc's ptrace platform each sandbox process costs the sentry
/// host tasks (its stub process and the threads that trace it): 7-8 each
/// for processes that sleep, up to 16 for a fork bomb's, which come and go.
pub fn sandbox_processes(pids: u64) -> u64 {
    (pids / 16).max(64)
}

/// The host cgroup's task limit for a sandbox whose tasks limit is `pids`:
/// the usual two uids inside (root and `user`) each at their
/// [`sandbox_processes`], and the sentry's and gofer's own threads. A bomb
/// forking under more uids at once meets this limit and ends its own
/// sandbox.
pub fn host_pids_limit(pids: u64) -> u64 {
    pids * 2 + 512
}

impl Bundle<'_> {
    pub fn to_json(&self) -> Value {
        let mut env: Vec<String> = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "HOME=/root".into(),
        ];
        for (k, v) in self.env {
            env.retain(|e| !e.starts_with(&format!("{k}=")));
            env.push(format!("{k}={v}"));
        }
        let mut args = vec![self.agent_path.to_owned()];
        args.extend(self.agent_args.iter().cloned());
        // Kept inside by the agent: gVisor's kernel has no OOM killer, and
        // every sandbox process costs the sentry host threads (crate
        // kiln-agent's guard module).
        args.extend([
            "--max-processes".to_owned(),
            sandbox_processes(self.pids_max).to_string(),
            "--memory-limit".to_owned(),
            self.memory_bytes.to_string(),
        ]);
        let nosdx = ["nosuid", "nodev", "noexec"];
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": nosdx}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", format!("size={}", self.tmp_size_bytes)]}),
        ];
        for (host, inside) in &self.binds {
            mounts.push(json!({
                "destination": inside,
                "type": "bind",
                "source": host,
                "options": ["rbind", "ro", "nodev"],
            }));
        }
        let map = json!([{"containerID": 0, "hostID": self.uid_base, "size": self.uid_count}]);
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": env,
                "cwd": "/",
                "capabilities": {
                    "bounding": CAPS,
                    "effective": CAPS,
                    "permitted": CAPS,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576u64, "soft": 1048576u64}],
            },
            "root": {"path": self.rootfs, "readonly": false},
            "hostname": self.id,
            "mounts": mounts,
            "linux": {
                "uidMappings": map,
                "gidMappings": map,
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "user"},
                    {"type": "network", "path": self.netns},
                ],
                "cgroupsPath": self.cgroup,
                "resources": {
                    "memory": {"limit": host_memory_limit(self.memory_bytes)},
                    "cpu": {"quota": self.cpu_quota_us, "period": self.cpu_period_us},
                    "pids": {"limit": host_pids_limit(self.pids_max)},
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_users_joins_the_netns_and_limits() {
        let env = BTreeMap::from([("PATH".to_owned(), "/x".to_owned())]);
        let b = Bundle {
            id: "sb1",
            rootfs: Path::new("/d/sb1/rootfs"),
            netns: Path::new("/run/netns/kiln-k0g-3"),
            cgroup: "/kiln/k0g/sb1".into(),
            uid_base: 100_000,
            uid_count: 65536,
            agent_path: "/usr/local/bin/kiln-agent",
            agent_args: &[],
            binds: vec![("/host/agent".into(), "/usr/local/bin/kiln-agent".into())],
            env: &env,
            memory_bytes: 256 << 20,
            cpu_quota_us: 100_000,
            cpu_period_us: 100_000,
            pids_max: 1024,
            tmp_size_bytes: 256 << 20,
        };
        let v = b.to_json();
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 100_000);
        assert_eq!(v["linux"]["namespaces"][5]["path"], "/run/netns/kiln-k0g-3");
        // The host cgroup holds the sentry too; the agent keeps the
        // sandbox's own limits inside.
        assert_eq!(
            v["linux"]["resources"]["memory"]["limit"],
            host_memory_limit(256 << 20)
        );
        assert!(host_memory_limit(256 << 20) > 256 << 20);
        assert_eq!(
            v["linux"]["resources"]["pids"]["limit"],
            host_pids_limit(1024)
        );
        let args: Vec<&str> = v["process"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "/usr/local/bin/kiln-agent",
                "--max-processes",
                "64",
                "--memory-limit",
                "268435456"
            ]
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/kiln/k0g/sb1");
        let env = v["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e == "PATH=/x"));
        assert_eq!(
            env.iter()
                .filter(|e| e.as_str().unwrap().starts_with("PATH="))
                .count(),
            1
        );
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/usr/local/bin/kiln-agent" && m["type"] == "bind"));
    }
}
