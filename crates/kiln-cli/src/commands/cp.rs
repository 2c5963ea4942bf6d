//! `kiln cp`: copies files and directory trees between here and a sandbox,
//! streamed through the agent's `/files`, with a progress bar on a terminal
//! for large transfers. A sandbox path is written `<sandbox id>:<path>`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::TryStreamExt;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_api::agent::filesystem::FileType;
use kiln_client::files::Progress;
use kiln_client::{SandboxConn, StartOptions};

use super::connection::{print_json, ClientArgs};
use super::exec::shell_quote;

/// Files moved at the same time.
const PARALLEL_FILES: usize = 8;

/// Transfers at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    /// Source: a local path or <sandbox id>:<path>.
    pub src: String,
    /// Destination: a local path or <sandbox id>:<path>. An existing
    /// directory receives the source under its own name, like cp -r.
    pub dst: String,
    /// Act as this user in the sandbox (owner of new files; default `user`).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Loc {
    Local(PathBuf),
    Remote { id: String, path: String },
}

fn parse_loc(s: &str) -> Loc {
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) && !path.is_empty() {
            return Loc::Remote {
                id: id.to_string(),
                path: path.to_string(),
            };
        }
    }
    Loc::Local(PathBuf::from(s))
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), name)
}

fn base_name(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string()
}

struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(total: u64, quiet: bool) -> Self {
        let bar = ProgressBar::new(total);
        if quiet || total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        } else if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        ) {
            bar.set_style(style);
        }
        Bar { bar }
    }

    /// A callback for one file: adds what it moved to the total.
    fn file(&self, name: &str) -> Progress {
        self.bar.set_message(name.to_string());
        let bar = self.bar.clone();
        let seen = Arc::new(AtomicU64::new(0));
        Arc::new(move |n| {
            let before = seen.swap(n, Ordering::Relaxed);
            bar.inc(n.saturating_sub(before));
        })
    }
}

pub async fn run(args: CpArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let client = client_args.client()?;
    let summary = match (parse_loc(&args.src), parse_loc(&args.dst)) {
        (Loc::Local(src), Loc::Remote { id, path }) => {
            let sbx = client.sandbox(&id).await?.with_user(args.user.clone());
            let r = upload(&sbx, &src, &path, args.quiet).await;
            explain_failure(&client, &id, r).await
        }
        (Loc::Remote { id, path }, Loc::Local(dst)) => {
            let sbx = client.sandbox(&id).await?.with_user(args.user.clone());
            let r = download(&sbx, &path, &dst, args.quiet).await;
            explain_failure(&client, &id, r).await
        }
        (Loc::Local(_), Loc::Local(_)) => bail!(
            "neither {:?} nor {:?} is in a sandbox: write one as <sandbox id>:<path>",
            args.src,
            args.dst
        ),
        (Loc::Remote { .. }, Loc::Remote { .. }) => {
            bail!("copying between two sandboxes is not supported: copy through a local directory")
        }
    }?;
    if client_args.json {
        return print_json(&summary);
    }
    eprintln!(
        "copied {} files, {} directories, {} bytes to {}",
        summary.files, summary.directories, summary.bytes, summary.destination
    );
    Ok(())
}

/// What was copied.
#[derive(Debug, serde::Serialize)]
struct Summary {
    files: usize,
    directories: usize,
    bytes: u64,
    destination: String,
}

/// A copy that broke off because the sandbox died says so.
async fn explain_failure(
    client: &kiln_client::Client,
    id: &str,
    r: anyhow::Result<Summary>,
) -> anyhow::Result<Summary> {
    let e = match r {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    match client.get(id).await {
        Err(gone) if gone.is_not_found() => Err(e.context(format!(
            "sandbox {id} ended during the copy (out of memory? /tmp and /dev/shm count against its memory: copy large files under /home/user)"
        ))),
        _ => Err(e),
    }
}

/// What to send: (local path, remote path) of files and the directories to
/// create, with the modes to set afterwards.
#[derive(Default)]
struct Plan {
    dirs: Vec<String>,
    files: Vec<(PathBuf, String, u64)>,
    modes: Vec<(u32, String)>,
    skipped: Vec<PathBuf>,
}

fn walk(local: &Path, remote: &str, plan: &mut Plan) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::symlink_metadata(local).with_context(|| format!("reading {}", local.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        plan.dirs.push(remote.to_string());
        if mode != 0o755 {
            plan.modes.push((mode, remote.to_string()));
        }
        let mut entries: Vec<_> = std::fs::read_dir(local)
            .with_context(|| format!("reading the directory {}", local.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading the directory {}", local.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                plan.skipped.push(e.path());
                continue;
            };
            walk(&e.path(), &join_remote(remote, name), plan)?;
        }
    } else if meta.is_file() {
        plan.files
            .push((local.to_path_buf(), remote.to_string(), meta.len()));
        if mode != 0o644 {
            plan.modes.push((mode, remote.to_string()));
        }
    } else {
        plan.skipped.push(local.to_path_buf());
    }
    Ok(())
}

async fn remote_is_dir(sbx: &SandboxConn, path: &str) -> anyhow::Result<bool> {
    match sbx.stat(path).await {
        Ok(e) => Ok(e.kind == FileType::Directory),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn upload(sbx: &SandboxConn, src: &Path, dst: &str, quiet: bool) -> anyhow::Result<Summary> {
    if !src.exists() {
        bail!("{} does not exist", src.display());
    }
    let name = src
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let target = if (dst.ends_with('/') || remote_is_dir(sbx, dst).await?) && !name.is_empty() {
        join_remote(dst, &name)
    } else {
        dst.to_string()
    };
    let mut plan = Plan::default();
    walk(src, &target, &mut plan)?;
    let total: u64 = plan.files.iter().map(|f| f.2).sum();
    let bar = Bar::new(total, quiet);
    for d in &plan.dirs {
        sbx.make_dir(d)
            .await
            .with_context(|| format!("creating {d} in the sandbox"))?;
    }
    futures_util::stream::iter(plan.files.iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_FILES, |(local, remote, _)| {
            let progress = bar.file(remote);
            async move {
                sbx.upload(local, remote, Some(progress))
                    .await
                    .map(|_| ())
                    .with_context(|| format!("copying {} to {remote}", local.display()))
            }
        })
        .await?;
    if !plan.modes.is_empty() {
        let cmd = plan
            .modes
            .iter()
            .map(|(m, p)| format!("chmod {m:o} {}", shell_quote(p)))
            .collect::<Vec<_>>()
            .join(" && ");
        let out = sbx
            .run(&StartOptions {
                command: cmd,
                ..Default::default()
            })
            .await?;
        if out.exit.code != 0 {
            eprintln!(
                "warning: could not set file modes: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    bar.bar.finish_and_clear();
    for s in &plan.skipped {
        eprintln!("skipped {} (not a regular file or directory)", s.display());
    }
    Ok(Summary {
        files: plan.files.len(),
        directories: plan.dirs.len(),
        bytes: total,
        destination: format!("{}:{target}", sbx.id),
    })
}

async fn download(
    sbx: &SandboxConn,
    src: &str,
    dst: &Path,
    quiet: bool,
) -> anyhow::Result<Summary> {
    let entry = sbx
        .stat(src)
        .await
        .with_context(|| format!("{src} in sandbox {}", sbx.id))?;
    let target = if dst.is_dir() {
        dst.join(base_name(&entry.path))
    } else {
        dst.to_path_buf()
    };
    // Gather the tree first, for the progress bar's total.
    let mut dirs: Vec<(String, PathBuf, u32)> = Vec::new();
    let mut files: Vec<(String, PathBuf, u32, u64)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    match entry.kind {
        FileType::Directory => {
            let mut todo = vec![(entry.path.clone(), target.clone(), entry.mode)];
            while let Some((rdir, ldir, mode)) = todo.pop() {
                for e in sbx.list_dir(&rdir, 1).await? {
                    let lpath = ldir.join(&e.name);
                    match e.kind {
                        FileType::Directory => todo.push((e.path, lpath, e.mode)),
                        FileType::File if !e.is_symlink => {
                            files.push((e.path, lpath, e.mode, e.size.max(0) as u64))
                        }
                        _ => skipped.push(e.path),
                    }
                }
                dirs.push((rdir, ldir, mode));
            }
        }
        FileType::File => files.push((
            entry.path.clone(),
            target.clone(),
            entry.mode,
            entry.size.max(0) as u64,
        )),
        _ => bail!("{src} is neither a file nor a directory"),
    }
    for (_, l, _) in &dirs {
        std::fs::create_dir_all(l).with_context(|| format!("creating {}", l.display()))?;
    }
    let total: u64 = files.iter().map(|f| f.3).sum();
    let bar = Bar::new(total, quiet);
    futures_util::stream::iter(files.iter().map(Ok))
        .try_for_each_concurrent(PARALLEL_FILES, |(remote, local, mode, _)| {
            let progress = bar.file(remote);
            async move {
                sbx.download(remote, local, Some(progress))
                    .await
                    .with_context(|| format!("copying {remote} to {}", local.display()))?;
                set_mode(local, *mode)
            }
        })
        .await?;
    // Deepest first, so a read-only directory does not block its children.
    for (_, l, mode) in dirs.iter().rev() {
        set_mode(l, *mode)?;
    }
    bar.bar.finish_and_clear();
    for s in &skipped {
        eprintln!("skipped {s} (not a regular file or directory)");
    }
    Ok(Summary {
        files: files.len(),
        directories: dirs.len(),
        bytes: total,
        destination: target.display().to_string(),
    })
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = mode & 0o7777;
    if mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            parse_loc("abc123:/tmp/x"),
            Loc::Remote {
                id: "abc123".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(parse_loc("./a:b"), Loc::Local("./a:b".into()));
        assert_eq!(parse_loc("/tmp/x"), Loc::Local("/tmp/x".into()));
        assert_eq!(parse_loc("abc:"), Loc::Local("abc:".into()));
        assert_eq!(base_name("/a/b/"), "b");
    }
}
