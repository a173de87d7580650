#!/usr/bin/env bash
# Installs every Debian package daxmirror needs, on the host. Idempotent: a
# second run installs nothing and makes no network request.
#   Scripts/setup.sh           build + host tests
#   Scripts/setup.sh --guest   also what the QEMU pmem guest needs (Scripts/guest.sh)
#   Scripts/setup.sh --hmm     and what building the HMM test kernel needs
set -euo pipefail

# prometheus: promtool checks `daxmirror metrics`, and the test command has a real
# Prometheus server scrape it (curl queries its HTTP API).
# zsh, fish, man-db, systemd: Scripts/check-install.sh loads the completions in
# their shells, renders the manual page and verifies the service unit.
packages=(libpmem-dev libndctl-dev libdaxctl-dev pkg-config strace tmux prometheus curl zsh fish man-db systemd)
if [[ "${1:-}" == "--guest" || "${1:-}" == "--hmm" ]]; then
    packages+=(qemu-system-x86 busybox-static e2fsprogs xfsprogs ndctl daxctl cpio xz-utils zstd kmod)
fi
# Building the guest kernel with the kernel's HMM test driver (Scripts/guest/build-hmm-kernel.sh).
if [[ "${1:-}" == "--hmm" ]]; then
    packages+=(make flex bison bc libelf-dev libssl-dev)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "setup: all ${#packages[@]} packages present"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
