//! The `code-interpreter` template, as data: what to add to the base template
//! (Debian bookworm, see `kiln-template`) and how the sandbox starts the
//! interpreter.
//!
//! The build steps follow `kiln_template::Recipe`'s conventions: packages go
//! to `mmdebstrap --include`, and each customize step is a shell command run
//! on the host with the root filesystem's path as `$1`. Downloads from PyPI
//! and npm happen on the host (whose pip and npm are configured for this
//! network); the chroot installs them offline, so the rootfs needs no
//! registry access or certificates of its own.

/// The template's name and the names the SDKs ask for.
pub const NAME: &str = "code-interpreter";
/// `code-interpreter-v1` is the SDK's default template.
pub const ALIASES: &[&str] = &["code-interpreter-v1", "code-interpreter"];
/// Where the SDK finds the interpreter.
pub const PORT: u16 = 49999;
/// Where the template expects the `kiln-interpreter` binary. The runtime
/// provides it like the agent (bind mount of the host's build over this
/// placeholder), so that the rootfs does not change with every build.
pub const BINARY: &str = "/usr/local/bin/kiln-interpreter";

const BASH_KERNEL: &str = "bash_kernel==0.10.0";
const FILETYPE: &str = "filetype==1.2.0";
const IJAVASCRIPT: &str = "ijavascript@5.2.1";
const IJAVASCRIPT_DIR: &str = "/usr/local/lib/ijavascript";

/// What to add to the base template.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TemplateRecipe {
    pub name: String,
    pub aliases: Vec<String>,
    /// Debian packages on top of the base template's.
    pub packages: Vec<String>,
    /// Shell commands, `$1` = the root filesystem, run after the base
    /// template's own customize steps.
    pub customize: Vec<String>,
    pub start: StartCommand,
}

/// How a sandbox of this template starts the interpreter, and when it is ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StartCommand {
    pub argv: Vec<String>,
    pub user: String,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    /// Ready when this answers 200.
    pub ready_url: String,
}

pub fn recipe() -> TemplateRecipe {
    let packages = [
        // Python kernel and the libraries agents expect in it.
        "python3-ipykernel",
        "python3-jupyter-client",
        "python3-numpy",
        "python3-pandas",
        "python3-matplotlib",
        "python3-scipy",
        "python3-pil",
        // bash_kernel's dependencies (bash_kernel itself is from PyPI).
        "python3-pexpect",
        // R kernel.
        "r-base-core",
        "r-cran-irkernel",
        // To rebuild IJavascript's zeromq addon against Debian's libzmq and
        // Node headers if its prebuilt one does not load; also what users
        // need to pip/npm-install native extensions.
        "libzmq3-dev",
        "libnode-dev",
        "g++",
        "make",
        "python3",
    ];
    let customize = vec![
        // Host side: fetch what comes from PyPI and npm into the rootfs.
        // IJavascript goes in with its dependencies, install scripts not run.
        format!(
            r#"set -e; d="$1/tmp/kiln-interpreter-build"; mkdir -p "$d" "$1{IJAVASCRIPT_DIR}"; python3 -m pip download -q --no-deps -d "$d/wheels" {BASH_KERNEL} {FILETYPE}; npm install -s --prefix "$d/stage" --ignore-scripts {IJAVASCRIPT}; cp -a "$d/stage/node_modules" "$d/stage/package.json" "$1{IJAVASCRIPT_DIR}/""#
        ),
        // In the rootfs, offline: bash_kernel and its kernelspec.
        r#"chroot "$1" sh -c 'python3 -m pip install -q --no-index --no-deps --break-system-packages /tmp/kiln-interpreter-build/wheels/*.whl'"#.to_owned(),
        r#"chroot "$1" python3 -m bash_kernel.install --sys-prefix"#.to_owned(),
        // zeromq@5 ships a prebuilt addon for Debian's Node; if it does not
        // load, build it against Debian's libzmq and Node headers.
        format!(
            r#"chroot "$1" sh -c 'cd {IJAVASCRIPT_DIR} && {{ node node_modules/zeromq/index.js || npm_config_zmq_external=true npm_config_nodedir=/usr npm rebuild --offline zeromq; }} && node node_modules/zeromq/index.js'"#
        ),
        format!(
            r#"mkdir -p "$1/usr/share/jupyter/kernels/javascript" && printf '%s\n' '{{"argv": ["node", "{IJAVASCRIPT_DIR}/node_modules/ijavascript/lib/kernel.js", "--hide-undefined", "--protocol=5.0", "{{connection_file}}"], "display_name": "JavaScript (Node.js)", "language": "javascript"}}' > "$1/usr/share/jupyter/kernels/javascript/kernel.json""#
        ),
        r#"rm -rf "$1/tmp/kiln-interpreter-build""#.to_owned(),
        // The placeholder the runtime mounts the binary over.
        format!(r#"mkdir -p "$1/usr/local/bin" && touch "$1{BINARY}" && chmod 0755 "$1{BINARY}""#),
    ];
    TemplateRecipe {
        name: NAME.to_owned(),
        aliases: ALIASES.iter().map(|a| (*a).to_owned()).collect(),
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        customize,
        start: StartCommand {
            argv: vec![
                BINARY.to_owned(),
                "--listen".to_owned(),
                format!("0.0.0.0:{PORT}"),
                "--cwd".to_owned(),
                "/home/user".to_owned(),
                "--preload".to_owned(),
                "python".to_owned(),
            ],
            user: "user".to_owned(),
            cwd: "/home/user".to_owned(),
            env: vec![
                ("HOME".to_owned(), "/home/user".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                // matplotlib writes its cache here; the default would do too,
                // but an explicit one survives an unset HOME.
                (
                    "MPLCONFIGDIR".to_owned(),
                    "/home/user/.config/matplotlib".to_owned(),
                ),
            ],
            ready_url: format!("http://127.0.0.1:{PORT}/health"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_names_the_kernels_the_issue_asks_for() {
        let r = recipe();
        assert_eq!(r.name, "code-interpreter");
        assert!(r.aliases.iter().any(|a| a == "code-interpreter-v1"));
        for p in [
            "python3-ipykernel",
            "python3-pandas",
            "python3-matplotlib",
            "r-cran-irkernel",
        ] {
            assert!(r.packages.iter().any(|x| x == p), "{p} missing");
        }
        let all = r.customize.join("\n");
        assert!(all.contains("bash_kernel.install"));
        assert!(all.contains("kernels/javascript/kernel.json"));
        assert!(r.start.argv.contains(&"0.0.0.0:49999".to_owned()));
        assert_eq!(r.start.argv[0], BINARY);
    }

    #[test]
    fn the_javascript_kernelspec_is_valid_json() {
        let step = recipe()
            .customize
            .into_iter()
            .find(|c| c.contains("kernels/javascript"))
            .unwrap();
        let json = step.split('\'').nth(3).unwrap();
        let spec: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(spec["language"], "javascript");
        assert!(spec["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "{connection_file}"));
    }
}
