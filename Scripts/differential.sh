#!/usr/bin/env bash
# The conformance table: every case in Scenarios/differential/ on each memory
# type, driven through daxmirror and the kernel's own HMM test driver at once
# (`daxmirror run --against-kernel`: bytes, errno and fault rounds of every
# device access, and the snapshot codes, compared after each command).
# Runs where /dev/hmm_dmirror0 exists, i.e. inside
#   Scripts/guest.sh --kernel hmm --fs ext4|xfs -- Scripts/differential.sh [--kinds anon,shmem,file]
# "file" is a file on the guest's DAX mount (/mnt), named after its filesystem.
# Prints one markdown row per case and memory type; exits 1 if any applicable
# cell disagrees. Cases that cannot apply to a memory type are listed with why.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/Scripts/lib.sh"
kinds=anon,shmem,file
[[ ${1:-} == --kinds ]] && kinds=$2
bin=$daxmirror_bin
dir=${DAXMIRROR_DAX_DIR:-/mnt}
[[ -e /dev/hmm_dmirror0 ]] || { echo "differential: no /dev/hmm_dmirror0 (boot Scripts/guest.sh --kernel hmm)" >&2; exit 2; }
fs=$(dax_label "$dir")
# One row from a run's JSON answers.
summarize=$(cat <<'PY'
import json, sys
case, label, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
answers, other = [], []
for line in sys.stdin.read().splitlines():
    try: answers.append(json.loads(line))
    except ValueError: other.append(line)
failed = [a for a in answers if not a.get("ok")]
compared = sum(1 for a in answers if a.get("op") in ("dev-read", "dev-write", "snapshot", "check", "expect-fail"))
ours = sum(a.get("faults", 0) for a in answers if a.get("op") in ("dev-read", "dev-write"))
theirs = sum(a.get("kernel_faults", 0) for a in answers if a.get("op") in ("dev-read", "dev-write"))
snaps = [a for a in answers if a.get("op") == "snapshot" and "kernel_codes" in a]
last_ours = snaps[-1]["codes"] if snaps else "-"
last_kernel = snaps[-1]["kernel_codes"] if snaps else "-"
ok = rc == 0 and not failed and answers
why = ""
if not ok:
    first = failed[0] if failed else {"error": (other or ["no answer"])[-1]}
    why = f" (line {first.get('line', '?')}: {first.get('error') or first.get('unmet') or first})"
print(f"| {case} | {label} | faults {theirs}, last snapshot {last_kernel} | faults {ours}, last snapshot {last_ours} | "
      f"{'yes' if ok else 'NO' + why} ({compared} compared) |")
sys.exit(0 if ok else 1)
PY
)
disagree=0
for scn in "$here"/Scenarios/differential/*.scn; do
    case_name=$(basename "$scn" .scn)
    for kind in ${kinds//,/ }; do
        label=$kind mem=$kind
        if [[ $kind == file ]]; then label=${fs:-file}; mem="file diff-$case_name.dat"; fi
        if [[ $case_name == truncate && $kind == anon ]]; then
            echo "| $case_name | $label | - | - | not applicable: anonymous memory has no file to truncate |"
            continue
        fi
        out=$(DM_MEM=$mem "$bin" run --against-kernel --dir "$dir" "$scn" 2>&1) && rc=0 || rc=$?
        rm -f "$dir/diff-$case_name.dat"
        python3 -c "$summarize" "$case_name" "$label" "$rc" <<<"$out" || disagree=1
    done
done
exit $disagree
