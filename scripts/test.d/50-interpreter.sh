#!/usr/bin/env bash
# The code interpreter (crates/kiln-interpreter) against real Jupyter kernels
# and the unmodified e2b-code-interpreter SDKs (Python and JavaScript).
# Installs what it needs: Debian's kernels and JDK (scripts/deps/interpreter.txt),
# bash_kernel from PyPI, the Node.js kernels' modules from npm, Kiln's own
# kernels from crates/kiln-interpreter/kernels, the SDKs from PyPI and npm. Everything but the Debian packages goes under
# target/interpreter-test/. Exits non-zero if a test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

kiln_install_apt_deps
kiln_ensure_cargo
command -v node >/dev/null && command -v npm >/dev/null || {
    echo "node and npm are needed for the JavaScript kernel and SDK" >&2
    exit 1
}

work=${KILN_INTERPRETER_TEST_DIR:-$PWD/target/interpreter-test}
mkdir -p "$work"
jupyter_prefix=$work/jupyter
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# bash_kernel in a venv of Debian's Python, which sees Debian's ipykernel.
if [ ! -x "$work/kernel-venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$work/kernel-venv"
fi
"$work/kernel-venv/bin/pip" install -q --disable-pip-version-check bash_kernel==0.10.0
"$work/kernel-venv/bin/python" -m bash_kernel.install --prefix "$jupyter_prefix" >/dev/null

# Kiln's own kernels (crates/kiln-interpreter/kernels), laid out as the
# code-interpreter template has them (src/template.rs), with kernelspecs
# under JUPYTER_PATH, which comes first: Python (ipykernel with Kiln's
# extension: charts, DataFrame data, JSON, PIL), JavaScript and TypeScript
# (jp-kernel, IJavascript's kernel library, with Kiln's rewrite of each
# cell), Java (JShell behind ipykernel's kernel base).
kernels=crates/kiln-interpreter/kernels
kspecs=$jupyter_prefix/share/jupyter/kernels
rm -rf "$kspecs/jslab" "$kspecs/tslab"
kernelspec() { # name language argv-json
    mkdir -p "$kspecs/$1"
    printf '{"argv": %s, "display_name": "%s (Kiln)", "language": "%s"}\n' "$3" "$1" "$2" >"$kspecs/$1/kernel.json"
}
kernelspec python3 python "[\"/usr/bin/python3\", \"$PWD/$kernels/python/kiln_python_kernel.py\", \"-f\", \"{connection_file}\"]"

# Node.js: the kernel next to its modules (zeromq@5 built against Debian's libzmq).
npm_config_zmq_external=true npm install -s --prefix "$work/node" jp-kernel@2.0.0 sucrase@3.35.1 acorn@8.15.0 >/dev/null
cp "$kernels/node/kernel.js" "$kernels/node/transform.js" "$work/node/"
kernelspec javascript javascript "[\"node\", \"$work/node/kernel.js\", \"{connection_file}\"]"
kernelspec typescript typescript "[\"node\", \"$work/node/kernel.js\", \"--typescript\", \"{connection_file}\"]"

# Java: the JShell evaluator compiled beside its ipykernel front.
mkdir -p "$work/java"
cp "$kernels/java/kiln_java_kernel.py" "$work/java/"
javac -nowarn -XDignore.symbol.file -d "$work/java" "$kernels/java/KilnJShell.java"
kernelspec java java "[\"/usr/bin/python3\", \"$work/java/kiln_java_kernel.py\", \"-f\", \"{connection_file}\"]"

# The unmodified SDKs.
if [ ! -x "$work/sdk-venv/bin/python" ]; then
    python3 -m venv "$work/sdk-venv"
fi
"$work/sdk-venv/bin/pip" install -q --disable-pip-version-check \
    e2b-code-interpreter==2.11.5 e2b==2.63.0 pytest==9.2.0
(cd tests/interpreter/js && npm ci -s >/dev/null)

# The profile scripts/test.sh built the workspace with: nothing to rebuild there.
profile=${KILN_PROFILE:-release}
cargo build --locked --profile "$profile" -p kiln-interpreter
dir=$profile; [ "$profile" = dev ] && dir=debug
export KILN_INTERPRETER_BIN=$PWD/target/$dir/kiln-interpreter
export JUPYTER_PATH=$jupyter_prefix/share/jupyter

status=0
# The Node.js kernels' cell rewrite, on its own.
NODE_PATH=$work/node/node_modules node --test "$kernels/node/" || status=1
"$work/sdk-venv/bin/python" -m pytest -q -p no:cacheprovider tests/interpreter || status=1
node --test --test-force-exit tests/interpreter/js/ || status=1
exit $status
