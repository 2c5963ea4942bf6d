//! What Kiln does differently per language around a kernel: the code that
//! sets and resets environment variables for one execution, the code a new
//! kernel runs before its first cell, and which output is a cell's main
//! result.

use std::collections::BTreeMap;

/// The languages whose default contexts exist from the start, as on E2B
/// (`list_code_contexts()` shows them before any code ran). Their kernels
/// start on first use, except those preloaded.
pub const DEFAULT_CONTEXTS: &[&str] = &["python", "javascript"];

/// How a language's kernel marks the value of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainResult {
    /// The kernel sends the value as `execute_result` (ipykernel, the Node.js
    /// and Java kernels).
    ExecuteResult,
    /// IRkernel sends every visible value as `display_data`, like an explicit
    /// display: the displays Kiln's start-up code did not mark (see
    /// [`init_code`]) are values, and the last one, when nothing follows it,
    /// is the cell's main result, as Python's last expression is.
    LastValueDisplay,
}

pub fn main_result(language: &str) -> MainResult {
    match language {
        "r" => MainResult::LastValueDisplay,
        _ => MainResult::ExecuteResult,
    }
}

/// The metadata key Kiln's R start-up code puts on explicit displays (plots,
/// `IRdisplay::display`), which leaves value displays without it.
pub const DISPLAY_MARK: &str = "kiln_display";

/// Code a fresh kernel of `language` runs, silently, before its first cell.
pub fn init_code(language: &str) -> Option<&'static str> {
    match language {
        // IRkernel routes explicit displays through this documented option
        // (IRdisplay's publish_mimebundle calls it) and sends values
        // directly: wrap it so that explicit displays carry a mark.
        "r" => Some(concat!(
            "local({\n",
            "  base <- getOption('jupyter.base_display_func')\n",
            "  if (is.function(base)) options(jupyter.base_display_func = function(data, metadata = NULL) {\n",
            "    if (is.null(metadata)) metadata <- list()\n",
            "    metadata[['kiln_display']] <- TRUE\n",
            "    base(data, metadata)\n",
            "  })\n",
            "})",
        )),
        _ => None,
    }
}

fn quoted(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

fn shell_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Code that sets `vars` in the kernel's process, in its language. Java has
/// no setenv: as on E2B, the variables are system properties there
/// (`System.getProperty`), and Kiln's Java kernel starts with the process's
/// environment copied into them.
pub fn set_env_code(language: &str, vars: &BTreeMap<String, String>) -> String {
    vars.iter()
        .filter_map(|(k, v)| {
            let line = match language {
                "python" => format!("__import__('os').environ[{}] = {}", quoted(k), quoted(v)),
                "javascript" | "typescript" => {
                    format!("process.env[{}] = {};", quoted(k), quoted(v))
                }
                "r" => format!("Sys.setenv({} = {})", quoted(k), quoted(v)),
                "bash" => format!("export {k}={}", shell_quoted(v)),
                // JSON's escapes are valid in a Java string literal (it
                // writes newlines as \n, never as \u000a).
                "java" => format!("System.setProperty({}, {});", quoted(k), quoted(v)),
                _ => return None,
            };
            Some(line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Code that puts `vars` back as the kernel had them before the cell: as
/// `base` (the sandbox's variables it was given) has them, else as the
/// server's own environment (which kernels inherit), or removes them.
pub fn reset_env_code(
    language: &str,
    vars: &BTreeMap<String, String>,
    base: &BTreeMap<String, String>,
) -> String {
    let (mut set, mut unset) = (BTreeMap::new(), Vec::new());
    for k in vars.keys() {
        match base.get(k).cloned().ok_or(()).or_else(|_| std::env::var(k)) {
            Ok(v) => {
                set.insert(k.clone(), v);
            }
            Err(_) => unset.push(k.clone()),
        }
    }
    let mut lines = vec![set_env_code(language, &set)];
    for k in unset {
        let line = match language {
            "python" => format!("__import__('os').environ.pop({}, None)", quoted(&k)),
            "javascript" | "typescript" => format!("delete process.env[{}];", quoted(&k)),
            "r" => format!("Sys.unsetenv({})", quoted(&k)),
            "bash" => format!("unset {k}"),
            "java" => format!("System.clearProperty({});", quoted(&k)),
            _ => continue,
        };
        lines.push(line);
    }
    lines.retain(|l| !l.is_empty());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_quoted_for_each_language() {
        let vars = BTreeMap::from([("K".to_owned(), "it's \"x\"\n".to_owned())]);
        assert_eq!(
            set_env_code("python", &vars),
            r#"__import__('os').environ["K"] = "it's \"x\"\n""#
        );
        assert_eq!(
            set_env_code("javascript", &vars),
            r#"process.env["K"] = "it's \"x\"\n";"#
        );
        assert_eq!(
            set_env_code("r", &vars),
            r#"Sys.setenv("K" = "it's \"x\"\n")"#
        );
        assert_eq!(set_env_code("bash", &vars), "export K='it'\\''s \"x\"\n'");
        assert_eq!(
            set_env_code("java", &vars),
            r#"System.setProperty("K", "it's \"x\"\n");"#
        );
        assert_eq!(set_env_code("cobol", &vars), "");
    }

    #[test]
    fn reset_removes_variables_the_server_does_not_have() {
        let vars = BTreeMap::from([("KILN_TEST_SURELY_UNSET_VAR".to_owned(), "v".to_owned())]);
        assert_eq!(
            reset_env_code("bash", &vars, &BTreeMap::new()),
            "unset KILN_TEST_SURELY_UNSET_VAR"
        );
        assert_eq!(
            reset_env_code("python", &vars, &BTreeMap::new()),
            r#"__import__('os').environ.pop("KILN_TEST_SURELY_UNSET_VAR", None)"#
        );
        assert_eq!(
            reset_env_code("java", &vars, &BTreeMap::new()),
            r#"System.clearProperty("KILN_TEST_SURELY_UNSET_VAR");"#
        );
    }

    #[test]
    fn reset_puts_back_the_sandbox_value_a_cell_overrode() {
        let vars = BTreeMap::from([("KILN_TEST_SURELY_UNSET_VAR".to_owned(), "cell".to_owned())]);
        let base = BTreeMap::from([(
            "KILN_TEST_SURELY_UNSET_VAR".to_owned(),
            "sandbox".to_owned(),
        )]);
        assert_eq!(
            reset_env_code("bash", &vars, &base),
            "export KILN_TEST_SURELY_UNSET_VAR='sandbox'"
        );
    }

    #[test]
    fn only_r_takes_its_value_from_a_display() {
        assert_eq!(main_result("r"), MainResult::LastValueDisplay);
        assert_eq!(main_result("python"), MainResult::ExecuteResult);
        assert_eq!(main_result("java"), MainResult::ExecuteResult);
        assert!(init_code("r").unwrap().contains(DISPLAY_MARK));
        assert!(init_code("python").is_none());
    }
}
