#!/usr/bin/env bash
# End-to-end tests with the unmodified e2b SDKs (PyPI e2b 2.63.0; npm e2b on
# Node 20) against a real kilnd started by the pytest fixture on a temp data
# dir and a loopback port. See tests/e2b-sdk/conftest.py.
#
# KILN_E2E_RUNTIME picks the runtime; by default the container runtime if this
# build has it, else the fake one, with which only the control-API tests run
# (the others are reported as skipped, with the reason).
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

venv=.venv/e2b-sdk
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import e2b, pytest, pytest_asyncio, importlib.metadata as m; assert m.version("e2b") == "2.63.0"' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.63.0" "pytest>=8" "pytest-asyncio>=1.0" httpx
fi

if [ -z "${KILN_E2E_RUNTIME:-}" ]; then
    # Not `kiln runtimes | grep -q`: grep's early exit would fail the
    # pipeline (SIGPIPE) under pipefail.
    runtimes=$("$KILN_BIN" runtimes)
    if grep -qx container <<<"$runtimes"; then
        export KILN_E2E_RUNTIME=container
    else
        export KILN_E2E_RUNTIME=fake
        echo "the container runtime is not in this build: running the control-API tests only"
    fi
fi
exec "$venv/bin/python" -m pytest tests/e2b-sdk -q -rs -p no:cacheprovider
