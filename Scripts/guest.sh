#!/usr/bin/env bash
# Runs a command inside a QEMU guest that has real DAX: an emulated NVDIMM (or
# a memmap= region of the guest's RAM) in fsdax mode with ext4 or xfs mounted
# -o dax at /mnt (the command's working directory). The host's root is shared read-only over 9p and the command runs
# in a chroot of it, so host-built binaries (daxmirror, the test bundle) run
# unchanged. The command's output streams to stdout; its exit status is ours.
#
#   Scripts/guest.sh [options] -- COMMAND [ARG...]
#
#   --kernel stable|backports|newest|hmm  Debian's 6.1 / 6.12 (default) / newest packaged /
#                                     6.12 built here with the kernel's HMM test driver
#   --fs ext4|xfs                     filesystem on the pmem (default ext4)
#   --pmem nvdimm|memmap              the pmem: QEMU's emulated NVDIMM backed by a host
#                                     file (default), or memmap=SIZE!OFFSET: RAM the
#                                     guest kernel hands to the pmem driver as a legacy
#                                     e820 region (nd_e820; no NFIT, a raw namespace
#                                     made fsdax) — lost at every power-off
#   --memmap SIZE!OFFSET              the memmap= range (implies --pmem memmap); default
#                                     --pmem-size at 1G, QEMU's RAM grown by that size
#   --no-mkfs                         use the filesystem already on the pmem (a memmap=
#                                     guest after a power-off finds none: exit 3)
#   --pmem-size SIZE                  NVDIMM size for qemu, e.g. 1G (default 1G)
#   --mem SIZE                        guest RAM the guest may use (default 2G)
#   --nsmode fsdax|devdax             namespace mode (devdax: no filesystem, /dev/dax0.0)
#   --align SIZE                      namespace alignment for ndctl (e.g. 1G for devdax PUDs)
#   --keep-image PATH                 back the NVDIMM with PATH and keep it; an existing
#                                     PATH is reused as is (no mkfs) unless --mkfs
#   --mkfs                            make the filesystem even on a kept image
#   --powercut                        do not unmount after the command (crash tests)
#   --timeout SECONDS                 kill a guest that runs longer (default 900)
#   --accel auto|kvm|tcg              default auto: KVM only if a probe boot works
#
# Exit status: the command's; 124 if the guest timed out and was killed; 125
# if the guest could not set up (message on stderr); 126 if QEMU failed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kernel=backports fs=ext4 pmem_size=1G mem=2G nsmode=fsdax align="" keep="" mkfs="" powercut=0
timeout_s=900 accel=auto pmem=nvdimm memmap=""
die() { echo "guest.sh: $*" >&2; exit 125; }
while (($#)); do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --fs) fs=$2; shift 2 ;;
        --pmem) pmem=$2; shift 2 ;;
        --memmap) memmap=$2; pmem=memmap; shift 2 ;;
        --no-mkfs) mkfs=0; shift ;;
        --pmem-size) pmem_size=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --nsmode) nsmode=$2; shift 2 ;;
        --align) align=$2; shift 2 ;;
        --keep-image) keep=$2; shift 2 ;;
        --mkfs) mkfs=1; shift ;;
        --powercut) powercut=1; shift ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
(($#)) || die "no command: Scripts/guest.sh [options] -- COMMAND"
case "$fs" in ext4|xfs) ;; *) die "--fs must be ext4 or xfs" ;; esac
case "$nsmode" in fsdax|devdax) ;; *) die "--nsmode must be fsdax or devdax" ;; esac
case "$pmem" in nvdimm|memmap) ;; *) die "--pmem must be nvdimm or memmap" ;; esac
bytes() { numfmt --from=iec "$1" 2>/dev/null || die "$2 $1 is not a size (e.g. 512M, 1G)"; }
qemu_mem=$mem
if [[ $pmem == memmap ]]; then
    # The reserved range must be RAM the guest has and does not otherwise use:
    # below it the kernel and its early allocations, above it the initramfs,
    # which QEMU loads at the top of RAM, and the guest's own working memory.
    [[ -z $keep ]] || die "--keep-image has no image to keep with --pmem memmap (it is RAM, lost at every power-off); drop one of them"
    [[ $nsmode == fsdax ]] || die "--pmem memmap gives an fsdax namespace here; use --pmem nvdimm for --nsmode devdax"
    [[ -n $memmap ]] || memmap="$pmem_size!1G"
    [[ $memmap =~ ^([0-9]+[KMGT]?)!([0-9]+[KMGT]?)$ ]] || die "--memmap $memmap is not SIZE!OFFSET (e.g. 512M!1G)"
    mm_size=$(bytes "${BASH_REMATCH[1]}" "--memmap size") mm_off=$(bytes "${BASH_REMATCH[2]}" "--memmap offset")
    two_m=$((2 << 20)) low=$((1 << 30)) spare=$((512 << 20)) below_hole=$((3 << 30))
    (( mm_size % two_m == 0 && mm_off % two_m == 0 && mm_size > 0 )) \
        || die "--memmap $memmap is not 2 MiB-aligned (DAX maps 2 MiB pages): give a size and an offset that are multiples of 2M, e.g. 512M!1G"
    (( mm_off >= low )) || die "--memmap $memmap starts below 1 GiB, where the guest kernel and its early allocations live: use an offset of 1G or more"
    (( mm_off + mm_size <= below_hole )) || die "--memmap $memmap ends past 3 GiB, where the PC machine's RAM stops below 4 GiB: use a smaller size or offset"
    # QEMU's RAM: the guest's own --mem plus the reserved range, and no less than the range's end plus room above it.
    qemu_mem_b=$(( $(bytes "$mem" --mem) + mm_size ))
    (( qemu_mem_b >= mm_off + mm_size + spare )) || qemu_mem_b=$(( mm_off + mm_size + spare ))
    (( qemu_mem_b - mm_size >= low )) || die "--mem $mem leaves the guest under 1 GiB of its own RAM beside the memmap= range: give more --mem"
    qemu_mem=$(( qemu_mem_b >> 20 ))M
    pmem_size=${BASH_REMATCH[1]}
fi

"$here/Scripts/setup.sh" --guest >&2
kdir=$("$here/Scripts/guest/fetch-kernel.sh" "$kernel") || die "cannot fetch the $kernel kernel"
initrd=$("$here/Scripts/guest/build-initramfs.sh" "$kdir") || die "cannot build the initramfs"
release=$(cat "$kdir/release")
vmlinuz=$kdir/vmlinuz

cache=${DAXMIRROR_CACHE:-$here/.cache}
mkdir -p "$cache/runs"
run=$(mktemp -d "$cache/runs/run.XXXXXX")
image=$run/pmem.img
cleanup() {
    [[ -n ${qpid:-} ]] && kill -9 "$qpid" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $pmem == memmap ]]; then
    :  # no image: the pmem is the guest's RAM
elif [[ -n $keep ]]; then
    image=$keep
    if [[ -e $image ]]; then
        [[ -n $mkfs ]] || mkfs=0
    else
        truncate -s "$pmem_size" "$image"
    fi
    # The image's size decides the NVDIMM's size.
    pmem_size=$(stat -c %s "$image")
else
    truncate -s "$pmem_size" "$image"
fi

# The command runs in /mnt: a relative program path means the host's, so make it absolute.
if [[ $1 == */* && $1 != /* && -e $1 ]]; then
    set -- "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" "${@:2}"
fi

# The command, quoted, in a script the guest runs from the shared root.
{
    printf 'cd /mnt 2>/dev/null || cd /\n'
    printf 'export PATH=%q\n' "/opt/swift/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    [[ -n ${DAXMIRROR_GUEST_ENV:-} ]] && printf 'export %s\n' $DAXMIRROR_GUEST_ENV
    printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$run/cmd.sh"

case "$here$run" in *" "*) die "the work tree's path contains a space; the guest's kernel command line cannot carry it" ;; esac
cmdline="console=ttyS0 quiet loglevel=3 panic=-1 oops=panic dm.run=$run/cmd.sh dm.tree=$here dm.fs=$fs dm.nsmode=$nsmode dm.pmem=$pmem"
[[ $pmem == memmap ]] && cmdline+=" memmap=$memmap"
[[ -n $align ]] && cmdline+=" dm.align=$align"
# The NVDIMM's backing must be aligned at least as the namespace (1 GiB for PUDs).
backend_align=2M
[[ $align == 1G ]] && backend_align=1G
[[ $mkfs == 0 ]] && cmdline+=" dm.mkfs=0"
((powercut)) && cmdline+=" dm.powercut=1"

if [[ $pmem == nvdimm ]]; then
    machine=(-machine pc,nvdimm=on -m "$mem,slots=2,maxmem=16G"
        -object "memory-backend-file,id=pmem1,share=on,mem-path=$image,size=$pmem_size,align=$backend_align"
        -device nvdimm,id=nvdimm1,memdev=pmem1)
else
    machine=(-machine pc -m "$qemu_mem")
fi
qemu_base=(qemu-system-x86_64 "${machine[@]}" -smp 2
    -kernel "$vmlinuz" -initrd "$initrd"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -display none -monitor none -no-reboot)

# KVM only when it really runs a guest: /dev/kvm exists on machines where
# every guest kernel dies under it, so boot this kernel once with KVM and a
# probe init that exits at once; cache the verdict for this host and kernel.
choose_accel() {
    [[ $accel == tcg ]] && { echo tcg; return; }
    local verdict_file="$cache/kvm-verdict-$(uname -r)-$release"
    if [[ $accel == auto && -f $verdict_file ]]; then cat "$verdict_file"; return; fi
    local v=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
        # A failing KVM pauses the guest ("KVM internal error ... emulation
        # failure") instead of exiting: watch the log and stop at the first sign.
        "${qemu_base[@]}" -cpu host -accel kvm -append "console=ttyS0 quiet dm.probe=1" \
            </dev/null >"$run/kvm-probe.log" 2>&1 &
        local pid=$! rc="" i
        for ((i = 0; i < 200; i++)); do
            if ! kill -0 "$pid" 2>/dev/null; then wait "$pid" && rc=0 || rc=$?; break; fi
            grep -qE "KVM internal error|emulation failure|failed to initialize kvm" "$run/kvm-probe.log" && break
            sleep 0.1
        done
        [[ -z $rc ]] && { kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
        [[ $rc == 85 ]] && v=kvm   # (42 << 1) | 1: the probe init ran
    fi
    if [[ $accel == kvm && $v != kvm ]]; then
        die "KVM requested but a probe boot under KVM failed (see $run/kvm-probe.log)"
    fi
    echo "$v" > "$verdict_file"
    echo "$v"
}
chosen=$(choose_accel)
if [[ $chosen == kvm ]]; then
    accel_args=(-cpu host -accel kvm)
    why="KVM works"
else
    accel_args=(-cpu max -accel tcg,thread=multi)
    if [[ $accel == tcg ]]; then why="--accel tcg"
    elif [[ -e /dev/kvm ]]; then why="/dev/kvm exists but a probe boot failed under it"
    else why="no /dev/kvm"; fi
fi
if [[ $pmem == memmap ]]; then what="memmap=$memmap RAM (lost at power-off; QEMU RAM $qemu_mem)"
else what="$(numfmt --from=iec --to=iec "$pmem_size") NVDIMM"; fi
echo "guest.sh: kernel $release, $fs on $what ($nsmode), accel $chosen ($why), timeout ${timeout_s}s" >&2

start=$(date +%s.%N)
# Boot, run, and wait; returns QEMU's exit status. The console streams to our
# stdout without the tty's carriage returns, and is logged to console.log.
boot() {
    rm -f "$run/console.log" "$run/timed-out"
    set +e
    "${qemu_base[@]}" "${accel_args[@]}" -append "$cmdline" \
        -chardev "stdio,id=console,signal=off,logfile=$run/console.log" -serial chardev:console \
        </dev/null 2>"$run/qemu.err" > >(stdbuf -oL tr -d '\r') &
    qpid=$!
    # The watchdog must not hold our stdout open, and must take its sleep with it.
    (
        exec >/dev/null 2>&1
        sleep "$timeout_s" &
        spid=$!
        trap 'kill $spid; exit 0' TERM
        wait $spid
        kill -9 "$qpid" && echo timeout > "$run/timed-out"
    ) &
    watchdog=$!
    wait "$qpid"
    local rc=$?
    qpid=""
    kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
    set -e
    return $rc
}
# Multi-threaded TCG occasionally crashes a guest kernel in early boot (an
# int3 oops while the kernel patches its own text, docs/kernel-facts.md §5). A guest that
# died before it came up ran nothing, so booting it again is safe: up to twice.
for attempt in 1 2 3; do
    rc=0
    boot || rc=$?
    if [[ -f $run/timed-out ]] || (( rc & 1 )) || grep -q "^guest: up" "$run/console.log" 2>/dev/null; then break; fi
    (( attempt < 3 )) || break
    echo "guest.sh: the guest kernel died during boot ($(grep -aoE 'Oops: [^[]*|Kernel panic[^[]*' "$run/console.log" | head -n 1)); booting again (attempt $((attempt + 1)) of 3)" >&2
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
if [[ -f $run/timed-out ]]; then
    echo "guest.sh: the guest ran past ${timeout_s}s and was killed" >&2
    exit 124
fi
if (( rc & 1 )); then
    code=$(( rc >> 1 ))
    echo "guest.sh: command exited $code after ${elapsed}s" >&2
    [[ $code == 125 ]] && echo "guest.sh: guest setup failed (see the guest: lines above)" >&2
    exit "$code"
fi
echo "guest.sh: QEMU exited $rc without a status from the guest: $(tail -n 3 "$run/qemu.err" | tr '\n' ' ')" >&2
exit 126
