#!/usr/bin/env bash
# The test command: everything, from a fresh clone.
#   1. installs what it needs (Scripts/setup.sh --guest), builds, runs the host suite
#      and the metrics server against hostile clients; installs the release
#      binary into a temporary prefix and checks it (Scripts/check-install.sh);
#   2. the pmem guest harness checks: a failing command's exit status comes out,
#      a hung guest is killed at its timeout;
#   3. one boot per Debian kernel (6.1, 6.12, newest) x filesystem (ext4, xfs):
#      /proc/mounts shows the DAX mount, the whole suite runs inside on real
#      ext4-DAX (xfs-DAX: its tests whose files are on the DAX mount),
#      and last (it can wedge the guest's kernel) the DAX write-protect bug probe;
#   4. device-dax namespaces (1 GiB and 2 MiB alignment): the mirror's PUD and
#      PMD entries against the device's base and pagemap;
#   5. the power-cut crash test on real pmem (hard power-offs of the guest);
#      memmap= pmem (one kernel, ext4 and xfs): daxmirror names it as RAM lost
#      at power-off, `demo.sh --host` runs inside it (and `test.sh --host` on ext4);
#      a power cut there, with the data gone afterwards as daxmirror said;
#   6. the kernel's own HMM test driver as the oracle: a 6.12 guest kernel built
#      here with TEST_HMM (cached; built before the guests of 3., whose 6.1 and
#      newest ext4 boots, and the host, run its hmm-tests under `daxmirror
#      emulate`, no module there), and per filesystem one boot with the
#      kernel's hmm-tests on DAX, the same hmm-tests case by case under the
#      module and under `daxmirror emulate` (the outcome table), the conformance table (every
#      Scenarios/differential case on anonymous, shmem, ext4-DAX and xfs-DAX
#      memory, daxmirror against the kernel's dmirror), and the random
#      differential: DAXMIRROR_DIFF_OPS (10,000) random operations per memory
#      type through both, every device access compared as it happens (bytes,
#      errno, faults), the whole range's snapshot every 10 operations; and
#      device-private memory (migrate, migrate-back, release, exclusive, CPU
#      touches, fork, mprotect, unmap) on twin regions: the hmm-tests
#      transcriptions and Scenarios/differential/devmem as conformance rows;
#      and DAXMIRROR_DEVMEM_OPS (10,000) random device-private operations on
#      twin regions (ext4 boot), in a step of its own: another process's close
#      of the kernel's device evicts every page on it (docs/kernel-facts.md §7).
# It ends with every step's time, the total, and the summary line.
# Environment: DAXMIRROR_KERNELS="stable backports newest" narrows the kernels;
# DAXMIRROR_POWERCUTS (default 6; 20 for the long run), DAXMIRROR_DIFF_OPS
# (default 10,000) and DAXMIRROR_DEVMEM_OPS (default 10,000; 0: off) size the repetition; DAXMIRROR_HOST_ONLY=1 skips the guest
# (the DAX tests then report themselves skipped).
#
#   Scripts/test.sh --host DIR   on a machine whose own kernel has DAX (memmap=
#                                or an NVDIMM): no QEMU; the whole suite with its
#                                DAX tests on DIR, a directory on a DAX mount.
set -uo pipefail
cd "$(dirname "$0")/.."
. Scripts/lib.sh
host_dir=""
if [[ ${1:-} == --host ]]; then
    host_dir=${2:?"usage: Scripts/test.sh --host DIR (a directory on a DAX mount)"}
    is_dax_mount "$host_dir" \
        || { echo "test.sh: $host_dir is not on a DAX mount (see /proc/mounts): give a directory on one" >&2; exit 2; }
fi
passed=0 failed=0 failures=() rows=()
logs=.cache/test-logs
run_start=$SECONDS
rm -rf "$logs"; mkdir -p "$logs"
step() {  # step NAME COMMAND... : runs, records the outcome (output also kept in $logs)
    local name=$1; shift
    local log="$logs/$((passed + failed + 1)).log"
    echo "=== $name"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$log"; (( PIPESTATUS[0] == 0 )); then
        passed=$((passed + 1)); rows+=("ok|$((SECONDS - t0))|$name"); echo "=== ok: $name ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1)); failures+=("$name|$log"); rows+=("FAILED|$((SECONDS - t0))|$name")
        echo "=== FAILED: $name ($((SECONDS - t0))s)"
    fi
}
guest_steps() {  # guest_steps TITLE GUEST_ARGS... -- 'NAME=>COMMAND'...: several steps in one boot
    # Each step's line from Scripts/guest/steps.sh counts as a step of its own
    # (its time is the guest's); a step without a line (the boot died or timed
    # out first) is a failure; the boot's own overhead is one more row.
    local title=$1; shift
    local gargs=() specs=() spec name
    while (($#)) && [[ $1 != -- ]]; do gargs+=("$1"); shift; done
    shift; specs=("$@")
    local log="$logs/$((passed + failed + 1)).log" t0=$SECONDS
    echo "=== $title: one boot, ${#specs[@]} steps"
    Scripts/guest.sh "${gargs[@]}" -- Scripts/guest/steps.sh "${specs[@]}" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]} inside=0 line secs
    for spec in "${specs[@]}"; do
        name=${spec%%=>*}
        line=$(grep -aF -e "guest-step: ok $name (" -e "guest-step: FAILED $name (" "$log" | tail -n 1)
        secs=$(sed -nE 's/.*\(([0-9]+)s.*/\1/p' <<<"$line"); secs=${secs:-0}
        inside=$((inside + secs))
        if [[ $line == "guest-step: ok "* ]]; then
            passed=$((passed + 1)); rows+=("ok|$secs|$title: $name")
        else
            failed=$((failed + 1)); failures+=("$title: $name|$log")
            [[ -n $line ]] || name+=" (no result: the boot ended first, guest.sh exit $rc)"
            rows+=("FAILED|$secs|$title: $name")
        fi
    done
    rows+=("-|$((SECONDS - t0 - inside))|$title: boot, setup and shutdown")
    echo "=== $title: done ($((SECONDS - t0))s, guest.sh exit $rc)"
}
expect_exit() {  # expect_exit CODE COMMAND...
    local want=$1; shift
    "$@"; local got=$?
    [[ $got == "$want" ]] || { echo "expected exit $want, got $got"; return 1; }
}
policy_is_kernel_free() {
    local found
    found=$(grep -nE '^[[:space:]]*(@[a-z_]+[[:space:]]+)*import[[:space:]]+(Glibc|Musl|Foundation|CDaxShim|CPmem|CNdctl|CDaxctl)\b|canImport\((Glibc|Musl)\)' Sources/MirrorPolicy/*.swift)
    [[ -z $found ]] || { echo "the policy module reaches for the kernel:"; echo "$found"; return 1; }
    grep -q 'name: "MirrorPolicy", dependencies: \["DaxCore", "PageTables"\]' Package.swift \
        || { echo "Package.swift: MirrorPolicy must depend on DaxCore and PageTables only"; return 1; }
    echo "Sources/MirrorPolicy: $(ls Sources/MirrorPolicy | wc -l) files, no kernel import"
}
devdax_scenario() {  # devdax_scenario ALIGN SCENARIO: runs it on /dev/dax0.0; a skip is a failure
    local size=1G mem=2G out
    [[ $1 == 1G ]] && { size=3G; mem=4G; }
    out=$(Scripts/guest.sh --kernel newest --nsmode devdax --align "$1" --pmem-size $size --mem $mem -- \
          "$daxmirror_bin" run "$PWD/Scenarios/$2")
    local rc=$?
    echo "$out"
    ((rc == 0)) && ! grep -q '"skipped"' <<<"$out"
}

if [[ -n $host_dir ]]; then
    Scripts/setup.sh || exit 1
    # Inside a read-only tree (a pmem guest shares the host's root read-only)
    # the bundle already built is used, and said to be.
    if [[ -w . ]]; then step "build" swift build --build-tests
    else echo "test.sh: $PWD is read-only: using the test bundle built there"; fi
    step "test suite on the DAX mount of $host_dir" env DAXMIRROR_DAX_DIR="$host_dir" DAXMIRROR_CLI_EDGES="${DAXMIRROR_CLI_EDGES:-1}" Scripts/guest-tests.sh
else
    Scripts/setup.sh --guest || exit 1
    # The seam is a module boundary: the mirror's policy imports no way to
    # the kernel (and its package target depends on none).
    step "MirrorPolicy imports neither Glibc nor the C shim nor libpmem" policy_is_kernel_free
    step "build" swift build --build-tests
    step "host suite (swift test)" swift test --skip-build
    # Hostile clients against `metrics --listen` (loopback only): memory,
    # connections and descriptors bounded, the next good scrape answered.
    step "metrics --listen under hostile clients (Scripts/hostile-scrape.py)" python3 Scripts/hostile-scrape.py "$daxmirror_bin"
    # The release binary as users install it: runs with the toolchain hidden;
    # manual, completions, service unit and alert rules checked by their tools.
    step "install: toolchain-free binary, man page, completions, unit, alert rules (Scripts/check-install.sh)" Scripts/check-install.sh
fi

if [[ -z $host_dir && ${DAXMIRROR_HOST_ONLY:-0} != 1 ]]; then
    kernels=${DAXMIRROR_KERNELS:-stable backports newest}
    # The kernel with the HMM test driver first: its hmm-tests (linked
    # dynamically) also runs under `daxmirror emulate` on the host and in
    # the 6.1 and newest guests, where no kernel has the module.
    step "hmm: the guest kernel with the HMM test driver (built once, then cached)" Scripts/guest/build-hmm-kernel.sh
    hmm=$(Scripts/guest/build-hmm-kernel.sh 2>/dev/null) || hmm=""
    if [[ -n $hmm ]]; then
        # The guest sees the work tree, not every host path (its /tmp is its own).
        cp "$hmm/hmm-tests" .cache/hmm-tests
        cp "$hmm/hmm-tests-dynamic" .cache/hmm-tests-dynamic
        step "hmm-tests under daxmirror emulate on the host (kernel $(uname -r), no module)" Scripts/hmm-tests-emulated.sh "$PWD/.cache/hmm-tests-dynamic"
    fi
    # Exit 0 is what every other guest step shows; these two can only be seen alone.
    step "guest: '-- false' exits non-zero (1)" expect_exit 1 Scripts/guest.sh -- false
    step "guest: a hung guest is killed at --timeout (124)" expect_exit 124 Scripts/guest.sh --timeout 20 -- sleep 600
    for k in $kernels; do
        for fs in ext4 xfs; do
            specs=("/proc/mounts shows /dev/pmem0 mounted $fs with dax=>. $PWD/Scripts/lib.sh && is_dax_mount /mnt && grep -qE '^/dev/pmem0 /mnt $fs ' /proc/mounts || { cat /proc/mounts; false; }")
            # The whole suite runs once per kernel, on ext4-DAX; the xfs-DAX
            # boots of the oldest and the newest kernel run what a filesystem
            # can change (the tests whose files are on the DAX mount:
            # DAXMIRROR_SUITE_SCOPE=dax); 6.12's xfs-DAX boot keeps its mount
            # check and write-protect probe, and the TEST_HMM guest (6.12)
            # runs the differential on xfs-DAX.
            if [[ $fs == ext4 ]]; then
                specs+=("test suite on $fs-DAX=>DAXMIRROR_CLI_EDGES=$([[ $k == stable ]] && echo 1 || echo 0) $PWD/Scripts/guest-tests.sh")
            elif [[ $k != backports ]]; then
                specs+=("the suite's DAX-file tests on $fs-DAX (the rest ran on ext4 under this kernel)=>DAXMIRROR_SUITE_SCOPE=dax $PWD/Scripts/guest-tests.sh")
            fi
            # One boot also has a real Prometheus scrape `daxmirror metrics --listen`.
            [[ $k == backports && $fs == ext4 ]] && specs+=("a real Prometheus scrapes daxmirror metrics; PromQL agrees with ndctl and pagemap=>$PWD/Scripts/guest/prometheus-scrape.sh"
                "the exporter as nobody with the unit's capabilities reads another user's DAX mapping; without them counts it=>$PWD/Scripts/guest/exporter-privileges.sh")
            [[ -n $hmm && $fs == ext4 && ($k == stable || $k == newest) ]] && specs+=("hmm-tests under daxmirror emulate on $k ext4-DAX (no module)=>$PWD/Scripts/hmm-tests-emulated.sh $PWD/.cache/hmm-tests-dynamic --dir /mnt")
            specs+=("DAX write-protect bug, as measured (last: it can wedge the kernel)=>DAXMIRROR_WP_PROBE=1 $PWD/Scripts/guest-tests.sh --filter writeProtectOnDaxStillMisbehaves")
            guest_steps "guest $k/$fs" --kernel "$k" --fs "$fs" --timeout 1500 -- "${specs[@]}"
        done
    done
    # Device-dax (no filesystem): 1 GiB alignment gives PUD entries, 2 MiB PMDs.
    step "guest newest/devdax 1G: one PUD entry, device base + offset" devdax_scenario 1G devdax_pud.scn
    step "guest newest/devdax 2M: PMD entries matching pagemap" devdax_scenario 2M devdax_pmd.scn
    step "power cuts on real pmem (ext4-DAX)" python3 Scripts/powercut-test.py --rounds "${DAXMIRROR_POWERCUTS:-6}"
    # memmap= pmem (RAM the guest kernel hands to the pmem driver, lost at
    # power-off), one kernel, both filesystems: daxmirror names it for what it
    # is, and the two README commands run in their host mode inside it — the
    # demo and the whole suite with its DAX tests and scenarios on the mount.
    # `test.sh --host` runs on memmap= ext4 only, and there the suite's
    # DAX-file tests (DAXMIRROR_SUITE_SCOPE=dax): the whole suite ran under
    # this kernel on the NVDIMM boot, and what memmap= changes (the e820
    # region, the RAM it is) is the same under both filesystems.
    for fs in ext4 xfs; do
        specs=("daxmirror names the e820 region and says memmap= RAM is lost at power-off=>$PWD/Scripts/guest/check-memmap.sh"
               "Scripts/demo.sh --host /mnt (no QEMU)=>$PWD/Scripts/demo.sh --host /mnt")
        [[ $fs == ext4 ]] && specs+=("Scripts/test.sh --host /mnt: the suite's DAX-file tests on memmap= $fs-DAX=>DAXMIRROR_CLI_EDGES=0 DAXMIRROR_SUITE_SCOPE=dax $PWD/Scripts/test.sh --host /mnt")
        guest_steps "guest newest/memmap $fs" --pmem memmap --kernel newest --fs "$fs" --timeout 1500 -- "${specs[@]}"
    done
    step "power cut on memmap= pmem: said beforehand, gone after" python3 Scripts/powercut-test.py --pmem memmap --kernel newest

    # The kernel's own dmirror as the oracle.
    if [[ -n $hmm ]]; then
        ops=${DAXMIRROR_DIFF_OPS:-10000} devops=${DAXMIRROR_DEVMEM_OPS:-10000}
        for fs in ext4 xfs; do
            kinds=file; [[ $fs == ext4 ]] && kinds=anon,shmem,file
            # One process per memory type's mirror stream, side by side.
            specs=("the kernel's own hmm-tests on $fs-DAX (the baseline)=>$PWD/Scripts/hmm-tests-baseline.sh $PWD/.cache/hmm-tests"
                   "hmm-tests under the module and under daxmirror emulate, case by case, on $fs-DAX=>$PWD/Scripts/hmm-tests-emulated.sh $PWD/.cache/hmm-tests-dynamic --dir /mnt"
                   "conformance table, daxmirror against the kernel's dmirror ($kinds)=>$PWD/Scripts/differential.sh --kinds $kinds"
                   "$ops random operations per memory type through both ($kinds)=>DAXMIRROR_STRESS_KINDS=$kinds DAXMIRROR_DIFF_OPS=$ops DAXMIRROR_SUITE_TIMEOUT=2880 $PWD/Scripts/guest-tests.sh --filter 'randomOperationsAgreeWithTheKernel|seedsThatOnceDisagreedAgree'")
            # Device-private memory moves anonymous pages only (the ext4 boot),
            # in a step of its own: any process's close of the kernel's device
            # evicts every page on it, this stream's too (docs/kernel-facts.md §7).
            if [[ $fs == ext4 && $devops -gt 0 ]]; then
                specs+=("$devops random device-private operations through both (twin regions, the kernel's devices its alone)=>DAXMIRROR_STRESS_KINDS=anon DAXMIRROR_DEVMEM_OPS=$devops DAXMIRROR_SUITE_TIMEOUT=2880 $PWD/Scripts/guest-tests.sh --filter 'randomDeviceMemoryOperationsAgreeWithTheKernel|anotherProcesssCloseOfADeviceBringsEveryPageItHoldsHome'")
            fi
            DAXMIRROR_GUEST_ENV="DAXMIRROR_STEP_TIMEOUT=3000" guest_steps "hmm/$fs" --kernel hmm --fs $fs --timeout 4500 -- "${specs[@]}"
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
echo "time per step (s):"
for r in "${rows[@]}"; do IFS='|' read -r outcome secs name <<<"$r"; printf '%6d  %-6s  %s\n' "$secs" "$outcome" "$name"; done
total=$((SECONDS - run_start))
printf '%6d  total (%d min %d s)\n' "$total" $((total / 60)) $((total % 60))
if ((total > 3600)); then
    echo "!!! WARNING: the test command took $((total / 60)) minutes, over its 60-minute budget (CI stops at 90): make room before adding steps !!!"
fi
for f in "${failures[@]}"; do echo "failed: ${f%%|*}"; done
echo "summary: $passed passed, $failed failed"
((failed == 0))
