#!/usr/bin/env bash
# The demo: daxmirror on real persistent memory. Boots the QEMU pmem guest
# (emulated NVDIMM, ext4 mounted -o dax) and shows, inside it:
#   caps     what the guest kernel offers (userfaultfd, PAGEMAP_SCAN, DAX mounts)
#   devices  the NVDIMM namespace, read through libndctl
#   map      a new sparse 64 MiB file on the DAX mount, filled and persisted:
#            real pmem (MAP_SYNC accepted), and ext4 maps the written file in
#            2 MiB PMD entries (32 of them), seen through PAGEMAP_SCAN
#   run      the mirror at work on a DAX file (Scenarios/demo_dax.scn): a hole
#            read gives ONE zero-page PMD entry, a write two PMD entries with
#            the kernel's PFNs, the snapshot picture, mprotect dropping
#            entries, and `check` clean against pagemap
# then the same `map` on the host, where the file is not pmem and says why.
#   Scripts/demo.sh [--kernel stable|backports|newest] [--fs ext4|xfs]
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh --guest
swift build 2>&1 | tail -n 1
bin=$PWD/.build/debug/daxmirror
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
