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
# A command both devices failed alike (same errno) agrees.
failed = [a for a in answers if not a.get("ok") and a.get("kernel_errno") != a.get("errno")]
named = sys.argv[4] if len(sys.argv) > 4 else ""
compared = sum(1 for a in answers if a.get("op") in ("dev-read", "dev-write", "snapshot", "check", "expect-fail", "migrate",
                                                     "migrate-back", "release", "exclusive", "check-exclusive", "cpu-read", "fork-read"))
ours = sum(a.get("faults", 0) for a in answers if a.get("op") in ("dev-read", "dev-write"))
theirs = sum(a.get("kernel_faults", 0) for a in answers if a.get("op") in ("dev-read", "dev-write"))
snaps = [a for a in answers if a.get("op") == "snapshot" and "kernel_codes" in a]
last_ours = snaps[-1]["codes"] if snaps else "-"
last_kernel = snaps[-1]["kernel_codes"] if snaps else "-"
ok = rc in (0, 1) and not failed and answers and (rc == 0 or any(a.get("kernel_errno") for a in answers))
why = ""
if not ok:
    first = failed[0] if failed else {"error": (other or ["no answer"])[-1]}
    why = f" (line {first.get('line', '?')}: {first.get('error') or first.get('unmet') or first})"
# A named difference (README "Where daxmirror differs"): the row says so,
# and holds only if that is the one way the two differ.
if named and not ok and failed and all(named in (a.get("error") or "") for a in failed):
    print(f"| {case} | {label} | faults {theirs}, last snapshot {last_kernel} | faults {ours}, last snapshot {last_ours} | "
          f"named difference: {failed[0].get('error')} ({compared} compared) |")
    sys.exit(0)
print(f"| {case} | {label} | faults {theirs}, last snapshot {last_kernel} | faults {ours}, last snapshot {last_ours} | "
      f"{'yes' if ok else 'NO' + why} ({compared} compared) |")
sys.exit(0 if ok else 1)
PY
)
# The mirror's rows run two at a time (each a `daxmirror run` of its own,
# with its own open of the kernel's device and its own file). The rows that
# move pages to the kernel's device run one at a time: HMM_DMIRROR_RELEASE
# evicts every process's pages on that device (docs/kernel-facts.md §7).
# Rows print in table order.
rows_dir=$(mktemp -d)
trap 'rm -rf "$rows_dir"' EXIT
rows=0
run_row() {  # run_row N CASE LABEL NAMED FILE COMMAND...: row N's line and verdict (N.rc: 0 agreed)
    local n=$1 case_name=$2 label=$3 named=$4 file=$5 out rc
    shift 5
    out=$("$@" 2>&1) && rc=0 || rc=$?
    [[ $file == - ]] || rm -f "$file"*
    python3 -c "$summarize" "$case_name" "$label" "$rc" ${named:+"$named"} <<<"$out" && echo 0 > "$rows_dir/$n.rc" || echo 1 > "$rows_dir/$n.rc"
}
row() {  # row MODE CASE LABEL NAMED FILE COMMAND...: MODE side-by-side or alone; FILE (or -) removed after
    local mode=$1
    shift
    if [[ $mode == alone ]]; then
        wait
        run_row "$rows" "$@" > "$rows_dir/$rows.out" 2>&1
    else
        while (($(jobs -rp | wc -l) >= 2)); do wait -n || true; done
        run_row "$rows" "$@" > "$rows_dir/$rows.out" 2>&1 &
    fi
    rows=$((rows + 1))
}
note() {  # note TEXT: a row that needs no run, in table order
    echo "$1" > "$rows_dir/$rows.out"; rows=$((rows + 1))
}
for scn in "$here"/Scenarios/differential/*.scn; do
    case_name=$(basename "$scn" .scn)
    for kind in ${kinds//,/ }; do
        label=$kind mem=$kind file=-
        if [[ $kind == file ]]; then label=${fs:-file}; mem="file diff-$case_name.dat"; file="$dir/diff-$case_name.dat"; fi
        if [[ $case_name == truncate && $kind == anon ]]; then
            note "| $case_name | $label | - | - | not applicable: anonymous memory has no file to truncate |"
            continue
        fi
        row side-by-side "$case_name" "$label" "" "$file" env DM_MEM="$mem" "$bin" run --against-kernel --dir "$dir" "$scn"
    done
done

# Device-private memory: twin regions (a migrated page has one owner, so the
# kernel's device works on a twin of each region that every CPU command also
# acts on). The hmm-tests transcriptions on the memory they name (in the run
# that has anonymous memory), then Scenarios/differential/devmem on each type.
if [[ ",$kinds," == *",anon,"* ]]; then
    for case_name in migrate migrate_fault migrate_release migrate_shared migrate_mixed migrate_multiple snapshot \
                     double_map exclusive exclusive_mprotect exclusive_cow hmm_cow_in_device hmm_gup_test; do
        label=anon; [[ $case_name == migrate_shared ]] && label=shmem
        row alone "$case_name" "$label (twin)" "" - "$bin" run --against-kernel --twin-regions --dir "$dir" "$here/Scenarios/$case_name.scn"
    done
    # migrate_file_private (a regular file, not DAX: the kernel refuses DAX
    # VMAs): the kernel moves a MAP_PRIVATE file's written pages; userfaultfd
    # cannot catch their return, so daxmirror refuses.
    printf 'map A file diff-fp.dat 64K private\nmirror A\ncpu-write A 0 64K 7\nmigrate A 0 64K\n' > "$rows_dir/fp.scn"
    row alone migrate_file_private "file private, not DAX (twin)" "ours failed with EOPNOTSUPP" /tmp/diff-fp.dat \
        "$bin" run --against-kernel --twin-regions --dir /tmp "$rows_dir/fp.scn"
fi
for scn in "$here"/Scenarios/differential/devmem/*.scn; do
    case_name=devmem/$(basename "$scn" .scn)
    for kind in ${kinds//,/ }; do
        label="$kind (twin)" mem=$kind file=-
        if [[ $kind == file ]]; then label="${fs:-file} (twin)"; mem="file diff-devmem.dat"; file="$dir/diff-devmem.dat"; fi
        row alone "$case_name" "$label" "" "$file" env DM_MEM="$mem" "$bin" run --against-kernel --twin-regions --dir "$dir" "$scn"
    done
done
wait
disagree=0
for ((i = 0; i < rows; i++)); do
    # A row that ran leaves its verdict (0 agreed); a note leaves none.
    [[ ! -f $rows_dir/$i.rc || $(cat "$rows_dir/$i.rc") == 0 ]] || disagree=1
    cat "$rows_dir/$i.out"
done
exit $disagree
