//! Stateful contexts: one kernel each, created, listed, restarted and removed
//! by id, plus one default context per language.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use jupyter_zmq_client::KernelspecDir;
use serde::Serialize;

use crate::kernel::{Kernel, KernelError};
use crate::kernelspec::{normalize_language, Catalog, KNOWN_LANGUAGES};

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
    spec: KernelspecDir,
    runtime_dir: PathBuf,
    kernel: Mutex<Arc<Kernel>>,
    /// Held for the whole of an execution: a kernel runs one cell at a time.
    pub exec_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Context {
    pub fn kernel(&self) -> Arc<Kernel> {
        self.kernel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts a fresh kernel in place of the current one (same id, cwd and
    /// kernelspec). The caller holds `exec_lock`.
    pub async fn respawn(&self) -> Result<(), KernelError> {
        let kernel =
            Kernel::start(&self.spec, Path::new(&self.info.cwd), &self.runtime_dir).await?;
        let old = std::mem::replace(
            &mut *self.kernel.lock().unwrap_or_else(|p| p.into_inner()),
            Arc::new(kernel),
        );
        old.kill();
        Ok(())
    }
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
            let started = Kernel::start(&spec, &spares.cwd, &spares.runtime_dir).await;
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
    /// language → id of its default context; the async lock keeps two first
    /// requests for a language from starting two kernels.
    defaults: tokio::sync::Mutex<HashMap<String, String>>,
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
            defaults: tokio::sync::Mutex::default(),
        }
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
        if !tokio::fs::metadata(&cwd)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(ContextError::BadCwd(cwd));
        }
        let spare = if cwd == self.default_cwd {
            self.spares.take(&language)
        } else {
            None
        };
        let kernel = match spare {
            Some(kernel) => {
                self.spares.refill(&language, &spec);
                kernel
            }
            None => {
                let kernel = self.start_kernel(&language, &spec, &cwd).await?;
                if cwd == self.default_cwd {
                    self.spares.refill(&language, &spec);
                }
                kernel
            }
        };
        let info = ContextInfo {
            id: uuid::Uuid::new_v4().to_string(),
            language,
            cwd: cwd.display().to_string(),
        };
        let context = Arc::new(Context {
            info: info.clone(),
            spec,
            runtime_dir: self.runtime_dir.clone(),
            kernel: Mutex::new(Arc::new(kernel)),
            exec_lock: Arc::default(),
        });
        self.contexts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id.clone(), context);
        tracing::info!(id = %info.id, language = %info.language, cwd = %info.cwd, "context created");
        Ok(info)
    }

    async fn start_kernel(
        &self,
        language: &str,
        spec: &KernelspecDir,
        cwd: &Path,
    ) -> Result<Kernel, ContextError> {
        Kernel::start(spec, cwd, &self.runtime_dir)
            .await
            .map_err(|source| ContextError::Start {
                language: language.to_owned(),
                source,
            })
    }

    pub fn get(&self, id: &str) -> Result<Arc<Context>, ContextError> {
        self.contexts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ContextError::NotFound(id.to_owned()))
    }

    /// The default context of `language`, started on first use.
    pub async fn default_for(&self, language: Option<&str>) -> Result<Arc<Context>, ContextError> {
        let (language, _) = self.spec_for(&normalize_language(language))?;
        let mut defaults = self.defaults.lock().await;
        if let Some(id) = defaults.get(&language) {
            if let Ok(context) = self.get(id) {
                return Ok(context);
            }
        }
        let info = self.create(Some(&language), None).await?;
        defaults.insert(language, info.id.clone());
        self.get(&info.id)
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<ContextInfo> = self
            .contexts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.info.clone())
            .collect();
        list.sort_by(|a, b| (&a.language, &a.id).cmp(&(&b.language, &b.id)));
        list
    }

    /// Replaces the context's kernel with a fresh one: its state is gone, its
    /// id and working directory stay. A running cell ends with an error.
    pub async fn restart(&self, id: &str) -> Result<(), ContextError> {
        let context = self.get(id)?;
        let old = context.kernel();
        old.shutdown().await;
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
        context.kernel().shutdown().await;
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
        for context in all {
            context.kernel().shutdown().await;
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
