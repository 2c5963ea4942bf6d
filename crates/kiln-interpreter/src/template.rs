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
/// The Node.js kernels' modules: jp-kernel (IJavascript's kernel library,
/// with nel and zeromq@5), sucrase (TypeScript's types stripped) and acorn
/// (the cell rewrite's parser).
const NODE_MODULES: &str = "jp-kernel@2.0.0 sucrase@3.35.1 acorn@8.15.0";
/// Kiln's kernels (crates/kiln-interpreter/kernels) in the rootfs.
pub const KERNELS_DIR: &str = "/usr/local/lib/kiln-kernels";
/// Their kernelspecs: this directory comes before Debian's
/// /usr/share/jupyter, so Kiln's Python kernel is the one found.
const KERNELSPECS_DIR: &str = "/usr/local/share/jupyter/kernels";

/// Kiln's kernel sources, by path under [`KERNELS_DIR`].
const KERNEL_FILES: &[(&str, &str)] = &[
    (
        "python/kiln_python_kernel.py",
        include_str!("../kernels/python/kiln_python_kernel.py"),
    ),
    (
        "python/kiln_ipython.py",
        include_str!("../kernels/python/kiln_ipython.py"),
    ),
    (
        "python/kiln_charts.py",
        include_str!("../kernels/python/kiln_charts.py"),
    ),
    ("node/kernel.js", include_str!("../kernels/node/kernel.js")),
    (
        "node/transform.js",
        include_str!("../kernels/node/transform.js"),
    ),
    (
        "java/kiln_java_kernel.py",
        include_str!("../kernels/java/kiln_java_kernel.py"),
    ),
    (
        "java/KilnJShell.java",
        include_str!("../kernels/java/KilnJShell.java"),
    ),
];

/// The kernelspecs Kiln installs: (directory name, language, argv).
pub fn kernelspecs() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let k = |path: &str| format!("{KERNELS_DIR}/{path}");
    let conn = || "{connection_file}".to_owned();
    vec![
        (
            "python3",
            "python",
            vec![
                "/usr/bin/python3".to_owned(),
                k("python/kiln_python_kernel.py"),
                "-f".to_owned(),
                conn(),
            ],
        ),
        (
            "javascript",
            "javascript",
            vec!["node".to_owned(), k("node/kernel.js"), conn()],
        ),
        (
            "typescript",
            "typescript",
            vec![
                "node".to_owned(),
                k("node/kernel.js"),
                "--typescript".to_owned(),
                conn(),
            ],
        ),
        (
            "java",
            "java",
            vec![
                "/usr/bin/python3".to_owned(),
                k("java/kiln_java_kernel.py"),
                "-f".to_owned(),
                conn(),
            ],
        ),
    ]
}

fn kernelspec_json(name: &str, language: &str, argv: &[String]) -> String {
    serde_json::json!({
        "argv": argv,
        "display_name": format!("{name} (Kiln)"),
        "language": language,
    })
    .to_string()
}

/// Standard base64 (RFC 4648, with padding), for files written by a
/// customize step: the step stays one line of shell whatever the file holds.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A customize step that writes `contents` to `path` in the rootfs.
fn write_file(path: &str, contents: &str) -> String {
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
    format!(
        r#"mkdir -p "$1{dir}" && echo '{}' | base64 -d > "$1{path}" && chmod 0644 "$1{path}""#,
        base64(contents.as_bytes())
    )
}

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
        // Java kernel: JShell and javac.
        "default-jdk-headless",
        // R kernel.
        "r-base-core",
        "r-cran-irkernel",
        // To rebuild the Node.js kernels' zeromq addon against Debian's libzmq and
        // Node headers if its prebuilt one does not load; also what users
        // need to pip/npm-install native extensions.
        "libzmq3-dev",
        "libnode-dev",
        "g++",
        "make",
        "python3",
    ];
    let node_dir = format!("{KERNELS_DIR}/node");
    let mut customize = vec![
        // Host side: fetch what comes from PyPI and npm into the rootfs. The
        // Node.js modules go in with their dependencies, install scripts not run.
        format!(
            r#"set -e; d="$1/tmp/kiln-interpreter-build"; mkdir -p "$d" "$1{node_dir}"; python3 -m pip download -q --no-deps -d "$d/wheels" {BASH_KERNEL} {FILETYPE}; npm install -s --prefix "$d/stage" --ignore-scripts {NODE_MODULES}; cp -a "$d/stage/node_modules" "$d/stage/package.json" "$1{node_dir}/""#
        ),
        // In the rootfs, offline: bash_kernel and its kernelspec.
        r#"chroot "$1" sh -c 'python3 -m pip install -q --no-index --no-deps --break-system-packages /tmp/kiln-interpreter-build/wheels/*.whl'"#.to_owned(),
        r#"chroot "$1" python3 -m bash_kernel.install --sys-prefix"#.to_owned(),
        // zeromq@5 ships a prebuilt addon for Debian's Node; if it does not
        // load, build it against Debian's libzmq and Node headers.
        format!(
            r#"chroot "$1" sh -c 'cd {node_dir} && {{ node node_modules/zeromq/index.js || npm_config_zmq_external=true npm_config_nodedir=/usr npm rebuild --offline zeromq; }} && node node_modules/zeromq/index.js'"#
        ),
    ];
    // Kiln's kernels and their kernelspecs.
    for (path, contents) in KERNEL_FILES {
        customize.push(write_file(&format!("{KERNELS_DIR}/{path}"), contents));
    }
    customize.push(format!(
        r#"chroot "$1" javac -nowarn -XDignore.symbol.file -d {KERNELS_DIR}/java {KERNELS_DIR}/java/KilnJShell.java"#
    ));
    for (name, language, argv) in kernelspecs() {
        customize.push(write_file(
            &format!("{KERNELSPECS_DIR}/{name}/kernel.json"),
            &kernelspec_json(name, language, &argv),
        ));
    }
    customize.extend([
        r#"rm -rf "$1/tmp/kiln-interpreter-build""#.to_owned(),
        // Kernels run as `user`; E2B's run as root, and its SDK's tests
        // create contexts in /root. `user` may sudo to root anyway.
        r#"chroot "$1" chgrp user /root && chmod 0770 "$1/root""#.to_owned(),
        // The placeholder the runtime mounts the binary over.
        format!(r#"mkdir -p "$1/usr/local/bin" && touch "$1{BINARY}" && chmod 0755 "$1{BINARY}""#),
    ]);
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
            "python3-pil",
            "r-cran-irkernel",
            "default-jdk-headless",
        ] {
            assert!(r.packages.iter().any(|x| x == p), "{p} missing");
        }
        let all = r.customize.join("\n");
        assert!(all.contains("bash_kernel.install"));
        assert!(all.contains("javac"));
        for (name, _, _) in kernelspecs() {
            assert!(all.contains(&format!("{KERNELSPECS_DIR}/{name}/kernel.json")));
        }
        assert!(r.start.argv.contains(&"0.0.0.0:49999".to_owned()));
        assert_eq!(r.start.argv[0], BINARY);
    }

    #[test]
    fn base64_is_the_standard_one() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("it's\n", "aXQncwo="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn kernel_files_are_written_whole_and_kernelspecs_are_json() {
        let step = write_file("/a/b/c.txt", "x'y\n");
        assert!(step
            .starts_with(r#"mkdir -p "$1/a/b" && echo 'eCd5Cg==' | base64 -d > "$1/a/b/c.txt""#));
        let specs = kernelspecs();
        let languages: Vec<&str> = specs.iter().map(|(_, l, _)| *l).collect();
        assert_eq!(languages, ["python", "javascript", "typescript", "java"]);
        for (name, language, argv) in specs {
            let spec: serde_json::Value =
                serde_json::from_str(&kernelspec_json(name, language, &argv)).unwrap();
            assert_eq!(spec["language"], language);
            assert_eq!(
                spec["argv"].as_array().unwrap().last().unwrap(),
                "{connection_file}"
            );
            for arg in &argv {
                if let Some(file) = arg.strip_prefix(&format!("{KERNELS_DIR}/")) {
                    assert!(
                        KERNEL_FILES.iter().any(|(p, _)| *p == file),
                        "{file} is not installed"
                    );
                }
            }
        }
    }
}
