#!/usr/bin/env bash
# Builds the guest kernel that carries the kernel's own HMM test driver
# (lib/test_hmm.c: /dev/hmm_dmirror0 and 1) and its selftest (hmm-tests), from
# Debian's linux-source-6.12 package (DESIGN.md §5). Everything the guest needs
# is built in (no modules), so it boots with the same init as Debian's kernels.
#   Scripts/guest/build-hmm-kernel.sh [--rebuild]   -> prints the kernel's directory
# The result is cached per machine, outside the work tree (a fresh clone on
# the same machine reuses it), under ${DAXMIRROR_KERNEL_CACHE:-~/.cache/daxmirror}/
# kernels/hmm-VERSION-KEY, KEY a hash of the option lists and the recipe
# version below: a machine that built it once reuses it; a fresh one needs
# about 7 minutes on 2 cores. The options are set with the
# kernel's scripts/config on top of x86_64_defconfig, not from a .config blob.
# Guest use: Scripts/guest.sh --kernel hmm ...
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${DAXMIRROR_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/daxmirror}
recipe=2  # bump when the build steps below change what is built
log() { echo "build-hmm-kernel: $*" >&2; }

# Built in (=y): console and 9p root, virtio, pmem and DAX (fsdax and
# device-dax), the filesystems, THP, userfaultfd, soft-dirty, and HMM with
# device-private memory and its test driver.
enable=(SERIAL_8250 SERIAL_8250_CONSOLE DEVTMPFS DEVTMPFS_MOUNT VIRTIO VIRTIO_PCI VIRTIO_CONSOLE
        NET_9P NET_9P_VIRTIO 9P_FS 9P_FS_POSIX_ACL EXT4_FS XFS_FS FS_DAX FS_DAX_PMD TMPFS
        MEMORY_HOTPLUG MEMORY_HOTREMOVE SPARSEMEM_VMEMMAP ZONE_DEVICE
        LIBNVDIMM BLK_DEV_PMEM ND_PFN ND_CLAIM BTT X86_PMEM_LEGACY ACPI_NFIT NVDIMM_DAX DEV_DAX DEV_DAX_PMEM
        TRANSPARENT_HUGEPAGE USERFAULTFD PTE_MARKER_UFFD_WP CHECKPOINT_RESTORE MEM_SOFT_DIRTY
        HMM_MIRROR DEVICE_PRIVATE TEST_HMM GUP_TEST HUGETLBFS PROC_PAGE_MONITOR)
# Off: what a 9p-rooted serial-console guest never uses (build time).
disable=(MODULES DRM SOUND USB_SUPPORT WLAN WIRELESS NETFILTER SCSI ATA EFI HID INPUT_MOUSE
         INPUT_JOYSTICK MEDIA_SUPPORT WATCHDOG DEBUG_INFO DEBUG_INFO_BTF KVM_GUEST_DEBUG)
key=$(printf '%s\n' "${enable[@]}" -- "${disable[@]}" "recipe $recipe" | sha256sum | cut -c1-12)

"$here/Scripts/setup.sh" --hmm >&2

# The source package: bookworm-backports' linux-source-6.12, newest version.
# shellcheck source=debian-apt.sh
source "$here/Scripts/guest/debian-apt.sh"
private_apt bookworm-backports "$cache/apt-backports"
existing=$(ls -d "$cache"/kernels/hmm-*-"$key" 2>/dev/null | head -n 1 || true)
if [[ -n $existing && -f $existing/ready && "${1:-}" != --rebuild ]]; then
    echo "$existing"
    exit 0
fi
log "updating the package list of bookworm-backports"
apt-get "${apt_opts[@]}" -qq update >&2
version=$(apt-cache "${apt_opts[@]}" show linux-source-6.12 2>/dev/null | awk '/^Version:/{print $2; exit}')
[[ -n $version ]] || { log "bookworm-backports has no linux-source-6.12"; exit 1; }
out=$cache/kernels/hmm-$version-$key
src=$cache/hmm-build/linux-source-$version
if [[ ! -f $src/Makefile ]]; then
    log "downloading linux-source-6.12 $version"
    rm -rf "$cache/hmm-build/deb" "$src"
    mkdir -p "$cache/hmm-build/deb"
    (cd "$cache/hmm-build/deb" && apt-get "${apt_opts[@]}" -qq download "linux-source-6.12=$version" >&2)
    dpkg-deb -x "$cache"/hmm-build/deb/linux-source-6.12_*.deb "$cache/hmm-build/deb/root"
    log "unpacking"
    mkdir -p "$src"
    tar -xaf "$cache"/hmm-build/deb/root/usr/src/linux-source-6.12.tar.* -C "$src" --strip-components=1
    rm -rf "$cache/hmm-build/deb"
fi

cd "$src"
# One fix to the driver: dmirror_do_update() erases xa_for_each_range(…,
# start >> PAGE_SHIFT, end >> PAGE_SHIFT), and that last index is inclusive, so
# every invalidation also drops the device's entry for the page just past the
# range. That page was not invalidated: the kernel's own HMM (hmm_range_fault,
# the notifier ranges) is exact, and only the test driver over-erases. Left in,
# the driver's fault counts would depend on invalidations of pages its device
# never mapped (a copy-on-write of the neighbour page), which no mirror can
# observe from user space. The fix erases [start, end) as the notifier means.
if ! grep -q '(end >> PAGE_SHIFT) - 1)' lib/test_hmm.c; then
    perl -0pi -e 's/(xa_for_each_range\(&dmirror->pt, pfn, entry, start >> PAGE_SHIFT,\s*)end >> PAGE_SHIFT\)/$1(end >> PAGE_SHIFT) - 1)/' lib/test_hmm.c
    grep -q '(end >> PAGE_SHIFT) - 1)' lib/test_hmm.c || { log "lib/test_hmm.c: the invalidation fix did not apply"; exit 1; }
fi
start=$(date +%s)
log "configuring (x86_64_defconfig + scripts/config)"
make -s x86_64_defconfig >&2
args=()
for o in "${enable[@]}"; do args+=(--enable "$o"); done
for o in "${disable[@]}"; do args+=(--disable "$o"); done
scripts/config "${args[@]}" --set-str LOCALVERSION "-daxmirror-hmm" --disable LOCALVERSION_AUTO
make -s olddefconfig >&2
# olddefconfig drops what it cannot satisfy: say so instead of booting a kernel without it.
missing=()
for o in "${enable[@]}"; do grep -q "^CONFIG_$o=y" .config || missing+=("$o"); done
((${#missing[@]} == 0)) || { log "the configuration lost: ${missing[*]}"; exit 1; }
log "building bzImage with $(nproc) jobs (about 7 minutes on 2 cores)"
make -s -j"$(nproc)" bzImage >&2
release=$(make -s kernelrelease)

# hmm-tests, static, from the same tree: the baseline row of the conformance table.
log "building hmm-tests"
(cd tools/testing/selftests/mm &&
    gcc -static -O2 -I ../../../.. -I ../../../../tools/include/uapi -I ../ -o hmm-tests hmm-tests.c -lrt -lpthread -lm) >&2

rm -rf "$out.tmp"
mkdir -p "$out.tmp/root/lib/modules/$release"
cp arch/x86/boot/bzImage "$out.tmp/vmlinuz"
cp tools/testing/selftests/mm/hmm-tests "$out.tmp/hmm-tests"
cp .config "$out.tmp/config"
echo "$release" > "$out.tmp/release"
# No modules: an empty modules.dep, and the kernel's own list of what is built in.
: > "$out.tmp/root/lib/modules/$release/modules.dep"
cp modules.builtin "$out.tmp/root/lib/modules/$release/modules.builtin"
touch "$out.tmp/ready"
rm -rf "$out"
mv "$out.tmp" "$out"
log "kernel $release with TEST_HMM ready in $out after $(( $(date +%s) - start )) s"
echo "$out"
