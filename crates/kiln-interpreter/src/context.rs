//! Stateful contexts: one kernel each, created, listed, restarted and removed
//! by id, plus one default context per language.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use jupyter_zmq_client::KernelspecDir;
use serde::Serialize;

use crate::kernel::{Kernel, KernelError};
use crate::kernelspec::{normalize_language, Catalog, KNOWN_LANGUAGES};
use crate::language::init_code;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("unsupported language '{language}'; available: {available}")]
    UnknownLanguage { language: String, available: String },
    #[error("no kernel for language '{language}' is installed; available: {available}")]
    NotInstalled { language: String, available: String },
    #[error("context {0} not found")]
    NotFound(String),
    #[error("working directory {0} does not exist or is not a directory")]
    BadCwd(PathBuf),
    #[error("working directory {path} is not accessible to the interpreter's user")]
    CwdNotAccessible {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to start the {language} kernel")]
    Start {
        language: String,
        #[source]
        source: KernelError,
    },
}

/// What the SDK sees of a context.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

pub struct Context {
    pub info: ContextInfo,
    cwd: PathBuf,
    spec: KernelspecDir,
    runtime_dir: PathBuf,
    /// `None` until started: default contexts exist from the start and get
    /// their kernel on first use.
    kernel: Mutex<Option<Arc<Kernel>>>,
    /// Held while the kernel is being started, so that it starts once.
    start_lock: tokio::sync::Mutex<()>,
    /// Held for the whole of an execution: a kernel runs one cell at a time.
    pub exec_lock: Arc<tokio::sync::Mutex<()>>,
    /// Creation order, which the listing keeps (as E2B's does).
    seq: u64,
}

impl Context {
    /// The running kernel, if the context has been started.
    pub fn kernel(&self) -> Option<Arc<Kernel>> {
        self.kernel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_kernel(&self, kernel: Kernel) -> Option<Arc<Kernel>> {
        self.kernel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Arc::new(kernel))
    }

    /// Starts a fresh kernel in place of the current one (same id, cwd and
    /// kernelspec). The caller holds `exec_lock`.
    pub async fn respawn(&self) -> Result<(), KernelError> {
        let kernel = start_kernel(
            &self.spec,
            &self.info.language,
            &self.cwd,
            &self.runtime_dir,
        )
        .await?;
        if let Some(old) = self.set_kernel(kernel) {
            old.kill();
        }
        Ok(())
    }
}

/// How many times a kernel that exits while starting is started again.
/// Its ports are picked free but bound only once the kernel runs, so another
/// process may take one first (the kernel then exits with "Address already
/// in use"); a kernel that fails for good fails every try and says why.
const START_TRIES: usize = 3;

/// Starts a kernel and runs its language's start-up code in it.
async fn start_kernel(
    spec: &KernelspecDir,
    language: &str,
    cwd: &Path,
    runtime_dir: &Path,
) -> Result<Kernel, KernelError> {
    let mut tries = 1;
    let kernel = loop {
        match Kernel::start(spec, cwd, runtime_dir).await {
            Err(e @ KernelError::ExitedEarly { .. }) if tries < START_TRIES => {
                tracing::warn!("{e}; starting it again");
                tries += 1;
            }
            other => break other?,
        }
    };
    if let Some(code) = init_code(language) {
        crate::execute::run_silent(&kernel, code).await;
    }
    Ok(kernel)
}

/// Kernels started ahead of need in the default working directory, one per
/// language asked for: creating a context there takes one instead of waiting
/// for a kernel to start (~0.4 s for ipykernel).
struct Spares {
    languages: Vec<String>,
    kernels: Mutex<HashMap<String, Kernel>>,
    /// Languages whose spare is being started.
    starting: Mutex<std::collections::HashSet<String>>,
    cwd: PathBuf,
    runtime_dir: PathBuf,
}

impl Spares {
    fn take(&self, language: &str) -> Option<Kernel> {
        let kernel = self
            .kernels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(language)?;
        kernel.death().is_none().then_some(kernel)
    }

    /// Starts a spare for `language` in the background, if it keeps spares.
    fn refill(self: &Arc<Self>, language: &str, spec: &KernelspecDir) {
        if !self.languages.iter().any(|l| l == language)
            || self
                .kernels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(language)
            || !self
                .starting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(language.to_owned())
        {
            return;
        }
        let (spares, language, spec) = (self.clone(), language.to_owned(), spec.clone());
        tokio::spawn(async move {
            let started = start_kernel(&spec, &language, &spares.cwd, &spares.runtime_dir).await;
            spares
                .starting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&language);
            match started {
                Ok(kernel) => {
                    spares
                        .kernels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(language, kernel);
                }
                Err(e) => tracing::warn!("failed to start a spare {language} kernel: {e}"),
            }
        });
    }
}

pub struct Registry {
    catalog: Catalog,
    spares: Arc<Spares>,
    default_cwd: PathBuf,
    runtime_dir: PathBuf,
    contexts: RwLock<HashMap<String, Arc<Context>>>,
    next_seq: AtomicU64,
    /// language → id of its default context.
    defaults: tokio::sync::Mutex<HashMap<String, String>>,
    /// The sandbox's env vars, for every kernel (off until
    /// [`Registry::reading_sandbox_env`]).
    pub sandbox_env: crate::envs::SandboxEnv,
}

impl Registry {
    pub fn new(catalog: Catalog, default_cwd: PathBuf, runtime_dir: PathBuf) -> Self {
        Registry {
            catalog,
            spares: Arc::new(Spares {
                languages: Vec::new(),
                kernels: Mutex::default(),
                starting: Mutex::default(),
                cwd: default_cwd.clone(),
                runtime_dir: runtime_dir.clone(),
            }),
            default_cwd,
            runtime_dir,
            contexts: RwLock::default(),
            next_seq: AtomicU64::new(0),
            defaults: tokio::sync::Mutex::default(),
            sandbox_env: crate::envs::SandboxEnv::off(),
        }
    }

    /// Gives every kernel the sandbox's env vars, read through `env`.
    pub fn reading_sandbox_env(mut self, env: crate::envs::SandboxEnv) -> Self {
        self.sandbox_env = env;
        self
    }

    /// Keeps a spare kernel ready for each of `languages` (normalized names);
    /// call once, inside the runtime, before serving.
    pub fn keep_spares(mut self, languages: &[String]) -> Self {
        let languages: Vec<String> = languages
            .iter()
            .map(|l| normalize_language(Some(l)))
            .collect();
        self.spares = Arc::new(Spares {
            languages: languages.clone(),
            kernels: Mutex::default(),
            starting: Mutex::default(),
            cwd: self.default_cwd.clone(),
            runtime_dir: self.runtime_dir.clone(),
        });
        for language in &languages {
            match self.spec_for(language) {
                Ok((language, spec)) => self.spares.refill(&language, &spec),
                Err(e) => tracing::warn!("no spare kernels: {e}"),
            }
        }
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn spec_for(&self, language: &str) -> Result<(String, KernelspecDir), ContextError> {
        let language = normalize_language(Some(language));
        // TypeScript runs in the JavaScript kernel when no TypeScript kernel is installed.
        let spec = self.catalog.get(&language).or_else(|| {
            (language == "typescript")
                .then(|| self.catalog.get("javascript"))
                .flatten()
        });
        match spec {
            Some(spec) => Ok((language, spec.clone())),
            None => {
                let installed = self.catalog.languages();
                let available = if installed.is_empty() {
                    "no language (no Jupyter kernel is installed)".to_owned()
                } else {
                    installed.join(", ")
                };
                if KNOWN_LANGUAGES.contains(&language.as_str()) {
                    Err(ContextError::NotInstalled {
                        language,
                        available,
                    })
                } else {
                    Err(ContextError::UnknownLanguage {
                        language,
                        available,
                    })
                }
            }
        }
    }

    /// Starts a kernel for `language` in `cwd` and registers it.
    pub async fn create(
        &self,
        language: Option<&str>,
        cwd: Option<&str>,
    ) -> Result<ContextInfo, ContextError> {
        let (language, spec) = self.spec_for(&normalize_language(language))?;
        let cwd = match cwd {
            Some(c) if !c.trim().is_empty() => PathBuf::from(c),
            _ => self.default_cwd.clone(),
        };
        check_cwd(&cwd).await?;
        let context = self.register(language, spec, cwd);
        if let Err(e) = self.ensure_started(&context).await {
            self.contexts
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&context.info.id);
            return Err(e);
        }
        let info = context.info.clone();
        tracing::info!(id = %info.id, language = %info.language, cwd = %info.cwd, "context created");
        Ok(info)
    }

    /// Adds a context whose kernel is not started yet.
    fn register(&self, language: String, spec: KernelspecDir, cwd: PathBuf) -> Arc<Context> {
        let info = ContextInfo {
            id: uuid::Uuid::new_v4().to_string(),
            language,
            cwd: cwd.display().to_string(),
        };
        let context = Arc::new(Context {
            info: info.clone(),
            cwd,
            spec,
            runtime_dir: self.runtime_dir.clone(),
            kernel: Mutex::new(None),
            start_lock: tokio::sync::Mutex::new(()),
            exec_lock: Arc::default(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        });
        self.contexts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id, context.clone());
        context
    }

    /// Starts the context's kernel unless it runs: a spare one when the
    /// context is in the default working directory and one is ready.
    pub async fn ensure_started(&self, context: &Context) -> Result<(), ContextError> {
        if context.kernel().is_some() {
            return Ok(());
        }
        let _starting = context.start_lock.lock().await;
        if context.kernel().is_some() {
            return Ok(());
        }
        let language = context.info.language.as_str();
        let in_default_cwd = context.cwd == self.default_cwd;
        let kernel = match in_default_cwd.then(|| self.spares.take(language)).flatten() {
            Some(kernel) => kernel,
            None => start_kernel(&context.spec, language, &context.cwd, &self.runtime_dir)
                .await
                .map_err(|source| ContextError::Start {
                    language: language.to_owned(),
                    source,
                })?,
        };
        if in_default_cwd {
            self.spares.refill(language, &context.spec);
        }
        context.set_kernel(kernel);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Context>, ContextError> {
        self.contexts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ContextError::NotFound(id.to_owned()))
    }

    /// Registers the default contexts of `languages` (those with a kernel
    /// installed), unstarted, so that they are listed from the start.
    pub async fn declare_defaults(&self, languages: &[&str]) {
        for language in languages {
            if let Err(e) = self.default_context(Some(language)).await {
                tracing::debug!("no default {language} context: {e}");
            }
        }
    }

    /// The default context of `language`, and whether this call added it.
    async fn default_context(
        &self,
        language: Option<&str>,
    ) -> Result<(Arc<Context>, bool), ContextError> {
        let (language, spec) = self.spec_for(&normalize_language(language))?;
        let mut defaults = self.defaults.lock().await;
        if let Some(context) = defaults.get(&language).and_then(|id| self.get(id).ok()) {
            return Ok((context, false));
        }
        let context = self.register(language.clone(), spec, self.default_cwd.clone());
        defaults.insert(language, context.info.id.clone());
        Ok((context, true))
    }

    /// The default context of `language`, started on first use. One added
    /// here whose kernel fails to start is not kept (a declared one stays
    /// listed, as its language's default).
    pub async fn default_for(&self, language: Option<&str>) -> Result<Arc<Context>, ContextError> {
        let (context, added) = self.default_context(language).await?;
        if let Err(e) = self.ensure_started(&context).await {
            if added {
                let _ = self.remove(&context.info.id).await;
            }
            return Err(e);
        }
        Ok(context)
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<Arc<Context>> = self
            .contexts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        list.sort_by_key(|c| c.seq);
        list.into_iter().map(|c| c.info.clone()).collect()
    }

    /// Replaces the context's kernel with a fresh one: its state is gone, its
    /// id and working directory stay. A running cell ends with an error.
    pub async fn restart(&self, id: &str) -> Result<(), ContextError> {
        let context = self.get(id)?;
        if let Some(old) = context.kernel() {
            old.shutdown().await;
        }
        let _running = context.exec_lock.lock().await;
        context
            .respawn()
            .await
            .map_err(|source| ContextError::Start {
                language: context.info.language.clone(),
                source,
            })?;
        tracing::info!(%id, "context restarted");
        Ok(())
    }

    /// Stops the context's kernel and forgets it.
    pub async fn remove(&self, id: &str) -> Result<(), ContextError> {
        let context = self
            .contexts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| ContextError::NotFound(id.to_owned()))?;
        self.defaults.lock().await.retain(|_, v| v != id);
        if let Some(kernel) = context.kernel() {
            kernel.shutdown().await;
        }
        tracing::info!(%id, "context removed");
        Ok(())
    }

    /// Stops every kernel (on server shutdown).
    pub async fn shutdown_all(&self) {
        let all: Vec<Arc<Context>> = self
            .contexts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for kernel in all.iter().filter_map(|c| c.kernel()) {
            kernel.shutdown().await;
        }
        let spares: Vec<Kernel> = self
            .spares
            .kernels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, k)| k)
            .collect();
        for kernel in spares {
            kernel.shutdown().await;
        }
    }
}

/// A context's working directory must exist and be enterable by the
/// interpreter's user (its kernels run as that user).
async fn check_cwd(cwd: &Path) -> Result<(), ContextError> {
    if !tokio::fs::metadata(cwd)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(ContextError::BadCwd(cwd.to_owned()));
    }
    nix::unistd::access(cwd, nix::unistd::AccessFlags::X_OK).map_err(|source| {
        ContextError::CwdNotAccessible {
            path: cwd.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, language: &str) -> KernelspecDir {
        serde_json::from_value(serde_json::json!({
            "kernel_name": name,
            "path": format!("/k/{name}"),
            "kernelspec": {"argv": ["/nonexistent/kernel", "{connection_file}"], "display_name": name, "language": language}
        }))
        .unwrap()
    }

    fn registry() -> Registry {
        let mut catalog = Catalog::default();
        for (name, language) in [
            ("ir", "R"),
            ("python3", "python"),
            ("javascript", "javascript"),
        ] {
            catalog.add(spec(name, language));
        }
        Registry::new(catalog, std::env::temp_dir(), std::env::temp_dir())
    }

    #[tokio::test]
    async fn default_contexts_are_listed_before_they_start() {
        let registry = registry();
        registry
            .declare_defaults(&["python", "javascript", "java"])
            .await;
        let list = registry.list();
        let languages: Vec<&str> = list.iter().map(|c| c.language.as_str()).collect();
        // In the order declared; java has no kernel here, so no context.
        assert_eq!(languages, ["python", "javascript"]);
        let cwd = std::env::temp_dir().display().to_string();
        assert!(list.iter().all(|c| c.cwd == cwd));
        for info in &list {
            assert!(registry.get(&info.id).unwrap().kernel().is_none());
        }
        // Declaring again adds nothing.
        registry.declare_defaults(&["python"]).await;
        assert_eq!(registry.list(), list);
    }

    #[tokio::test]
    async fn a_default_context_that_cannot_start_says_why_and_stays_listed() {
        let registry = registry();
        registry.declare_defaults(&["python"]).await;
        let err = registry.default_for(Some("python")).await.err().unwrap();
        assert!(matches!(err, ContextError::Start { .. }), "{err}");
        assert_eq!(registry.list().len(), 1);
    }

    #[tokio::test]
    async fn a_default_context_added_on_demand_that_cannot_start_is_not_kept() {
        let registry = registry();
        let err = registry.default_for(Some("r")).await.err().unwrap();
        assert!(matches!(err, ContextError::Start { .. }), "{err}");
        assert!(registry.list().is_empty());
    }

    #[tokio::test]
    async fn a_context_whose_kernel_fails_is_not_kept() {
        let registry = registry();
        let err = registry.create(Some("r"), None).await.err().unwrap();
        assert!(matches!(err, ContextError::Start { .. }), "{err}");
        assert!(registry.list().is_empty());
        let missing = std::env::temp_dir().join("kiln-no-such-dir-for-a-context");
        let err = registry
            .create(Some("r"), Some(missing.to_str().unwrap()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ContextError::BadCwd(_)), "{err}");
    }
}
