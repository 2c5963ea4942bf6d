# Shared by scripts/up.sh and scripts/test.sh. Sourced, not run.

# Debian packages: every file in scripts/deps/ lists some, one per line.
kiln_install_apt_deps() {
    local pkgs missing=()
    pkgs=$(cat scripts/deps/*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u)
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
            return 1
        fi
        echo "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Rust toolchain from rustup if cargo is missing (a fresh machine may lack it).
kiln_ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "cargo not found: install Rust (https://rustup.rs) first" >&2
        return 1
    }
}

# The host binaries, and the agent as a static binary (glibc, crt-static).
kiln_build() {
    kiln_ensure_cargo
    local profile=${KILN_PROFILE:-release}
    cargo build --locked --profile "$profile" --workspace --exclude kiln-agent
    kiln_build_agent
}

kiln_build_agent() {
    kiln_ensure_cargo
    # RUSTFLAGS with an explicit --target applies to the agent only, not to
    # build scripts and proc-macros (which cannot be static).
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --locked --profile agent -p kiln-agent --target x86_64-unknown-linux-gnu
    export KILN_AGENT_BIN="$PWD/target/x86_64-unknown-linux-gnu/agent/kiln-agent"
}
