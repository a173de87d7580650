#!/bin/sh
# Runs inside the pmem guest (Scripts/guest.sh sets DAXMIRROR_DAX_DIR to the
# DAX mount): the package's test bundle, built on the host, unchanged.
#   Scripts/guest.sh --fs xfs -- Scripts/guest-tests.sh
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
bundle=$here/.build/debug/daxmirrorPackageTests.xctest
[ -x "$bundle" ] || { echo "guest-tests.sh: $bundle is missing: run 'swift build --build-tests' on the host first" >&2; exit 2; }
[ -n "$DAXMIRROR_DAX_DIR" ] || { echo "guest-tests.sh: DAXMIRROR_DAX_DIR is not set: run me through Scripts/guest.sh" >&2; exit 2; }
# The random stress runs 10,000 operations per memory type on the host; under
# software emulation in the guest, 1,000 on the DAX file only (anonymous
# memory and shmem behave as on the host).
export DAXMIRROR_STRESS_OPS=${DAXMIRROR_STRESS_OPS:-1000}
export DAXMIRROR_STRESS_KINDS=${DAXMIRROR_STRESS_KINDS:-file}
echo "guest-tests.sh: kernel $(uname -r), DAX mount $(grep " $DAXMIRROR_DAX_DIR " /proc/mounts | cut -d' ' -f1,3,4)"
exec "$bundle" --testing-library swift-testing "$@"
