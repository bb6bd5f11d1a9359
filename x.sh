#!/usr/bin/env bash
# wslnet's one entry point on a fresh Debian 12 machine (root, rustup):
#   ./x.sh demo    the black-hole demo in private network namespaces
#   ./x.sh test    the whole test suite (fmt, clippy, unit, BPF, namespaces, fuzz, .deb, VM)
# It installs what is missing first (scripts/bootstrap.sh), then runs `cargo xtask <command>`.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec cargo xtask "$@"
