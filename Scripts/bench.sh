#!/usr/bin/env bash
# Benchmarks: daxmirror's Swift fault tracking against a C baseline that makes
# the same system calls, both built and run here, in the same invocation, with
# the same CPU placement (both pinned to one CPU: the faulting thread and the
# handler then share it, the fast case; DESIGN.md §4 explains why placement
# matters more than the language). Prints each ratio Swift/C (>= 0.9 is the goal).
#   Scripts/bench.sh [--runs 5]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
[[ ${1:-} == --runs ]] && runs=$2
Scripts/setup.sh >/dev/null
swift build -c release --product daxmirror-bench 2>&1 | tail -n 1
cbench=$(mktemp)
trap 'rm -f "$cbench"' EXIT
gcc -O2 -Wall -o "$cbench" Benchmarks/baseline/bench.c -lpthread
sbench=.build/release/daxmirror-bench
cpu=0
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "placement: both pinned to CPU $cpu (taskset -c $cpu); $runs runs each, medians; kernel $(uname -r)"
pages=65536
c=$(for _ in $(seq "$runs"); do taskset -c $cpu "$cbench" missing $pages; done | median)
s=$(for _ in $(seq "$runs"); do taskset -c $cpu "$sbench" missing $pages; done | median)
echo "anon MISSING faults/s, one handler thread, $pages pages: C $c, Swift $s, ratio $(echo "scale=2; $s / $c" | bc)"

c=$(for _ in $(seq "$runs"); do taskset -c $cpu "$cbench" scan 1024 10 | cut -d' ' -f1; done | median)
s=$(for _ in $(seq "$runs"); do taskset -c $cpu "$sbench" scan 1024 10 | cut -d' ' -f1; done | median)
echo "PAGEMAP_SCAN + re-arm of 1 GiB, 10% written (26214 pages): C ${c} us, Swift ${s} us, ratio (C/Swift time) $(echo "scale=2; $c / $s" | bc)"
