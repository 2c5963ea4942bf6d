#!/usr/bin/env bash
# The whole unmodified e2b SDK suite (tests/e2b-sdk, as 40-e2b-sdk runs it
# on the container runtime) against a kilnd whose default runtime is gVisor
# (runsc): sandboxes, control API, envd parity, durable state (memory pause
# and resume as runsc checkpoints, snapshots and forks with memory),
# restarts, the JavaScript SDK, the code interpreter. Tests that cannot pass
# on gVisor are skipped with the reason (conftest.py's GVISOR_SKIPS; pytest
# -rs prints each one). Without runsc on the host the phase says so and
# passes nothing off as tested.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

runsc=${KILN_RUNSC:-$(command -v runsc || true)}
if [ -z "$runsc" ]; then
    echo "SKIPPED: runsc is not installed (apt-get install runsc): the gVisor suite did not run"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: the gVisor runtime needs root: the gVisor suite did not run"
    exit 0
fi

profile=${KILN_PROFILE:-release}
cargo build --locked --profile "$profile" -p kiln-cli -p kiln-runtime -p kiln-interpreter --bins
kiln_build_agent
case $profile in
    dev | test) dir=debug ;;
    *) dir=$profile ;;
esac
export KILN_BIN="$PWD/target/$dir/kiln"
export KILN_TEMPLATE_DIR=${KILN_TEMPLATE_DIR:-${KILN_DATA_DIR:-/var/lib/kiln}}

venv=.venv/e2b-sdk
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import e2b, pytest, pytest_asyncio, importlib.metadata as m; assert m.version("e2b") == "2.63.0"' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.63.0" "e2b-code-interpreter==2.11.5" "pytest>=8" "pytest-asyncio>=1.0" httpx
fi

export KILN_E2E_RUNTIME=gvisor
# The code-interpreter template (built by 40-e2b-sdk into the same template
# directory, or here if that did not run) on gVisor: its warm sandboxes
# boot on gVisor and test_code_interpreter.py runs against them.
export KILN_CODE_INTERPRETER=${KILN_CODE_INTERPRETER:-true}
exec "$venv/bin/python" -m pytest tests/e2b-sdk -q -rs -p no:cacheprovider
