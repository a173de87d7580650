#!/usr/bin/env bash
# The test command: everything, from a fresh clone.
#   1. installs what it needs (Scripts/setup.sh --guest), builds, runs the host suite;
#   2. the pmem guest harness checks: exit status in and out, the timeout, DAX
#      mounts on every guest kernel and filesystem;
#   3. the suite again inside the guest on ext4-DAX and xfs-DAX, on each of
#      Debian's kernels (6.1, 6.12, newest), where the DAX tests run for real;
#   4. device-dax namespaces (1 GiB and 2 MiB alignment): the mirror's PUD and
#      PMD entries against the device's base and pagemap;
#   5. the power-cut crash test on real pmem (20 hard power-offs);
#   6. the kernel's own HMM test driver as the oracle: a 6.12 guest kernel built
#      here with TEST_HMM (cached), the kernel's hmm-tests on ext4-DAX and
#      xfs-DAX, the conformance table (every Scenarios/differential case on
#      anonymous, shmem, ext4-DAX and xfs-DAX memory, daxmirror against the
#      kernel's dmirror), and 10,000 random operations per memory type through
#      both: every device access compared as it happens (bytes, errno, faults),
#      the whole range's snapshot every 10 operations.
# Environment: DAXMIRROR_KERNELS="stable backports newest" and
# DAXMIRROR_POWERCUTS=20 narrow or widen the run; DAXMIRROR_HOST_ONLY=1 skips
# the guest (the DAX tests then report themselves skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0 failures=()
logs=.cache/test-logs
rm -rf "$logs"; mkdir -p "$logs"
step() {  # step NAME COMMAND... : runs, records the outcome (output also kept in $logs)
    local name=$1; shift
    local log="$logs/$((passed + failed + 1)).log"
    echo "=== $name"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$log"; (( PIPESTATUS[0] == 0 )); then
        passed=$((passed + 1)); echo "=== ok: $name ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1)); failures+=("$name|$log"); echo "=== FAILED: $name ($((SECONDS - t0))s)"
    fi
}
expect_exit() {  # expect_exit CODE COMMAND...
    local want=$1; shift
    "$@"; local got=$?
    [[ $got == "$want" ]] || { echo "expected exit $want, got $got"; return 1; }
}
mounts_dax() {  # the guest's /proc/mounts has the pmem device mounted dax
    local out
    out=$(Scripts/guest.sh "$@" -- cat /proc/mounts) || return 1
    echo "$out" | grep -E '^/dev/pmem0 /mnt (ext4|xfs) .*dax' || { echo "$out"; return 1; }
}

guest_suite() {  # guest_suite GUEST_ARGS...: the suite in the guest; once more if it hung
    # A hang (the suite's watchdog, exit 124) is reported with where every
    # process waited, then the suite runs once more: under software emulation
    # a guest has been seen to stall once in many runs (README, Tests).
    Scripts/guest.sh "$@" -- Scripts/guest-tests.sh
    local rc=$?
    ((rc == 124)) || return $rc
    echo "=== the suite hung (diagnostics above); running it once more"
    Scripts/guest.sh "$@" -- Scripts/guest-tests.sh
}

devdax_scenario() {  # devdax_scenario ALIGN SCENARIO: runs it on /dev/dax0.0; a skip is a failure
    local size=1G mem=2G out
    [[ $1 == 1G ]] && { size=3G; mem=4G; }
    out=$(Scripts/guest.sh --kernel newest --nsmode devdax --align "$1" --pmem-size $size --mem $mem -- \
          "$PWD/.build/debug/daxmirror" run "$PWD/Scenarios/$2")
    local rc=$?
    echo "$out"
    ((rc == 0)) && ! grep -q '"skipped"' <<<"$out"
}

Scripts/setup.sh --guest || exit 1
step "build" swift build --build-tests
step "host suite (swift test)" swift test --skip-build

if [[ ${DAXMIRROR_HOST_ONLY:-0} != 1 ]]; then
    kernels=${DAXMIRROR_KERNELS:-stable backports newest}
    step "guest: '-- true' exits 0" expect_exit 0 Scripts/guest.sh -- true
    step "guest: '-- false' exits non-zero (1)" expect_exit 1 Scripts/guest.sh -- false
    step "guest: a hung guest is killed at --timeout (124)" expect_exit 124 Scripts/guest.sh --timeout 30 -- sleep 600
    for k in $kernels; do
        for fs in ext4 xfs; do
            step "guest $k/$fs: /proc/mounts shows /dev/pmem0 mounted dax" mounts_dax --kernel "$k" --fs "$fs"
            step "guest $k/$fs: test suite on $fs-DAX" guest_suite --kernel "$k" --fs "$fs"
            # The DAX write-protect bug probe gets a boot of its own: a hung probe can leave the kernel busy.
            step "guest $k/$fs: DAX write-protect bug, as measured" env DAXMIRROR_GUEST_ENV=DAXMIRROR_WP_PROBE=1 \
                Scripts/guest.sh --kernel "$k" --fs "$fs" --timeout 300 -- Scripts/guest-tests.sh --filter writeProtectOnDaxStillMisbehaves
        done
    done
    # Device-dax (no filesystem): 1 GiB alignment gives PUD entries, 2 MiB PMDs.
    step "guest newest/devdax 1G: one PUD entry, device base + offset" devdax_scenario 1G devdax_pud.scn
    step "guest newest/devdax 2M: PMD entries matching pagemap" devdax_scenario 2M devdax_pmd.scn
    step "power cuts on real pmem (ext4-DAX)" python3 Scripts/powercut-test.py --rounds "${DAXMIRROR_POWERCUTS:-20}"

    # The kernel's own dmirror as the oracle.
    step "hmm: the guest kernel with the HMM test driver (built once, then cached)" Scripts/guest/build-hmm-kernel.sh
    if hmm=$(Scripts/guest/build-hmm-kernel.sh 2>/dev/null); then
        for fs in ext4 xfs; do
            kinds=file; [[ $fs == ext4 ]] && kinds=anon,shmem,file
            step "hmm/$fs: the kernel's own hmm-tests on $fs-DAX (the baseline)" \
                Scripts/guest.sh --kernel hmm --fs $fs -- "$PWD/Scripts/hmm-tests-baseline.sh" "$hmm/hmm-tests"
            step "hmm/$fs: conformance table, daxmirror against the kernel's dmirror ($kinds)" \
                Scripts/guest.sh --kernel hmm --fs $fs -- "$PWD/Scripts/differential.sh" --kinds $kinds
            step "hmm/$fs: ${DAXMIRROR_DIFF_OPS:-10000} random operations per memory type through both ($kinds)" \
                env DAXMIRROR_GUEST_ENV="DAXMIRROR_STRESS_KINDS=$kinds DAXMIRROR_DIFF_OPS=${DAXMIRROR_DIFF_OPS:-10000} DAXMIRROR_SUITE_TIMEOUT=2880" \
                Scripts/guest.sh --kernel hmm --fs $fs --timeout 3000 -- Scripts/guest-tests.sh --filter randomOperationsAgreeWithTheKernel
        done
        echo
        echo "conformance: daxmirror against the kernel's dmirror (kernel $(cat "$hmm/release"), $(date -u +%F))"
        echo "| case | memory | kernel's dmirror | daxmirror | agree |"
        echo "|---|---|---|---|---|"
        grep -h '^| ' $(ls -v "$logs"/*.log) | grep -v '^| case '
    fi
fi

echo
# The failures again, with the end of their output, so that a log viewer
# showing only the tail of the run still shows why.
for f in "${failures[@]}"; do
    echo "--- failed: ${f%%|*} (last lines of its output)"
    grep -v '^[◇↳]\|passed after\|started\.$' "${f#*|}" | tail -n 40
done
for f in "${failures[@]}"; do echo "failed: ${f%%|*}"; done
echo "summary: $passed passed, $failed failed"
((failed == 0))
