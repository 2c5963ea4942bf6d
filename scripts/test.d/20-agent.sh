#!/usr/bin/env bash
# kiln-agent end to end: runs the static agent on this host (in its own mount
# namespace, see tests/agent/conftest.py) and drives it with the real e2b
# Python SDK from PyPI. Needs root, python3-venv, curl and util-linux's
# unshare (scripts/deps/agent.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

if [ -z "${KILN_AGENT_BIN:-}" ] || [ ! -x "$KILN_AGENT_BIN" ]; then
    kiln_build_agent
fi
export KILN_AGENT_BIN

venv=${KILN_AGENT_VENV:-target/agent-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.63.0" "pytest>=8,<10"

exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/agent "$@"
