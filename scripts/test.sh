#!/usr/bin/env bash
# Run the whole test suite: unit tests, guest-program tests on /dev/kvm, image tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
