//! Base templates: mmdebstrap rootfs builds, cached by recipe hash.
//!
//! [`ensure_base`] returns the base template's root filesystem, building it
//! once with `mmdebstrap` from Debian bookworm. Builds happen in a temporary
//! directory that is renamed into place when complete, so a half-built
//! template is never used; the directory's name carries a hash of the
//! recipe, so changing the recipe builds a new one and an unchanged recipe
//! reuses the cache.
//!
//! Layout: `<data_dir>/templates/base-<hash>/rootfs` (+ `recipe.txt`).

mod shift;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

pub use shift::shift_ownership;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mmdebstrap failed ({status}); last output:\n{tail}")]
    Build { status: String, tail: String },
}

/// A built template on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `base-<hash>`.
    pub id: String,
    /// The root filesystem (use read-only).
    pub rootfs: PathBuf,
}

/// Receives build progress; the CLI renders it.
pub trait Progress: Sync {
    /// A new phase of the build started (e.g. "downloading packages").
    fn phase(&self, message: &str);
    /// One line of the builder's output.
    fn line(&self, _line: &str) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _message: &str) {}
}

/// What the base template is made of. Part of the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub name: String,
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
    /// Shell commands run with the root filesystem's path as `$1`.
    pub customize: Vec<String>,
    /// Host uid/gid the tree is shifted by (the container runtime's
    /// `uid_base`, so that root inside owns it); 0 leaves it root-owned.
    pub uid_offset: u32,
}

/// Bumped when the way a recipe is built changes.
const BUILDER_VERSION: u32 = 1;

impl Recipe {
    /// The base template: bookworm with a shell, Python, Node, git, curl,
    /// sudo and a user `user` (uid 1000, passwordless sudo).
    pub fn base(uid_offset: u32) -> Self {
        Self {
            name: "base".into(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: [
                "bash",
                "coreutils",
                "procps",
                "iproute2",
                "python3",
                "python3-pip",
                "python3-venv",
                "python-is-python3",
                "nodejs",
                "npm",
                "git",
                "curl",
                "ca-certificates",
                "sudo",
                "locales",
                "ncurses-bin",
                "attr",
            ]
            .map(str::to_owned)
            .to_vec(),
            customize: vec![
                r#"chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash user"#
                    .into(),
                r#"echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > "$1/etc/sudoers.d/user" && chmod 0440 "$1/etc/sudoers.d/user""#
                    .into(),
                r#"echo 'LANG=C.UTF-8' > "$1/etc/default/locale""#.into(),
                r#"mkdir -p "$1/usr/local/bin" && touch "$1/usr/local/bin/kiln-agent""#.into(),
            ],
            uid_offset,
        }
    }

    /// The recipe as text; its hash names the cache entry.
    pub fn describe(&self) -> String {
        format!(
            "builder {BUILDER_VERSION}\nname {}\nsuite {}\nvariant {}\npackages {}\nuid_offset {}\n{}",
            self.name,
            self.suite,
            self.variant,
            self.packages.join(","),
            self.uid_offset,
            self.customize
                .iter()
                .map(|c| format!("customize {c}\n"))
                .collect::<String>()
        )
    }

    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.describe().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> TemplateError {
    move |source| TemplateError::Io { context, source }
}

/// The base template for sandboxes whose root maps to host uid `uid_offset`,
/// built if missing. Blocking; the first build takes a minute or two.
pub fn ensure_base(
    data_dir: &Path,
    uid_offset: u32,
    progress: &dyn Progress,
) -> Result<Template, TemplateError> {
    ensure(data_dir, &Recipe::base(uid_offset), progress)
}

/// A template for any recipe, built if missing.
pub fn ensure(
    data_dir: &Path,
    recipe: &Recipe,
    progress: &dyn Progress,
) -> Result<Template, TemplateError> {
    let id = format!("{}-{}", recipe.name, recipe.hash());
    let templates = data_dir.join("templates");
    let dir = templates.join(&id);
    let rootfs = dir.join("rootfs");
    if rootfs.is_dir() {
        return Ok(Template { id, rootfs });
    }
    std::fs::create_dir_all(&templates)
        .map_err(io(format!("failed to create {}", templates.display())))?;
    let tmp = templates.join(format!(".{id}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(format!("failed to create {}", tmp.display())))?;
    let r = build(recipe, &tmp, progress);
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Someone else finished the same build first: use theirs.
        Err(_) if rootfs.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(format!(
                "failed to move the template into {}",
                dir.display()
            ))(e));
        }
    }
    progress.phase("template ready");
    Ok(Template { id, rootfs })
}

fn build(recipe: &Recipe, dir: &Path, progress: &dyn Progress) -> Result<(), TemplateError> {
    let rootfs = dir.join("rootfs");
    std::fs::write(dir.join("recipe.txt"), recipe.describe())
        .map_err(io(format!("failed to write {}", dir.display())))?;
    progress.phase(&format!(
        "building template {} with mmdebstrap ({} packages)",
        recipe.name,
        recipe.packages.len()
    ));
    // The template is what every sandbox sees: it is built with the usual
    // umask 022 whatever the caller's (kilnd's is 077).
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "umask 022 && exec mmdebstrap \"$@\"", "mmdebstrap"]);
    cmd.arg(format!("--variant={}", recipe.variant))
        .arg("--mode=root")
        .arg("--format=directory")
        .arg(format!("--include={}", recipe.packages.join(",")));
    for c in &recipe.customize {
        cmd.arg(format!("--customize-hook={c}"));
    }
    cmd.arg(&recipe.suite).arg(&rootfs);
    for m in mirrors(&recipe.suite) {
        cmd.arg(m);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("failed to run mmdebstrap (is it installed?)".into()))?;
    let mut tail: Vec<String> = Vec::new();
    let stderr = child.stderr.take().expect("stderr is piped");
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(phase) = line.strip_prefix("I: ") {
            progress.phase(phase);
        }
        progress.line(&line);
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(io("failed to wait for mmdebstrap".into()))?;
    if !status.success() {
        return Err(TemplateError::Build {
            status: status.to_string(),
            tail: tail.join("\n"),
        });
    }
    if recipe.uid_offset > 0 {
        progress.phase("shifting ownership into the sandboxes' uid range");
        shift_ownership(&rootfs, recipe.uid_offset)?;
    }
    Ok(())
}

/// Debian mirrors from the host's apt configuration (so that a host with a
/// local mirror uses it), as one-line sources for mmdebstrap. Falls back to
/// mmdebstrap's default when the host names none.
fn mirrors(suite: &str) -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut main = None;
    let mut security = None;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.trim()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace()
                    .find(|w| w.starts_with("http") || w.starts_with("file:"))
                    .unwrap_or("")
            } else {
                continue;
            };
            let uri = uri.trim_end_matches('/');
            if uri.ends_with("/debian-security") {
                security.get_or_insert_with(|| uri.to_owned());
            } else if uri.ends_with("/debian") {
                main.get_or_insert_with(|| uri.to_owned());
            }
        }
    }
    let Some(main) = main else {
        return Vec::new();
    };
    let mut out = vec![
        format!("deb {main} {suite} main"),
        format!("deb {main} {suite}-updates main"),
    ];
    if let Some(sec) = security {
        out.push(format!("deb {sec} {suite}-security main"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_changes_with_the_recipe() {
        let a = Recipe::base(100_000);
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.packages.push("vim".into());
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), Recipe::base(0).hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn base_recipe_has_what_the_issue_asks() {
        let r = Recipe::base(100_000);
        for p in [
            "python3-pip",
            "python3-venv",
            "python-is-python3",
            "nodejs",
            "npm",
            "sudo",
            "ncurses-bin",
            "attr",
            "locales",
        ] {
            assert!(r.packages.iter().any(|x| x == p), "{p} missing");
        }
        assert!(r.describe().contains("NOPASSWD"));
    }

    #[test]
    fn cached_template_is_reused_without_building() {
        let data = std::env::temp_dir().join(format!("kiln-tpl-test-{}", std::process::id()));
        let recipe = Recipe::base(100_000);
        let dir = data
            .join("templates")
            .join(format!("base-{}", recipe.hash()))
            .join("rootfs");
        std::fs::create_dir_all(&dir).unwrap();
        let t = ensure(&data, &recipe, &NoProgress).unwrap();
        assert_eq!(t.rootfs, dir);
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn shift_keeps_setuid_and_is_idempotent() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if nix_is_root() {
            let d = std::env::temp_dir().join(format!("kiln-shift-{}", std::process::id()));
            std::fs::create_dir_all(d.join("bin")).unwrap();
            let f = d.join("bin/sudo");
            std::fs::write(&f, "x").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
            std::os::unix::fs::symlink("sudo", d.join("bin/link")).unwrap();
            shift_ownership(&d, 100_000).unwrap();
            shift_ownership(&d, 100_000).unwrap();
            let m = std::fs::metadata(&f).unwrap();
            assert_eq!((m.uid(), m.gid()), (100_000, 100_000));
            assert_eq!(m.mode() & 0o7777, 0o4755);
            let l = std::fs::symlink_metadata(d.join("bin/link")).unwrap();
            assert_eq!(l.uid(), 100_000);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    fn nix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    }
}
