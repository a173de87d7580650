#!/usr/bin/env bash
# Builds the guest kernel that carries the kernel's own HMM test driver
# (lib/test_hmm.c: /dev/hmm_dmirror0 and 1) and its selftest (hmm-tests), from
# Debian's linux-source-6.12 package (docs/kernel-facts.md §6). Everything the guest needs
# is built in (no modules), so it boots with the same init as Debian's kernels.
#   Scripts/guest/build-hmm-kernel.sh [--rebuild]   -> prints the kernel's directory
# The result is cached per machine, outside the work tree (a fresh clone on
# the same machine reuses it), under ${DAXMIRROR_KERNEL_CACHE:-~/.cache/daxmirror}/
# kernels/hmm-VERSION-KEY, KEY a hash of the option lists and the recipe
# version below: a machine that built it once reuses it; a fresh one needs
# a few minutes on 2 cores. The options are set with the kernel's
# scripts/config on top of allnoconfig, not from a .config blob.
# Guest use: Scripts/guest.sh --kernel hmm ...
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cache=${DAXMIRROR_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/daxmirror}
recipe=3  # bump when the build steps below change what is built
log() { echo "build-hmm-kernel: $*" >&2; }

# The configuration starts from allnoconfig and turns on only what the guest
# uses, each option with why it is there (x86_64_defconfig built ~3x as much:
# 23 minutes on a fresh 2-core machine). Everything is built in (=y).
enable=(
    # The kernel itself: 64-bit (allnoconfig on ARCH=x86 is 32-bit), SMP for -smp 2, 64-bit ELF programs and #! scripts,
    # the initramfs (gzip), printk and the serial console the host reads.
    64BIT SMP BINFMT_ELF BINFMT_SCRIPT BLK_DEV_INITRD RD_GZIP PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
    HIGH_RES_TIMERS
    # What busybox, bash, Swift's runtime, Dispatch, Foundation and the tests call.
    MULTIUSER FUTEX EPOLL SIGNALFD TIMERFD EVENTFD SHMEM AIO ADVISE_SYSCALLS MEMBARRIER RSEQ
    POSIX_TIMERS SYSVIPC FILE_LOCKING INOTIFY_USER FHANDLE UNIX98_PTYS
    # process_vm_readv/writev: no longer the device's path to anonymous memory (a
    # guarded memcpy is); kept so that the cached kernel's key stays the same.
    CROSS_MEMORY_ATTACH
    # The wall clock (file times, logs) from the emulated CMOS clock.
    RTC_CLASS RTC_DRV_CMOS
    PROC_FS PROC_SYSCTL SYSFS TMPFS TMPFS_POSIX_ACL DEVTMPFS DEVTMPFS_MOUNT
    # isa-debug-exit: the guest writes its exit status to port 0xf4 through /dev/port.
    DEVMEM DEVPORT
    # The watchdog's diagnostics: kernel stacks (/proc/PID/stack) and sysrq-w.
    KALLSYMS STACKTRACE MAGIC_SYSRQ
    # Loopback (Foundation's run loop wakes itself over UDP; local servers) and
    # Unix sockets (tmux).
    NET INET UNIX
    # The host's root over 9p on virtio-pci.
    PCI VIRTIO_MENU VIRTIO VIRTIO_PCI NET_9P NET_9P_VIRTIO 9P_FS 9P_FS_POSIX_ACL
    # pmem: the emulated NVDIMM (ACPI NFIT) and memmap= (legacy e820) regions,
    # fsdax and device-dax namespaces, ext4 and xfs with DAX (PMD faults).
    ACPI BLOCK BLK_DEV LIBNVDIMM ACPI_NFIT BLK_DEV_PMEM ND_PFN ND_CLAIM BTT X86_PMEM_LEGACY
    NVDIMM_DAX DEV_DAX DEV_DAX_PMEM FS_DAX FS_DAX_PMD EXT4_FS XFS_FS
    MEMORY_HOTPLUG MEMORY_HOTREMOVE SPARSEMEM_VMEMMAP ZONE_DEVICE
    # What the mirror reads and does: THP, userfaultfd with WP markers,
    # soft-dirty (needs CHECKPOINT_RESTORE), pagemap, hugetlbfs.
    TRANSPARENT_HUGEPAGE USERFAULTFD PTE_MARKER_UFFD_WP CHECKPOINT_RESTORE MEM_SOFT_DIRTY
    PROC_PAGE_MONITOR HUGETLBFS
    # Pages migrate behind the mirror's back as on Debian's kernels (the
    # revalidation path must meet that).
    COMPACTION MIGRATION
    # The kernel's HMM test driver and what hmm-tests uses beside it (gup_test in debugfs).
    HMM_MIRROR DEVICE_PRIVATE RUNTIME_TESTING_MENU TEST_HMM DEBUG_FS GUP_TEST
)
disable=(MODULES)
key=$(printf '%s\n' "${enable[@]}" -- "${disable[@]}" "recipe $recipe" | sha256sum | cut -c1-12)

"$here/Scripts/setup.sh" --hmm >&2

# The source package: bookworm-backports' linux-source-6.12, newest version.
# shellcheck source=debian-apt.sh
source "$here/Scripts/guest/debian-apt.sh"
private_apt bookworm-backports "$cache/apt-backports"
# hmm-tests linked dynamically, from the same tree: the program `daxmirror
# emulate` runs (a preloaded library reaches only a dynamic program). Built
# beside the kernel, and added to a kernel built before it existed.
dynamic_tests() {  # dynamic_tests SOURCE OUT
    (cd "$1/tools/testing/selftests/mm" &&
        gcc -O2 -I ../../../.. -I ../../../../tools/include/uapi -I ../ -o "$2/hmm-tests-dynamic.tmp" hmm-tests.c -lrt -lpthread -lm) >&2 &&
        mv "$2/hmm-tests-dynamic.tmp" "$2/hmm-tests-dynamic"
}
existing=$(ls -d "$cache"/kernels/hmm-*-"$key" 2>/dev/null | head -n 1 || true)
if [[ -n $existing && -f $existing/ready && "${1:-}" != --rebuild ]]; then
    if [[ ! -x $existing/hmm-tests-dynamic ]]; then
        version=${existing#"$cache"/kernels/hmm-}
        version=${version%-"$key"}
        [[ -f $cache/hmm-build/linux-source-$version/Makefile ]] || { log "the source of $existing is gone: run with --rebuild"; exit 1; }
        log "building hmm-tests (dynamic) for the cached kernel"
        dynamic_tests "$cache/hmm-build/linux-source-$version" "$existing"
    fi
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
log "configuring (allnoconfig + scripts/config)"
make -s allnoconfig >&2
args=()
for o in "${enable[@]}"; do args+=(--enable "$o"); done
for o in "${disable[@]}"; do args+=(--disable "$o"); done
scripts/config "${args[@]}" --set-str LOCALVERSION "-daxmirror-hmm" --disable LOCALVERSION_AUTO
make -s olddefconfig >&2
# olddefconfig drops what it cannot satisfy: say so instead of booting a kernel without it.
missing=()
for o in "${enable[@]}"; do grep -q "^CONFIG_$o=y" .config || missing+=("$o"); done
((${#missing[@]} == 0)) || { log "the configuration lost: ${missing[*]}"; exit 1; }
log "building bzImage with $(nproc) jobs (a few minutes on 2 cores)"
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
dynamic_tests "$src" "$out.tmp"
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
