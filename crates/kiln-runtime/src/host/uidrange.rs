//! Host uid ranges, one per running sandbox: a sandbox's ids 0..65535 map to
//! a range no other sandbox, host user or other Kiln on the host has, so a
//! process or file that escaped two sandboxes is owned by two different
//! uids, and no host user's subordinate ids (/etc/subuid) name a sandbox's.
//!
//! A claim is a file `<slot>` in a host-wide directory naming a *holder*:
//! a path that exists exactly as long as the range is used (the sandbox's
//! cgroup). A slot whose holder is gone is free, so a crash never leaks a
//! range and nothing needs recovering; claims are serialised by a lock on
//! the directory, so two kilnds never take one slot.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::HostError;

/// Ids per range (a template's 0..65535, `nobody` included).
pub const SIZE: u32 = 65536;
/// The first range's first uid: above systemd's container ranges
/// (0x80000..0x6FFFFFFF) and the namespace owners
/// (`container::spawn::OWNER_UID_BASE`).
pub const FIRST: u32 = 0x7100_0000;
/// How many ranges there are: up to systemd's "foreign" range
/// (0x7FFE0000), below the ids tools read as negative.
pub const SLOTS: u32 = (0x7FFE_0000 - FIRST) / SIZE;
/// One past the last uid a range may hold.
pub const END: u32 = FIRST + SLOTS * SIZE;
// Ranges stay clear of the namespace owners (pids are at most 2^22).
const _: () = assert!(SLOTS > 1000 && FIRST > crate::container::spawn::OWNER_UID_BASE + (1 << 22));

/// Where claims are kept: host-wide, gone at reboot with the sandboxes.
pub const DEFAULT_DIR: &str = "/run/kiln/uid-ranges";

/// Whether `uid` is in some sandbox's range (for leak checks).
pub fn is_sandbox_uid(uid: u32) -> bool {
    (FIRST..END).contains(&uid)
}

pub struct UidRanges {
    dir: PathBuf,
    /// Slots that overlap ids the host hands out (passwd, group, subuid,
    /// subgid), read at start.
    reserved: Vec<bool>,
}

impl UidRanges {
    /// Claims kept in `dir` (made 0700 if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, HostError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(HostError::io("create", &dir))?;
        Ok(Self {
            dir,
            reserved: reserved_slots(&host_id_ranges()),
        })
    }

    /// Claims a free range for as long as `holder` exists; returns its
    /// first uid.
    pub fn claim(&self, holder: &Path) -> Result<u32, HostError> {
        let _lock = self.lock()?;
        let start = random_u32() % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            if self.reserved[slot as usize] {
                continue;
            }
            let path = self.dir.join(slot.to_string());
            match std::fs::read_to_string(&path) {
                Ok(other) if Path::new(&other).exists() => continue,
                Ok(_) => {} // its holder is gone: free
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::io("read", &path)(e)),
            }
            let tmp = self.dir.join(format!(".{slot}.new"));
            let written = File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(holder.as_os_str().as_encoded_bytes()));
            written.map_err(HostError::io("write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(HostError::io("rename to", &path))?;
            return Ok(FIRST + slot * SIZE);
        }
        Err(HostError::Unsupported(format!(
            "no free host uid range for a sandbox ({SLOTS} ranges, all in use or reserved)"
        )))
    }

    /// Gives back the range at `base` if `holder` still holds it.
    pub fn release(&self, base: u32, holder: &Path) {
        if !is_sandbox_uid(base) {
            return;
        }
        let Ok(_lock) = self.lock() else { return };
        let path = self.dir.join(((base - FIRST) / SIZE).to_string());
        if std::fs::read(&path).ok().as_deref() == Some(holder.as_os_str().as_encoded_bytes()) {
            let _ = std::fs::remove_file(&path);
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, HostError> {
        let path = self.dir.join(".lock");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(HostError::io("open", &path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| HostError::io("lock", &path)(e.into()))
    }
}

/// Which slots overlap any of `ids` (first, count).
fn reserved_slots(ids: &[(u32, u32)]) -> Vec<bool> {
    let mut reserved = vec![false; SLOTS as usize];
    for &(first, count) in ids {
        if count == 0 {
            continue;
        }
        let last = first.saturating_add(count - 1);
        if last < FIRST || first >= END {
            continue;
        }
        let a = (first.max(FIRST) - FIRST) / SIZE;
        let b = (last.min(END - 1) - FIRST) / SIZE;
        for slot in a..=b {
            reserved[slot as usize] = true;
        }
    }
    reserved
}

/// Ids the host hands out: users and groups, and every subordinate range
/// of /etc/subuid and /etc/subgid, as (first, count).
fn host_id_ranges() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for file in ["/etc/passwd", "/etc/group"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            if let Some(Ok(id)) = line.split(':').nth(2).map(str::parse::<u32>) {
                out.push((id, 1));
            }
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(Ok(first)), Some(Ok(count))) =
                (f.get(1).map(|s| s.parse()), f.get(2).map(|s| s.parse()))
            {
                out.push((first, count));
            }
        }
    }
    out
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_subordinate_ids_are_never_a_sandboxs() {
        // A host user's subuid range straddling slots 2 and 3, a user uid
        // inside slot 10, and ids below and above the ranges.
        let r = reserved_slots(&[
            (FIRST + 2 * SIZE + 5, SIZE),
            (FIRST + 10 * SIZE + 1000, 1),
            (100_000, 65536),
            (END, 10),
            (FIRST, 0),
        ]);
        let taken: Vec<usize> = (0..r.len()).filter(|s| r[*s]).collect();
        assert_eq!(taken, vec![2, 3, 10]);
        let dir = tempfile::tempdir().unwrap();
        let ranges = UidRanges {
            dir: dir.path().to_owned(),
            reserved: (0..SLOTS).map(|s| s != 7).collect(),
        };
        assert_eq!(ranges.claim(dir.path()).unwrap(), FIRST + 7 * SIZE);
        assert!(
            ranges.claim(dir.path()).is_err(),
            "a reserved or held range was given"
        );
    }

    #[test]
    fn ranges_are_unique_while_held_and_free_once_the_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = UidRanges::new(dir.path().join("claims")).unwrap();
        let holders: Vec<PathBuf> = (0..50)
            .map(|i| {
                let p = dir.path().join(format!("holder-{i}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        let mut bases: Vec<u32> = holders.iter().map(|h| ranges.claim(h).unwrap()).collect();
        for b in &bases {
            assert!(is_sandbox_uid(*b) && is_sandbox_uid(b + SIZE - 1));
            assert_eq!((b - FIRST) % SIZE, 0);
        }
        bases.sort_unstable();
        bases.dedup();
        assert_eq!(bases.len(), holders.len(), "a range was given twice");

        // A holder that vanished (a crash) frees its range; a release by
        // someone else's holder frees nothing.
        let base = ranges.claim(&holders[0]).unwrap();
        let slot = dir
            .path()
            .join("claims")
            .join(((base - FIRST) / SIZE).to_string());
        ranges.release(base, &holders[1]);
        assert!(slot.exists());
        std::fs::remove_dir(&holders[0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&slot).unwrap(),
            holders[0].to_str().unwrap()
        );
        let again = UidRanges {
            dir: dir.path().join("claims"),
            reserved: (0..SLOTS).map(|s| s != (base - FIRST) / SIZE).collect(),
        };
        assert_eq!(
            again.claim(&holders[2]).unwrap(),
            base,
            "a dead holder's range is free"
        );
        ranges.release(base, &holders[2]);
        assert!(!slot.exists());
    }
}
