#!/bin/sh
# Runs inside the pmem guest (Scripts/guest.sh sets DAXMIRROR_DAX_DIR to the
# DAX mount): the package's test bundle, built on the host, unchanged.
#   Scripts/guest.sh --fs xfs -- Scripts/guest-tests.sh
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
bundle=$here/.build/debug/daxmirrorPackageTests.xctest
[ -x "$bundle" ] || { echo "guest-tests.sh: $bundle is missing: run 'swift build --build-tests' on the host first" >&2; exit 2; }
[ -n "$DAXMIRROR_DAX_DIR" ] || { echo "guest-tests.sh: DAXMIRROR_DAX_DIR is not set: run me through Scripts/guest.sh (or Scripts/test.sh --host DIR on a DAX mount)" >&2; exit 2; }
# The random stress runs 10,000 operations per memory type on the host; under
# software emulation in the guest, 400 on the DAX file only (anonymous
# memory and shmem behave as on the host): every operation kind some 40 times
# per kernel and filesystem. The deep check of DAX files is the HMM guest's
# 10,000-operation differential against the kernel's own dmirror.
export DAXMIRROR_STRESS_OPS=${DAXMIRROR_STRESS_OPS:-400}
export DAXMIRROR_STRESS_KINDS=${DAXMIRROR_STRESS_KINDS:-file}
# The scenario language's property test: 100,000 generated lines on the
# host, 2,000 here (its files on the DAX mount).
export DAXMIRROR_PROPERTY_LINES=${DAXMIRROR_PROPERTY_LINES:-2000}
# The CLI's contract with its environment (closed standard streams, rlimits
# and signals, option consent, kinds of file, strict numbers, inert text)
# does not depend on the kernel or the filesystem: the host suite runs it,
# and so does one guest boot (the oldest kernel: DAXMIRROR_CLI_EDGES=1, as
# `test.sh --host` on a user's pmem host); the other boots skip it for time.
# So do `emulate`'s (they compile a C program, slow under emulation): every
# boot that has the outcome table runs hmm-tests under emulate instead.
# DAXMIRROR_SUITE_SCOPE=dax: a second filesystem under a kernel whose whole
# suite ran on another one: only what the filesystem can change — the tests
# whose files live on the DAX mount (DAX faults, PMD entries, truncate,
# persistence, the writer under SIGKILL, inspect/watch/metrics of a DAX
# mapping, the file scenarios and the oracle stress on a DAX file). The rest
# (anonymous memory, shmem, the CLI's contract, parsing) does not depend on it.
if [ $# -eq 0 ] && [ "${DAXMIRROR_SUITE_SCOPE:-all}" = dax ]; then
    echo "guest-tests.sh: DAXMIRROR_SUITE_SCOPE=dax: the tests that put files on the DAX mount (the whole suite runs on another filesystem under this kernel)"
    export DAXMIRROR_SCENARIOS=file
    # Names are anchored (a `.` before a type, a `/` before a test): every
    # test's name begins with its module's, DaxMirrorTests.
    set -- --filter '\.(DaxTests|DaxTrackingTests|MirrorTests|CrashTests|PersistentMappingTests|OverwriteTests|WatchTests|PersistenceTests)\b|\.ScenarioTests/scenario\(|\.MirrorStressTests/randomOperationsAgreeWithTheOracle|\.InspectTests/reportsExactlyThePagesTheProgramTouched|/(capsJSONMatchesKernel|aProcessMappingDAXIsCountedAsItsPagemapSays|devicesOnThisMachine)\('
elif [ $# -eq 0 ] && [ "${DAXMIRROR_CLI_EDGES:-0}" != 1 ]; then
    echo "guest-tests.sh: the CLI's environment suites and emulate's run on the host and in one boot; skipped here (DAXMIRROR_CLI_EDGES=1 runs them)"
    set -- --skip 'ClosedStreamTests|EnvironmentSignalTests|OptionConsentTests|FileKindExitTests|StrictNumberTests|InertTextTests|EmulateTests'
fi
echo "guest-tests.sh: kernel $(uname -r), DAX mount $(grep " $DAXMIRROR_DAX_DIR " /proc/mounts | cut -d' ' -f1,3,4)"
# A watchdog short of guest.sh's own timeout: a suite that hangs is reported
# with where every process of it waits (wchan, kernel stack), not just killed.
limit=${DAXMIRROR_SUITE_TIMEOUT:-600}
"$bundle" --testing-library swift-testing "$@" &
suite=$!
waited=0
while kill -0 "$suite" 2>/dev/null && [ "$waited" -lt "$limit" ]; do sleep 1; waited=$((waited + 1)); done
if kill -0 "$suite" 2>/dev/null; then
    echo "guest-tests.sh: the suite still runs after ${limit}s; where its processes wait:"
    for p in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$p" = "$$" ] && continue
        grep -qE "daxmirror|python3|tmux" "/proc/$p/cmdline" 2>/dev/null || continue
        echo "--- pid $p: $(tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-160)"
        for t in /proc/"$p"/task/*; do
            echo "    task ${t##*/} ($(cat "$t/comm")) state $(cut -d' ' -f3 "$t/stat") wchan $(cat "$t/wchan")"
            sed 's/^/        /' "$t/stack" 2>/dev/null | head -n 14
        done
    done
    echo w > /proc/sysrq-trigger 2>/dev/null || true
    kill -9 "$suite"
    exit 124
fi
wait "$suite"
