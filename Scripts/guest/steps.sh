#!/bin/bash
# Runs several test steps in ONE guest boot, one after the other, each under a
# watchdog of its own, so that a boot (11-15 s plus setup under software
# emulation) serves a kernel x filesystem's whole list:
#   Scripts/guest.sh ... -- Scripts/guest/steps.sh 'NAME=>COMMAND' ['NAME=>COMMAND' ...]
# Each step's outcome is one line the host's Scripts/test.sh reads:
#   guest-step: ok NAME (Ns)   |   guest-step: FAILED NAME (Ns, exit N)
# A step that hangs is killed at DAXMIRROR_STEP_TIMEOUT seconds (default 900)
# and reported (exit 124) and the next step still runs; a step whose COMMAND
# hangs the kernel itself stops the boot, and guest.sh's own timeout then
# tells the host, which counts every step without a line as failed. So put
# the step most likely to wedge the kernel (the DAX write-protect probe) last.
# A step whose suite watchdog fired (exit 124) runs once more in the same boot.
# Exit status: 0 if every step passed, else 1.
set -u
limit=${DAXMIRROR_STEP_TIMEOUT:-900}
failed=0
for spec in "$@"; do
    name=${spec%%=>*} cmd=${spec#*=>}
    [[ $name != "$spec" ]] || { echo "steps.sh: '$spec' is not NAME=>COMMAND" >&2; exit 2; }
    for attempt in 1 2; do
        echo "guest-step: start $name"
        t0=$SECONDS
        timeout -k 10 "$limit" bash -c "$cmd"
        rc=$?
        ((rc == 124 && attempt == 1)) || break
        echo "guest-step: $name hung (exit 124, diagnostics above); running it once more"
    done
    if ((rc == 0)); then
        echo "guest-step: ok $name ($((SECONDS - t0))s)"
    else
        echo "guest-step: FAILED $name ($((SECONDS - t0))s, exit $rc)"
        failed=1
    fi
done
exit $failed
