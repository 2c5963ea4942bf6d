#!/usr/bin/env bash
# The code interpreter (crates/kiln-interpreter) against real Jupyter kernels
# and the unmodified e2b-code-interpreter SDKs (Python and JavaScript).
# Installs what it needs: Debian's kernels (scripts/deps/interpreter.txt),
# bash_kernel from PyPI, IJavascript (Node.js kernel) from npm, the
# SDKs from PyPI and npm. Everything but the Debian packages goes under
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

# IJavascript, the Node.js kernel E2B's template uses too. Its zeromq@5 addon
# is built against Debian's libzmq (no download of libzmq's source).
npm_config_zmq_external=true npm install -s --prefix "$work/node" ijavascript@5.2.1 >/dev/null
mkdir -p "$jupyter_prefix/share/jupyter/kernels/javascript"
cat >"$jupyter_prefix/share/jupyter/kernels/javascript/kernel.json" <<JSON
{"argv": ["node", "$work/node/node_modules/ijavascript/lib/kernel.js", "--hide-undefined",
          "--protocol=5.0", "{connection_file}"],
 "display_name": "JavaScript (Node.js)", "language": "javascript"}
JSON
rm -rf "$jupyter_prefix/share/jupyter/kernels/jslab" "$jupyter_prefix/share/jupyter/kernels/tslab"

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
"$work/sdk-venv/bin/python" -m pytest -q -p no:cacheprovider tests/interpreter || status=1
node --test --test-force-exit tests/interpreter/js/ || status=1
exit $status
