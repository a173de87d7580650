#!/usr/bin/env bash
# The demo: daxmirror on real persistent memory. Boots the QEMU pmem guest
# (emulated NVDIMM, ext4 mounted -o dax) and shows, inside it:
#   caps     what the guest kernel offers (userfaultfd, PAGEMAP_SCAN, DAX mounts)
#   devices  the NVDIMM namespace, read through libndctl, and what backs it
#   map      a new sparse 64 MiB file on the DAX mount, filled and persisted:
#            real pmem (MAP_SYNC accepted), and ext4 maps the written file in
#            2 MiB PMD entries (32 of them), seen through PAGEMAP_SCAN
#   run      the mirror at work on a DAX file (Scenarios/demo_dax.scn): a hole
#            read gives ONE zero-page PMD entry, a write two PMD entries with
#            the kernel's PFNs, the snapshot picture, mprotect dropping
#            entries, and `check` clean against pagemap
# then the same `map` on the host, where the file is not pmem and says why.
#   Scripts/demo.sh [--kernel stable|backports|newest] [--fs ext4|xfs] [--pmem nvdimm|memmap]
# On a machine whose own kernel has DAX (memmap= or a real NVDIMM), no QEMU:
#   Scripts/demo.sh --host DIR     DIR on a DAX mount (found by itself when
#                                  one DAX mount exists and no option is given)
set -euo pipefail
cd "$(dirname "$0")/.."
. Scripts/lib.sh
host=""
if [[ ${1:-} == --host ]]; then
    host=${2:?"usage: Scripts/demo.sh --host DIR (a directory on a DAX mount)"}
elif (($# == 0)); then
    # This machine's own DAX mounts (memmap= or an NVDIMM): use one rather than boot a guest.
    daxmounts=()
    while read -r _ m _ opts _; do
        if [[ $opts == *dax* ]] && is_dax_mount "$m"; then daxmounts+=("$m"); fi
    done < /proc/mounts
    if ((${#daxmounts[@]} == 1)); then host=${daxmounts[0]}; echo "demo: this machine has a DAX mount, $host: running there (no QEMU)"; fi
    if ((${#daxmounts[@]} > 1)); then echo "demo: several DAX mounts (${daxmounts[*]}): pick one with --host DIR" >&2; exit 2; fi
fi
# Inside a read-only tree (the pmem guest shares the host's root read-only)
# the binary already built is used, and said to be.
build() {
    if [[ -w . ]]; then swift build "$@" 2>&1 | tail -n 1
    else echo "demo: $PWD is read-only: using the binaries built there"; fi
}
bin=$daxmirror_bin
if [[ -n $host ]]; then
    is_dax_mount "$host" \
        || { echo "demo: $host is not on a DAX mount (see /proc/mounts): give a directory on one, or run without --host for the QEMU guest" >&2; exit 2; }
    Scripts/setup.sh
    build
    d=$(mktemp -d "$host/daxmirror-demo.XXXXXX")
    trap 'rm -rf "$d"' EXIT
    set -x
    "$bin" caps --dir "$d"
    "$bin" devices
    "$bin" map "$d/demo" --create --sparse --size 64M --fill 0x5a
    "$bin" run --text --dir "$d" "$PWD/Scenarios/demo_dax.scn"
    exit 0
fi
Scripts/setup.sh --guest
build
Scripts/guest.sh "$@" -- sh -c "
set -e
echo '$ daxmirror caps --dir /mnt'; $bin caps --dir /mnt; echo
echo '$ daxmirror devices'; $bin devices; echo
echo '$ daxmirror map /mnt/demo --create --sparse --size 64M --fill 0x5a'; $bin map /mnt/demo --create --sparse --size 64M --fill 0x5a; echo
echo '$ daxmirror run --text Scenarios/demo_dax.scn'; $bin run --text --dir /mnt $PWD/Scenarios/demo_dax.scn
"
echo
echo "On the host, the same command on a regular file:"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "\$ daxmirror map $tmp/demo --create --size 64M"
"$bin" map "$tmp/demo" --create --size 64M
