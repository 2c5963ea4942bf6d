#!/usr/bin/env bash
# Runs the SDK suite with kilnd on the fake runtime and ONE real kiln-agent on
# 127.0.0.1:49983 standing in for every sandbox, inside private network and
# mount namespaces (own loopback, a `user` account bind-mounted into
# /etc/passwd, a tmpfs /home). No isolation: a development check of the proxy
# and of the SDK paths while the container runtime is not wired in. As root.
#
# Expected failures: whatever needs /init (sandbox env vars, the access
# token), since the fake runtime has no agent client.
#
#   tests/e2b-sdk/run-with-host-agent.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p kiln-cli -p kiln-agent
venv=.venv/e2b-sdk
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q "e2b==2.63.0" "e2b-code-interpreter==2.11.5" "pytest>=8" "pytest-asyncio>=1.0" httpx; }
npm_dir=${KILN_E2E_NPM_PREFIX:-$(mktemp -d)}
if [ ! -d "$npm_dir/node_modules/e2b" ]; then
    (cd "$npm_dir" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent e2b)
fi
export KILN_E2E_NPM_PREFIX=$npm_dir KILN_E2E_RUNTIME=fake-host-agent KILN_BIN=$PWD/target/debug/kiln
exec unshare --mount --net bash -c '
set -euo pipefail
ip link set lo up
t=$(mktemp -d)
cp /etc/passwd /etc/group "$t"/
echo "user:x:1999:1999::/home/user:/bin/bash" >>"$t/passwd"
echo "user:x:1999:" >>"$t/group"
mount --bind "$t/passwd" /etc/passwd
mount --bind "$t/group" /etc/group
mount -t tmpfs tmpfs /home
mkdir -p /home/user && chown 1999:1999 /home/user
target/debug/kiln-agent --listen 127.0.0.1:49983 >"$t/agent.log" 2>&1 &
agent=$!
trap "kill $agent" EXIT
sleep 0.3
.venv/e2b-sdk/bin/python -m pytest tests/e2b-sdk -q -rs -p no:cacheprovider ${1:+-k "$1"}
' bash "${1:-}"
