#!/usr/bin/env bash
# Builds the code-interpreter template's root filesystem as the template
# builder would (mmdebstrap, bookworm, the base template's packages plus the
# recipe of crates/kiln-interpreter/src/template.rs), starts kiln-interpreter
# in it with chroot as the template's start command says, and runs the SDK
# tests against it. Slow (downloads R, SciPy, pandas…): not part of
# scripts/test.d; run by hand as root:
#   bash tests/interpreter/template.sh [ROOTFS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:-$PWD/target/interpreter-template/rootfs}
work=${KILN_INTERPRETER_TEST_DIR:-$PWD/target/interpreter-test}

cargo build --locked -p kiln-interpreter
bin=$PWD/target/debug/kiln-interpreter
recipe=$("$bin" --print-template-recipe)

# Rebuilt when the recipe changes; the stamp is written only after a full build.
stamp=$root.recipe.json
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$recipe" ]; then
    rm -rf "$root" "$stamp"
    mkdir -p "$(dirname "$root")"
    # The base template's packages (crates/kiln-template Recipe::base).
    base="bash,coreutils,procps,iproute2,python3,python3-pip,python3-venv,python-is-python3,nodejs,npm,git,curl,ca-certificates,sudo,locales,ncurses-bin,attr"
    extra=$(python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["packages"]))' <<<"$recipe")
    hooks=()
    while IFS= read -r -d '' h; do hooks+=("--customize-hook=$h"); done < <(
        python3 -c 'import json,sys; sys.stdout.write("".join(c + "\0" for c in json.load(sys.stdin)["customize"]))' <<<"$recipe")
    mmdebstrap --variant=minbase --mode=root --format=directory \
        --include="$base,$extra" \
        --customize-hook='chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash user' \
        "${hooks[@]}" bookworm "$root"
    printf '%s' "$recipe" >"$stamp"
fi

# The binary goes where the recipe's placeholder is (the runtime bind-mounts it).
cp "$bin" "$root/usr/local/bin/kiln-interpreter"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mount -t proc proc "$root/proc" 2>/dev/null || true
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts" # bash_kernel runs bash on a PTY
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Kernels may take a moment to exit after the server.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        umount "$root/dev/pts" "$root/dev" "$root/proc" 2>/dev/null || true
        mount | grep -q " $root/" || return 0
        sleep 0.5
    done
    echo "could not unmount everything under $root" >&2
}
trap cleanup EXIT
# The start command, as user `user` in /home/user (loopback only for the test).
chroot --userspec=1000:1000 "$root" env -i HOME=/home/user LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    sh -c "cd /home/user && exec /usr/local/bin/kiln-interpreter --listen 127.0.0.1:$port --cwd /home/user --preload python" &
pid=$!
KILN_INTERPRETER_URL=http://127.0.0.1:$port "$work/sdk-venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/interpreter -k "not context_cwd and not server_side_timeout"
