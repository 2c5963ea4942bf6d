//! Cgroups of sandboxes: one enum, a cgroup v1 and a cgroup v2 variant.
//!
//! Layout: v2 `<root>/kiln/<tag>/<id>`; v1 `<root>/<controller>/kiln/<tag>/<id>`
//! for the memory, cpu, cpuacct, pids and freezer controllers.

use std::path::{Path, PathBuf};

use super::HostError;

/// Limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU time per `CPU_PERIOD_US`, in microseconds (vCPUs × period).
    pub cpu_quota_us: u64,
    pub pids_max: u64,
}

pub const CPU_PERIOD_US: u64 = 100_000;

/// What `stats` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub memory_used_bytes: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Clone)]
pub enum Cgroups {
    V1(V1),
    V2(V2),
}

#[derive(Debug, Clone)]
pub struct V1 {
    root: PathBuf,
    tag: String,
}

#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
    tag: String,
}

fn write(path: &Path, value: &str) -> Result<(), HostError> {
    std::fs::write(path, value).map_err(|source| HostError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(path).map_err(HostError::io("create", path))
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `key value` lines (memory.events, cpu.stat, memory.oom_control).
fn keyed(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// rmdir, retrying briefly while the kernel still counts exiting tasks.
fn rmdir(path: &Path) -> Result<(), HostError> {
    for _ in 0..500 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            Err(e) => return Err(HostError::io("remove", path)(e)),
        }
    }
    Err(HostError::Stuck {
        path: path.to_owned(),
        what: "empty",
    })
}

/// How long a freeze or thaw may take before it is given up.
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

/// The devices a sandbox may open: those of its minimal /dev (null, zero,
/// full, random, urandom, tty, ptmx and its own devpts' ptys).
pub const ALLOWED_DEVICES: [&str; 8] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

impl Cgroups {
    /// v2 if `/sys/fs/cgroup` is a cgroup2 mount, else v1 (which needs the
    /// memory, cpu, pids, freezer and devices hierarchies).
    pub fn detect(tag: &str) -> Result<Self, HostError> {
        let root = PathBuf::from("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Ok(Self::V2(V2::new(root, tag)));
        }
        for c in ["memory", "cpu", "pids", "freezer", "devices"] {
            if !root.join(c).join("cgroup.procs").exists() {
                return Err(HostError::Unsupported(format!(
                    "cgroup v1 controller {c} is not mounted under /sys/fs/cgroup"
                )));
            }
        }
        Ok(Self::V1(V1 {
            root,
            tag: tag.to_owned(),
        }))
    }

    pub fn version(&self) -> u8 {
        match self {
            Self::V1(_) => 1,
            Self::V2(_) => 2,
        }
    }

    /// Creates the sandbox's cgroup(s) with their limits.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<(), HostError> {
        self.create_dirs(id)?;
        self.set_limits(id, limits)
    }

    /// Creates the cgroup(s), without limits yet.
    pub fn create_dirs(&self, id: &str) -> Result<(), HostError> {
        match self {
            Self::V1(v) => v.create_dirs(id),
            Self::V2(v) => v.create_dirs(id),
        }
    }

    /// Writes the limits (of a cgroup made by `create_dirs`).
    pub fn set_limits(&self, id: &str, limits: &Limits) -> Result<(), HostError> {
        match self {
            Self::V1(v) => v.set_limits(id, limits),
            Self::V2(v) => v.set_limits(id, limits),
        }
    }

    /// Lets the sandbox's processes open only [`ALLOWED_DEVICES`] (cgroup
    /// v1's devices controller; on v2 a BPF program, see
    /// [`super::devfilter`]). Done once the init has mounted its disks
    /// (which needs the loop devices) and exec'd the agent, before the
    /// sandbox runs anything else. A v2 host whose kernel cannot load the
    /// program filters nothing: [`Cgroups::filters_devices`] says so.
    pub fn restrict_devices(&self, id: &str) -> Result<(), HostError> {
        match self {
            Self::V1(v) => {
                let dir = v.root.join("devices").join(v.rel(id));
                write(&dir.join("devices.deny"), "a")?;
                for rule in ALLOWED_DEVICES {
                    write(&dir.join("devices.allow"), rule)?;
                }
                Ok(())
            }
            Self::V2(v) if super::devfilter::available() => super::devfilter::attach(&v.dir(id)),
            Self::V2(_) => Ok(()),
        }
    }

    /// Whether [`Cgroups::restrict_devices`] filters anything here.
    pub fn filters_devices(&self) -> bool {
        match self {
            Self::V1(_) => true,
            Self::V2(_) => super::devfilter::available(),
        }
    }

    /// One directory that exists exactly as long as the sandbox's cgroups
    /// do (the memory controller's on v1).
    pub fn dir(&self, id: &str) -> PathBuf {
        match self {
            Self::V1(v) => v.root.join("memory").join(v.rel(id)),
            Self::V2(v) => v.dir(id),
        }
    }

    /// The files a process writes its pid to, to join the sandbox's cgroups.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Self::V1(v) => v
                .dirs(id)
                .into_iter()
                .map(|d| d.join("cgroup.procs"))
                .collect(),
            Self::V2(v) => vec![v.dir(id).join("cgroup.procs")],
        }
    }

    pub fn exists(&self, id: &str) -> bool {
        match self {
            Self::V1(v) => v.root.join("memory").join(v.rel(id)).exists(),
            Self::V2(v) => v.dir(id).exists(),
        }
    }

    pub fn pids(&self, id: &str) -> Vec<i32> {
        match self {
            Self::V1(v) => read_pids(&v.root.join("pids").join(v.rel(id)).join("cgroup.procs")),
            Self::V2(v) => read_pids(&v.dir(id).join("cgroup.procs")),
        }
    }

    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), HostError> {
        let r = self.set_frozen(id, frozen);
        if r.is_err() && frozen {
            // Half frozen is worse than not: some processes would hang
            // while the rest run. Give the freeze up.
            let _ = self.set_frozen(id, false);
        }
        r
    }

    /// Asks for the state and waits (up to [`FREEZE_WAIT`]) until the
    /// kernel reports it. Freezing is asynchronous, and under load slow: a
    /// task in the middle of a fork or an exec is frozen only once it
    /// leaves the kernel, so the request is repeated every 50 ms (on v1
    /// a repeated write retries the tasks not frozen yet).
    fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), HostError> {
        let (file, value, done): (PathBuf, &str, Box<dyn Fn() -> bool>) = match self {
            Self::V1(v) => {
                let state = v.root.join("freezer").join(v.rel(id)).join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                let check = state.clone();
                let done =
                    move || std::fs::read_to_string(&check).unwrap_or_default().trim() == want;
                (state, want, Box::new(done))
            }
            Self::V2(v) => {
                let dir = v.dir(id);
                let events = dir.join("cgroup.events");
                let done = move || (keyed(&events, "frozen") == 1) == frozen;
                (
                    dir.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    Box::new(done),
                )
            }
        };
        let started = std::time::Instant::now();
        let mut asked = None::<std::time::Instant>;
        loop {
            if asked.is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(50)) {
                write(&file, value)?;
                asked = Some(std::time::Instant::now());
            }
            if done() {
                return Ok(());
            }
            if started.elapsed() > FREEZE_WAIT {
                return Err(HostError::Stuck {
                    path: file,
                    what: if frozen { "freeze" } else { "thaw" },
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Whether the cgroup's processes are frozen (a paused sandbox found
    /// again after a restart of the server).
    pub fn is_frozen(&self, id: &str) -> bool {
        match self {
            Self::V1(v) => {
                let state = v.root.join("freezer").join(v.rel(id)).join("freezer.state");
                std::fs::read_to_string(state).is_ok_and(|s| s.trim() == "FROZEN")
            }
            Self::V2(v) => keyed(&v.dir(id).join("cgroup.events"), "frozen") == 1,
        }
    }

    /// SIGKILLs every process in the cgroup until it is empty, then removes
    /// it. Frozen processes are thawed first so they can die.
    pub fn kill_and_remove(&self, id: &str) -> Result<(), HostError> {
        if !self.exists(id) {
            return Ok(());
        }
        if let Self::V2(v) = self {
            let kill = v.dir(id).join("cgroup.kill");
            if kill.exists() {
                let _ = write(&kill, "1");
            }
        }
        let _ = self.freeze(id, false);
        for _ in 0..2500 {
            let pids = self.pids(id);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY-free: nix::sys::signal::kill is a safe wrapper.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        match self {
            Self::V1(v) => {
                for d in v.dirs(id) {
                    rmdir(&d)?;
                }
                Ok(())
            }
            Self::V2(v) => rmdir(&v.dir(id)),
        }
    }

    pub fn stats(&self, id: &str) -> CgroupStats {
        match self {
            Self::V1(v) => {
                let mem = v.root.join("memory").join(v.rel(id));
                CgroupStats {
                    cpu_usage_usec: read_u64(
                        &v.root.join("cpuacct").join(v.rel(id)).join("cpuacct.usage"),
                    ) / 1000,
                    memory_used_bytes: read_u64(&mem.join("memory.usage_in_bytes")),
                    oom_kills: keyed(&mem.join("memory.oom_control"), "oom_kill"),
                }
            }
            Self::V2(v) => {
                let dir = v.dir(id);
                CgroupStats {
                    cpu_usage_usec: keyed(&dir.join("cpu.stat"), "usage_usec"),
                    memory_used_bytes: read_u64(&dir.join("memory.current")),
                    oom_kills: keyed(&dir.join("memory.events"), "oom_kill"),
                }
            }
        }
    }

    /// Removes `kiln/<tag>` (and `kiln` if empty); errors are ignored, a
    /// sandbox of another tag may still use them.
    pub fn remove_parents(&self) {
        let tops: Vec<PathBuf> = match self {
            Self::V1(v) => V1_CONTROLLERS.iter().map(|c| v.root.join(c)).collect(),
            Self::V2(v) => vec![v.root.clone()],
        };
        let tag = match self {
            Self::V1(v) => &v.tag,
            Self::V2(v) => &v.tag,
        };
        for top in tops {
            let _ = std::fs::remove_dir(top.join("kiln").join(tag));
            let _ = std::fs::remove_dir(top.join("kiln"));
        }
    }

    /// Ids of every sandbox cgroup of this tag on the host.
    pub fn list(&self) -> Vec<String> {
        let parent = match self {
            Self::V1(v) => v.root.join("memory").join("kiln").join(&v.tag),
            Self::V2(v) => v.root.join("kiln").join(&v.tag),
        };
        let Ok(rd) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

impl V1 {
    fn rel(&self, id: &str) -> PathBuf {
        Path::new("kiln").join(&self.tag).join(id)
    }

    /// One directory per controller (cpuacct only where it is its own mount).
    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        V1_CONTROLLERS
            .iter()
            .map(|c| self.root.join(c))
            .filter(|p| p.join("cgroup.procs").exists())
            .map(|p| p.join(self.rel(id)))
            .collect::<Vec<_>>()
            .into_iter()
            .fold(Vec::new(), |mut acc, p| {
                // cpu and cpuacct are often the same hierarchy (cpu,cpuacct).
                let canon = std::fs::canonicalize(p.parent().unwrap_or(&p)).ok();
                if !acc.iter().any(|(c, _)| c == &canon && canon.is_some()) {
                    acc.push((canon, p));
                }
                acc
            })
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn create_dirs(&self, id: &str) -> Result<(), HostError> {
        for d in self.dirs(id) {
            mkdir(&d)?;
        }
        Ok(())
    }

    fn set_limits(&self, id: &str, l: &Limits) -> Result<(), HostError> {
        let mem = self.root.join("memory").join(self.rel(id));
        write(
            &mem.join("memory.limit_in_bytes"),
            &l.memory_bytes.to_string(),
        )?;
        // No swap: memory+swap limited to the same amount.
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &l.memory_bytes.to_string())?;
        }
        let _ = write(&mem.join("memory.swappiness"), "0");
        let cpu = self.root.join("cpu").join(self.rel(id));
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &l.cpu_quota_us.to_string())?;
        let pids = self.root.join("pids").join(self.rel(id));
        write(&pids.join("pids.max"), &l.pids_max.to_string())?;
        Ok(())
    }
}

impl V2 {
    pub fn new(root: PathBuf, tag: &str) -> Self {
        Self {
            root,
            tag: tag.to_owned(),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("kiln").join(&self.tag).join(id)
    }

    fn create_dirs(&self, id: &str) -> Result<(), HostError> {
        // Delegate the controllers down to the sandbox's level.
        let levels = [
            self.root.clone(),
            self.root.join("kiln"),
            self.root.join("kiln").join(&self.tag),
        ];
        for (i, dir) in levels.iter().enumerate() {
            if i > 0 {
                mkdir(dir)?;
            }
            let control = dir.join("cgroup.subtree_control");
            let current = std::fs::read_to_string(&control).unwrap_or_default();
            if !["memory", "cpu", "pids"]
                .iter()
                .all(|c| current.split_whitespace().any(|x| x == *c))
            {
                write(&control, "+memory +cpu +pids")?;
            }
        }
        mkdir(&self.dir(id))
    }

    fn set_limits(&self, id: &str, l: &Limits) -> Result<(), HostError> {
        let dir = self.dir(id);
        write(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
        write(
            &dir.join("cpu.max"),
            &format!("{} {}", l.cpu_quota_us, CPU_PERIOD_US),
        )?;
        write(&dir.join("pids.max"), &l.pids_max.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn v2_writes_limits_and_delegates_controllers() {
        let root = tempdir("v2");
        // Pretend swap accounting exists at the sandbox level.
        let sb = root.join("kiln/t1/sb1");
        std::fs::create_dir_all(&sb).unwrap();
        std::fs::write(sb.join("memory.swap.max"), "max").unwrap();
        let cg = Cgroups::V2(V2::new(root.clone(), "t1"));
        let limits = Limits {
            memory_bytes: 512 << 20,
            cpu_quota_us: 200_000,
            pids_max: 1024,
        };
        cg.create("sb1", &limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("kiln/t1/sb1/memory.max"), "536870912");
        assert_eq!(read("kiln/t1/sb1/memory.swap.max"), "0");
        assert_eq!(read("kiln/t1/sb1/cpu.max"), "200000 100000");
        assert_eq!(read("kiln/t1/sb1/pids.max"), "1024");
        for level in ["", "kiln/", "kiln/t1/"] {
            assert_eq!(
                read(&format!("{level}cgroup.subtree_control")),
                "+memory +cpu +pids"
            );
        }
        assert_eq!(
            cg.procs_files("sb1"),
            vec![root.join("kiln/t1/sb1/cgroup.procs")]
        );
        assert_eq!(cg.list(), vec!["sb1".to_owned()]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_stats_parse_keyed_files() {
        let root = tempdir("v2stats");
        let sb = root.join("kiln/t2/x");
        std::fs::create_dir_all(&sb).unwrap();
        std::fs::write(sb.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        std::fs::write(sb.join("memory.current"), "4096\n").unwrap();
        std::fs::write(sb.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        let cg = Cgroups::V2(V2::new(root.clone(), "t2"));
        assert_eq!(
            cg.stats("x"),
            CgroupStats {
                cpu_usage_usec: 1234,
                memory_used_bytes: 4096,
                oom_kills: 1
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
