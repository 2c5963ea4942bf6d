#!/usr/bin/env bash
# Sets up and runs Kiln on its embedded defaults: installs the Debian packages it
# needs, builds kilnd, the kiln CLI and the static agent, then runs `kiln up`
# (which builds the base and code-interpreter templates on first run, with a
# progress display, and serves the E2B-compatible API on 127.0.0.1:3000;
# KILN_CODE_INTERPRETER=false skips the code-interpreter template). Extra
# arguments go to `kiln up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "kiln up needs root (namespaces, cgroups, network): run it as root" >&2
    exit 1
fi
kiln_install_apt_deps
kiln_build
exec target/release/kiln up "$@"
