#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian 12 machine (as root)
# and runs the whole suite: Rust unit and integration tests, then every phase in
# scripts/test.d/ in name order (end-to-end tests with the real e2b SDKs, the
# runtime's security tests, ...). Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

kiln_install_apt_deps
kiln_build

failed=()
passed=0
# Each phase's output also goes to a log, so that a failed phase's verdicts
# and last lines can be repeated at the very end, where a truncated CI log
# still shows them.
logs=$(mktemp -d /tmp/kiln-test-logs.XXXXXX)
step() {
    local name=$1
    shift
    echo
    echo "==== $name"
    if "$@" 2>&1 | tee "$logs/$name.log"; then
        echo "==== $name: ok"
        passed=$((passed + 1))
    else
        echo "==== $name: FAILED"
        failed+=("$name")
    fi
}

step "rust tests" cargo test --workspace --locked -- --test-threads="${KILN_TEST_THREADS:-2}"
for phase in scripts/test.d/*.sh; do
    [ -e "$phase" ] || continue
    step "$(basename "$phase" .sh)" bash "$phase"
done

for name in "${failed[@]}"; do
    echo
    echo "==== $name failed: its verdicts, then its last lines"
    grep -E '^(FAILED|ERROR) |^_{3,} .* _{3,}$|^not ok |^test .* FAILED$|panicked at|^error(\[|:)|^E   ' "$logs/$name.log" | head -n 40 || true
    echo "----"
    tail -n 40 "$logs/$name.log"
done
rm -rf "$logs"

echo
echo "phases: $passed passed, ${#failed[@]} failed"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all test phases passed"
else
    echo "failed phases: ${failed[*]}"
    exit 1
fi
