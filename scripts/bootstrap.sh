#!/usr/bin/env bash
# Installs everything wslnet needs to build and test on Debian 12 (root, rustup present):
#   - Debian packages: LLVM 22 dev libs (for bpf-linker) and the real components the tests use
#   - the pinned Rust toolchain (rust-toolchain.toml) with rust-src, clippy, rustfmt
#   - bpf-linker built against LLVM 22 (rustc 1.98's LLVM major)
# Idempotent: skips what is present. Fails with the exact command to run when it cannot install.
set -euo pipefail

TOOLCHAIN=1.98.0
BPF_LINKER_VERSION=0.13.0
APT_PACKAGES=(
  # bpf-linker build
  llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev
  # the lab and the tests: real components, as a user would have them
  iproute2 iputils-ping iperf3 nftables openssh-server openssh-client curl openssl
  prometheus tcpdump python3 ethtool
  # doctor's tests: a real resolver (the binary only: dnsmasq-base starts no service)
  dnsmasq-base
  # packaging tests: systemd-analyze (verify, security, syscall-filter), strace (the unit's
  # system-call filter against what the agent calls)
  systemd strace
  # cargo xtask package: checks the .deb
  lintian
)

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root (apt-get, BPF and network namespaces need it): sudo $0"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed; run it by hand and retry"
  # Debian's prometheus and openssh-server start system services on install; keep them off,
  # the tests start their own instances inside namespaces.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed; run: apt-get install -y ${missing[*]}"
  rm -f /usr/sbin/policy-rc.d; trap - EXIT
fi

command -v rustup >/dev/null || die "rustup not found; install it from the rustup package or rustup.rs, then retry"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  say "installing Rust $TOOLCHAIN with rust-src, clippy, rustfmt"
  rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt \
    || die "run: rustup toolchain install $TOOLCHAIN --component rust-src,clippy,rustfmt"
fi
for c in rust-src clippy rustfmt; do
  rustup component list --toolchain "$TOOLCHAIN" --installed | grep -q "^$c" \
    || rustup component add --toolchain "$TOOLCHAIN" "$c"
done

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$cargo_bin/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about 3 minutes)"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo "+$TOOLCHAIN" install bpf-linker --version "$BPF_LINKER_VERSION" \
    --locked --no-default-features --features llvm-22 \
    || die "run: PATH=/usr/lib/llvm-22/bin:\$PATH cargo +$TOOLCHAIN install bpf-linker --locked --no-default-features --features llvm-22"
fi
say "toolchain ready: $(rustup run "$TOOLCHAIN" rustc --version), $("$cargo_bin/bpf-linker" --version)"
