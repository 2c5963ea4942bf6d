#!/usr/bin/env bash
# The kiln CLI and `kiln mcp` end to end (tests/cli): a real kilnd (`kiln up`,
# container runtime) on a temp data dir and a loopback port; the CLI run as a
# program; `kiln shell` driven through tmux; `kiln mcp` through the MCP Python
# SDK (PyPI mcp). Needs root, tmux and python3-venv (scripts/deps/cli.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

profile=${KILN_PROFILE:-release}
# kiln, the container runtime's kiln-spawn helper, and the static agent.
cargo build --locked --profile "$profile" -p kiln-cli -p kiln-runtime --bins
kiln_build_agent
case $profile in
    dev | test) dir=debug ;;
    *) dir=$profile ;;
esac
export KILN_BIN="$PWD/target/$dir/kiln"
# Reuse the base template the runtime's phase built (same recipe, same hash).
export KILN_TEMPLATE_DIR=${KILN_TEMPLATE_DIR:-${KILN_DATA_DIR:-/var/lib/kiln}}

if ! "$KILN_BIN" runtimes | grep -qx container; then
    echo "the container runtime is not in this build: skipping the CLI tests"
    exit 0
fi

venv=.venv/cli
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import mcp, pytest, importlib.metadata as m; assert m.version("mcp") == "2.3.0"' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "mcp==2.3.0" "pytest>=8"
fi
exec "$venv/bin/python" -m pytest tests/cli -q -rs -p no:cacheprovider "$@"
