#!/usr/bin/env bash
# The baseline row: the kernel's own HMM selftest (tools/testing/selftests/mm/
# hmm-tests, built with the HMM kernel by Scripts/guest/build-hmm-kernel.sh)
# on the guest's DAX filesystem. hmm-tests makes its files in /tmp, so a
# directory of the DAX mount is bound over /tmp first (docs/kernel-facts.md §6).
#   Scripts/guest.sh --kernel hmm --fs ext4 -- Scripts/hmm-tests-baseline.sh HMM_TESTS_BINARY
# Exit 0 when every case passes except those known not to apply to DAX, which
# are named; 1 otherwise.
set -euo pipefail
tests=${1:?usage: hmm-tests-baseline.sh HMM_TESTS_BINARY}
dir=${DAXMIRROR_DAX_DIR:-/mnt}
[[ -x $tests ]] || { echo "hmm-tests: $tests is not there (in the guest, a host path under /tmp is hidden by the guest's own /tmp)" >&2; exit 2; }
[[ -e /dev/hmm_dmirror0 ]] || { echo "hmm-tests: no /dev/hmm_dmirror0 (boot Scripts/guest.sh --kernel hmm)" >&2; exit 2; }
. "$(dirname "$0")/lib.sh"
fs=$(dax_label "$dir")
# Cases that cannot pass on DAX, and why.
declare -A not_on_dax=(
    [migrate_file_private]="migrate_vma_setup() refuses DAX VMAs (EINVAL): there is no page cache to migrate a DAX page out of"
)
mkdir -p "$dir/hmm-tmp"
# The binary goes along: the bind hides whatever lived under /tmp (a work tree there too).
cp "$tests" "$dir/hmm-tmp/hmm-tests"
mount --bind "$dir/hmm-tmp" /tmp
trap 'umount /tmp 2>/dev/null || true' EXIT
out=$(cd /tmp && timeout 600 /tmp/hmm-tests 2>&1) || true
passed=$(grep -cE '^ok [0-9]+ ' <<<"$out" || true)
skipped=$(grep -cE '^ok [0-9]+ .*# SKIP' <<<"$out" || true)
unexpected=()
expected=()
while read -r name; do
    [[ -z $name ]] && continue
    if [[ -n ${not_on_dax[$name]:-} ]]; then expected+=("$name"); else unexpected+=("$name"); fi
done <<<"$(grep -E '^not ok [0-9]+ ' <<<"$out" | sed -E 's/^not ok [0-9]+ ([^ ]+\.)?([A-Za-z0-9_]+).*/\2/')"
echo "hmm-tests on $fs, kernel $(uname -r): $passed ok ($skipped of them skipped), $(( ${#expected[@]} + ${#unexpected[@]} )) failed"
for n in "${expected[@]}"; do echo "  expected on DAX: $n — ${not_on_dax[$n]}"; done
for n in "${unexpected[@]}"; do echo "  UNEXPECTED failure: $n"; done
if (( ${#unexpected[@]} > 0 || passed == 0 )); then
    grep -E '^(not ok|#  RUN|# )' <<<"$out" | tail -n 40
    exit 1
fi
