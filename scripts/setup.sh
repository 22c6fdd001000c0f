#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for ferrovm: system packages, then the build.
# Idempotent: packages already installed are not reinstalled; cargo only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(grep -v '^\s*#' scripts/apt-packages.txt | awk 'NF {print $1}')
missing_packages() {
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
}
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing_packages
if ((${#missing[@]} == 0)); then
    echo "setup: system packages already present"
fi
# Two rounds: installing one package can remove another (Debian's qemu-system-x86 7.2
# displaces a newer preinstalled qemu-utils); the second round puts it back.
for round in 1 2; do
    ((${#missing[@]})) || break
    echo "setup: installing ${missing[*]}"
    [ "$round" = 1 ] && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    missing_packages
done
if ((${#missing[@]})); then
    echo "setup: still missing after installing: ${missing[*]}" >&2
    exit 1
fi

cargo build --release --workspace --all-targets
echo "setup: done (binary: target/x86_64-unknown-linux-gnu/release/ferrovm)"
