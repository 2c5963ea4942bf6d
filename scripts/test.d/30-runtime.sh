#!/usr/bin/env bash
# The container runtime's phase: the base template (built once with
# mmdebstrap, then cached in $KILN_DATA_DIR, default /var/lib/kiln) run in a
# real sandbox, then a check that the whole test run left no sandbox
# objects on the host. The other runtime tests (isolation from inside,
# network, limits, 100 create/kill leak count, crash recovery) run in
# `cargo test --workspace`. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
kiln_ensure_cargo

if [ "$(id -u)" -ne 0 ]; then
    echo "30-runtime: needs root" >&2
    exit 1
fi

export KILN_TEST_BASE_TEMPLATE=1
export KILN_DATA_DIR=${KILN_DATA_DIR:-/var/lib/kiln}
cargo test --locked -p kiln-runtime --test base_template -- --nocapture

# Nothing of the tests' runtimes (tags t1..t9) may be left on the host.
left=()
for ns in $(ip netns list | awk '{print $1}'); do
    case $ns in kiln-t[0-9]-* | kiln-test-*) left+=("netns $ns") ;; esac
done
for dev in /sys/class/net/kvt[0-9]-* /sys/class/net/kb-t[0-9] /sys/class/net/kto[0-9]; do
    [ -e "$dev" ] && left+=("link $(basename "$dev")")
done
for cg in /sys/fs/cgroup/*/kiln/t[0-9] /sys/fs/cgroup/kiln/t[0-9]; do
    [ -d "$cg" ] && left+=("cgroup $cg")
done
if nft list tables 2>/dev/null | grep -q 'kiln_t[0-9]'; then
    left+=("nftables table")
fi
# Sandbox processes: the store's range (sandboxes on a filesystem without
# idmapped mounts) and the sandboxes' own ranges (host/uidrange.rs).
n=$(ps -e -o uid= | awk '($1 >= 100000 && $1 < 165536) || ($1 >= 1895825408 && $1 < 2147352576)' | wc -l)
[ "$n" -gt 0 ] && left+=("$n sandbox processes")
if [ ${#left[@]} -gt 0 ]; then
    echo "30-runtime: left behind on the host: ${left[*]}" >&2
    exit 1
fi
echo "30-runtime: no sandbox objects left on the host"
