#!/bin/bash
# Runs inside the TEST_HMM guest (Scripts/bench.sh --kernel boots it): the
# kernel's own device against daxmirror's on the same work, side by side.
#   bench-kernel.sh C-BENCH SWIFT-BENCH RUNS
# Prints "kernel-row: NAME C SWIFT" lines for Scripts/bench.sh to format.
set -euo pipefail
cbench=$1 sbench=$2 runs=$3
[[ -e /dev/hmm_dmirror0 ]] || { echo "bench-kernel.sh: no /dev/hmm_dmirror0 (boot the hmm kernel)" >&2; exit 2; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for vmas in 0 8000; do
    c=$(for _ in $(seq "$runs"); do "$cbench" dmirror $vmas 2000; done | median)
    s=$(for _ in $(seq "$runs"); do "$sbench" hit anon $vmas 2000; done | median)
    echo "kernel-row: hit-$vmas $c $s"
done
# Device-private memory: 64 MiB migrated to the device and read back by the
# CPU, the kernel's device (MIGRATE_TO_DEV, migrate_to_ram at each fault)
# against daxmirror's. Medians of the totals; each side's split from its median run.
# Both pinned to one vCPU, as the host's rows: daxmirror's faulting thread and
# its handler then share it (on two vCPUs each page's wake-up crosses CPUs,
# which under emulation costs 2-3x the whole way back).
split() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
k=$(for _ in $(seq "$runs"); do taskset -c 0 "$cbench" kdevmem 64; done | split)
d=$(for _ in $(seq "$runs"); do taskset -c 0 "$sbench" devmem 64; done | split)
set -- $k $d
echo "kernel-row: devmem $1 $4 $2 $3 $5 $6"
# Bulk: 512 MiB of a file on the DAX mount, mirrored in PMD entries, against
# memcpy of the same bytes out of the CPU's mapping.
dir=${DAXMIRROR_DAX_DIR:-/mnt}
c=$("$cbench" memcpy-file "$dir/bench-c.dat" 512)
# (no process substitution: the guest has no /dev/fd)
set -- $("$sbench" bulk-file "$dir/bench-s.dat" 512)
echo "kernel-row: bulk-dax $c $1 $2"
# The observer's cost where soft-dirty exists (Debian's kernels have it).
echo "kernel-row: observer $("$sbench" observer 64 256)"
