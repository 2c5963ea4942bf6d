#!/usr/bin/env bash
# The hostile-workload and fault suites against a real kilnd driven through
# the unmodified e2b SDK: tests/security (bombs,
# escape attempts, files API tricks) and tests/faults (kill -9 of kilnd and
# of an agent, a full disk, schemathesis against the OpenAPI document).
# Each runs twice: against a kilnd whose default runtime is the container
# runtime, then gVisor (KILN_SECURITY_RUNTIME); tests/faults' durable-state
# crash test covers both runtimes itself, so it runs once.
# Each suite starts its own kilnd on a temp data dir with a runtime tag of
# its own and checks the host is clean afterwards. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

if [ "$(id -u)" -ne 0 ]; then
    echo "70-security: needs root" >&2
    exit 1
fi

profile=${KILN_PROFILE:-release}
cargo build --locked --profile "$profile" -p kiln-cli -p kiln-runtime --bins
kiln_build_agent
case $profile in
    dev | test) dir=debug ;;
    *) dir=$profile ;;
esac
export KILN_BIN="$PWD/target/$dir/kiln"
export KILN_TEMPLATE_DIR=${KILN_TEMPLATE_DIR:-${KILN_DATA_DIR:-/var/lib/kiln}}

venv=.venv/security
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import e2b, pytest, httpx, schemathesis, importlib.metadata as m; assert m.version("e2b") == "2.63.0"' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.63.0" "pytest>=8" httpx "schemathesis>=4,<5"
fi

rc=0
suite() {
    local runtime=$1 limit=$2
    shift 2
    echo "---- $* on $runtime"
    KILN_SECURITY_RUNTIME=$runtime timeout "$limit" "$venv/bin/python" -m pytest "$@" -q -rsx \
        -p no:cacheprovider --durations=5 || rc=1
}
# On gVisor the tests whose check is the container runtime's own mechanism
# are skipped with the reason (tests/security/conftest.py's GVISOR_SKIPS).
suite container 600 tests/security
if command -v "${KILN_RUNSC:-runsc}" >/dev/null; then
    suite gvisor 600 tests/security
else
    echo "SKIPPED: runsc is not installed: tests/security and tests/faults did not run on gVisor"
fi
suite container 900 tests/faults
if command -v "${KILN_RUNSC:-runsc}" >/dev/null; then
    suite gvisor 900 tests/faults --ignore tests/faults/test_durable_crash.py
fi
exit $rc
