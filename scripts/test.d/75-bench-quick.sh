#!/usr/bin/env bash
# kiln-bench --quick: the benchmark harness end to end with small counts
# (a real kilnd on a temp data dir, every measurement, the floors). Asserts
# the harness works — every measurement has samples or says why it was
# skipped — not the timings. The real run: docs/benchmarks.md. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

profile=${KILN_PROFILE:-release}
cargo build --locked --profile "$profile" -p kiln-cli -p kiln-runtime -p kiln-bench --bins
kiln_build_agent
case $profile in
    dev | test) dir=debug ;;
    *) dir=$profile ;;
esac
export KILN_TEMPLATE_DIR=${KILN_TEMPLATE_DIR:-${KILN_DATA_DIR:-/var/lib/kiln}}
exec timeout 600 "target/$dir/kiln-bench" --quick --kiln-bin "target/$dir/kiln"
