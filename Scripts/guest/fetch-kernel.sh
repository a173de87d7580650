#!/usr/bin/env bash
# Fetches and unpacks one of Debian's kernels for the pmem guest, without
# installing it on the host:
#   Scripts/guest/fetch-kernel.sh stable|backports|newest [--refresh]
# stable    = bookworm's 6.1 (no WP_ASYNC, no PAGEMAP_SCAN: the old-kernel case)
# backports = bookworm-backports' 6.12 (the default guest kernel)
# newest    = trixie-backports' newest packaged kernel (7.x today)
# hmm       = 6.12 built here with the kernel's HMM test driver (build-hmm-kernel.sh)
# The newest version in each suite is picked at fetch time; the result is
# cached under .cache/kernels/NAME and reused until --refresh.
# Uses a private apt state (its own sources file, lists and archives under
# .cache/apt-NAME) whose URIs are copied from the host's Debian sources, so
# the host's apt configuration is never changed.
# Prints the unpacked kernel's directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
name=${1:?usage: fetch-kernel.sh stable|backports|newest [--refresh]}
refresh=${2:-}
case "$name" in
    hmm) exec "$here/Scripts/guest/build-hmm-kernel.sh" ;;  # built here, not fetched
    stable) suite=bookworm ;;
    backports) suite=bookworm-backports ;;
    newest) suite=trixie-backports ;;
    *) echo "fetch-kernel: unknown kernel '$name' (stable, backports, newest)" >&2; exit 2 ;;
esac
cache=${DAXMIRROR_CACHE:-$here/.cache}
out=$cache/kernels/$name
if [[ -f $out/ready && "$refresh" != "--refresh" ]]; then
    echo "$out"
    exit 0
fi
log() { echo "fetch-kernel[$name]: $*" >&2; }

# shellcheck source=debian-apt.sh
source "$here/Scripts/guest/debian-apt.sh"
private_apt "$suite" "$cache/apt-$name"
log "updating the package list of $suite"
apt-get "${apt_opts[@]}" -qq update >&2

# linux-image-amd64 -> linux-image-VERSION-amd64 (-> linux-binary/linux-modules on newer packaging).
pkgs=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances --no-pre-depends linux-image-amd64 2>/dev/null \
    | grep -E '^linux-(image|binary|modules)-[0-9]' | grep -v -- '-dbg' | sort -u)
[[ -n $pkgs ]] || { echo "fetch-kernel: no linux-image-amd64 in $suite" >&2; exit 1; }
log "downloading $(echo $pkgs)"
rm -rf "$out.tmp"
mkdir -p "$out.tmp/debs" "$out.tmp/root"
(cd "$out.tmp/debs" && apt-get "${apt_opts[@]}" -qq download $pkgs >&2)
for d in "$out.tmp"/debs/*.deb; do dpkg-deb -x "$d" "$out.tmp/root"; done
rm -rf "$out.tmp/debs"
# boot/vmlinuz-RELEASE, or (newer packaging) usr/lib/modules/RELEASE/vmlinuz.
vmlinuz=$( (ls "$out.tmp"/root/boot/vmlinuz-* "$out.tmp"/root/usr/lib/modules/*/vmlinuz 2>/dev/null || true) | head -n 1)
[[ -n $vmlinuz ]] || { echo "fetch-kernel: no vmlinuz in $pkgs" >&2; exit 1; }
if [[ $vmlinuz == */boot/vmlinuz-* ]]; then
    release=${vmlinuz##*/vmlinuz-}
else
    release=$(basename "$(dirname "$vmlinuz")")
fi
cp "$vmlinuz" "$out.tmp/vmlinuz"
[[ -d $out.tmp/root/lib/modules/$release || -d $out.tmp/root/usr/lib/modules/$release ]] \
    || { echo "fetch-kernel: no modules for $release" >&2; exit 1; }
# Merged-/usr packaging puts modules in usr/lib/modules; depmod looks in lib/modules.
[[ -e $out.tmp/root/lib ]] || ln -s usr/lib "$out.tmp/root/lib"
log "depmod $release"
depmod -b "$out.tmp/root" "$release"
echo "$release" > "$out.tmp/release"
touch "$out.tmp/ready"
rm -rf "$out"
mv "$out.tmp" "$out"
log "kernel $release ready in $out"
echo "$out"
