#!/usr/bin/env bash
# End-to-end tests with the unmodified e2b SDKs (PyPI e2b 2.63.0 and
# e2b-code-interpreter 2.11.5; npm e2b on Node 20) against a real kilnd
# started by the pytest fixture on a temp data dir and a loopback port. See
# tests/e2b-sdk/conftest.py. With the container runtime, kilnd builds the
# code-interpreter template on its first start (a few minutes, then cached
# in $KILN_TEMPLATE_DIR with the base template).
#
# KILN_E2E_RUNTIME picks the runtime; by default the container runtime if this
# build has it, else the fake one, with which only the control-API tests run
# (the others are reported as skipped, with the reason).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

profile=${KILN_PROFILE:-release}
# kiln, the container runtime's kiln-spawn helper, the code interpreter
# (found next to kiln) and the static agent.
cargo build --locked --profile "$profile" -p kiln-cli -p kiln-runtime -p kiln-interpreter --bins
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
if ! "$venv/bin/python" -c 'import e2b, e2b_code_interpreter, pytest, pytest_asyncio, importlib.metadata as m; assert m.version("e2b") == "2.63.0"; assert m.version("e2b-code-interpreter") == "2.11.5"' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.63.0" "e2b-code-interpreter==2.11.5" "pytest>=8" "pytest-asyncio>=1.0" httpx
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
# The code-interpreter template is part of what this phase checks: a kilnd
# that cannot serve it must fail to start rather than skip it.
export KILN_CODE_INTERPRETER=${KILN_CODE_INTERPRETER:-true}
exec "$venv/bin/python" -m pytest tests/e2b-sdk -q -rs -p no:cacheprovider
