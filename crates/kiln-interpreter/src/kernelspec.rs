//! Languages the SDK names, and the installed Jupyter kernels that serve them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jupyter_zmq_client::KernelspecDir;

/// Language names the SDKs send, lower-cased, with their aliases resolved.
pub const KNOWN_LANGUAGES: &[&str] = &["python", "javascript", "typescript", "r", "bash", "java"];

/// `None`/empty means Python; `js` and `ts` are aliases; case is ignored.
pub fn normalize_language(language: Option<&str>) -> String {
    let language = language.unwrap_or("").trim().to_ascii_lowercase();
    match language.as_str() {
        "" | "python3" | "py" => "python".to_owned(),
        "js" | "node" | "nodejs" => "javascript".to_owned(),
        "ts" => "typescript".to_owned(),
        "sh" | "shell" => "bash".to_owned(),
        _ => language,
    }
}

/// The kernels found, keyed by normalized language.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    by_language: BTreeMap<String, KernelspecDir>,
}

impl Catalog {
    /// Reads `kernels/*/kernel.json` under each Jupyter data directory:
    /// every entry of `JUPYTER_PATH` first, then the user's and the system's
    /// (`~/.local/share/jupyter`, `/usr/local/share/jupyter`, `/usr/share/jupyter`).
    /// The first kernel found for a language serves it; within a directory,
    /// kernels are taken in name order.
    pub async fn discover() -> Self {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(path) = std::env::var_os("JUPYTER_PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
        }
        // data_dirs() also holds JUPYTER_PATH whole, unsplit: skip entries seen.
        for dir in jupyter_zmq_client::data_dirs() {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        let mut catalog = Catalog::default();
        for dir in dirs {
            let mut specs = jupyter_zmq_client::read_kernelspec_jsons(&dir).await;
            specs.sort_by(|a, b| a.kernel_name.cmp(&b.kernel_name));
            for spec in specs {
                catalog.add(spec);
            }
        }
        catalog
    }

    /// Adds a kernel unless its language is already served.
    pub fn add(&mut self, spec: KernelspecDir) {
        let language = normalize_language(Some(&spec.kernelspec.language));
        tracing::debug!(kernel = %spec.kernel_name, %language, path = %spec.path.display(), "found kernel");
        self.by_language.entry(language).or_insert(spec);
    }

    pub fn get(&self, language: &str) -> Option<&KernelspecDir> {
        self.by_language.get(language)
    }

    pub fn languages(&self) -> Vec<String> {
        self.by_language.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_normalize() {
        assert_eq!(normalize_language(None), "python");
        assert_eq!(normalize_language(Some("")), "python");
        assert_eq!(normalize_language(Some(" Python ")), "python");
        assert_eq!(normalize_language(Some("JS")), "javascript");
        assert_eq!(normalize_language(Some("ts")), "typescript");
        assert_eq!(normalize_language(Some("R")), "r");
        assert_eq!(normalize_language(Some("cobol")), "cobol");
    }

    fn spec(name: &str, language: &str) -> KernelspecDir {
        serde_json::from_value(serde_json::json!({
            "kernel_name": name,
            "path": format!("/k/{name}"),
            "kernelspec": {"argv": ["x", "{connection_file}"], "display_name": name, "language": language}
        }))
        .unwrap()
    }

    #[test]
    fn first_kernel_for_a_language_wins() {
        let mut catalog = Catalog::default();
        catalog.add(spec("python3", "python"));
        catalog.add(spec("other-python", "Python"));
        catalog.add(spec("ir", "R"));
        assert_eq!(catalog.get("python").unwrap().kernel_name, "python3");
        assert_eq!(catalog.get("r").unwrap().kernel_name, "ir");
        assert_eq!(catalog.languages(), vec!["python", "r"]);
    }
}
