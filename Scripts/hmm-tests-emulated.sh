#!/usr/bin/env bash
# The outcome table: the kernel's own HMM selftest (hmm-tests, linked
# dynamically) run case by case under `daxmirror emulate`, next to the
# kernel's module where this kernel has it (/dev/hmm_dmirror0), else next to
# the module's outcomes recorded in the TEST_HMM guest (docs/hmm-tests-module.txt).
#   Scripts/hmm-tests-emulated.sh HMM_TESTS_DYNAMIC [--dir DIR] [--record FILE]
# hmm-tests runs whole once per side (its harness runs each case in a child
# of its own, under a timeout of its own, and goes on after a case that
# crashes or hangs); a case that run left without a line runs alone (-r)
# under a 120 s timeout. The outcome is hmm-tests' own kselftest line: ok,
# ok # SKIP, not ok; no line at all is FAIL. hmm-tests makes its files in /tmp: with --dir, DIR is bound over /tmp
# first (a DAX mount in the guests, as the baseline does).
# Exit 0 when every case has the module's outcome, or differs for a reason
# named below (and in the README); 1 otherwise.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tests=${1:?usage: hmm-tests-emulated.sh HMM_TESTS_DYNAMIC [--dir DIR] [--record FILE]}
shift
dir="" record=""
while (($#)); do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --record) record=$2; shift 2 ;;
        *) echo "hmm-tests-emulated: unknown argument $1" >&2; exit 2 ;;
    esac
done
daxmirror=${DAXMIRROR_BIN:-$here/.build/debug/daxmirror}
reference=$here/docs/hmm-tests-module.txt
[[ -x $tests ]] || { echo "hmm-tests-emulated: $tests is not there" >&2; exit 2; }
[[ -x $daxmirror ]] || { echo "hmm-tests-emulated: $daxmirror is not built" >&2; exit 2; }

# Differences with a cause (README "The HMM test driver without a kernel").
declare -A named=(
    [migrate_file_private]="a MAP_PRIVATE file mapping accepts no userfaultfd MISSING registration: its copy-on-write pages cannot be caught on their way back, so MIGRATE_TO_DEV there is EOPNOTSUPP (on DAX the module refuses too: EINVAL)"
    [hmm_gup_test]="where gup_test exists (the TEST_HMM guest), its basic GUP and its long-term pin fault the device page without FAULT_FLAG_ALLOW_RETRY, and userfaultfd refuses such a fault (handle_userfault: SIGBUS to GUP): the page stays on the device; GUP from a system call (process_vm_readv, read(2), O_DIRECT) brings it home. Elsewhere both skip"
    [snapshot]="hmm-tests overruns its own heap here (MIGRATE_TO_DEV reads 4 KiB back into a 7-byte malloc, hmm-tests.c:1535): under the module the overrun lands on free heap, under emulation on the worker thread's TLS vector"
)

module_live=0
[[ -e /dev/hmm_dmirror0 ]] && module_live=1
declare -A ref=()
if ((module_live == 0)) && [[ -f $reference ]]; then
    while read -r c o _; do [[ $c == \#* || -z $c ]] || ref[$c]=$o; done <"$reference"
fi
# shellcheck source=lib.sh
. "$here/Scripts/lib.sh"
if [[ -n $dir ]]; then fs="$(dax_label "$dir") ($dir bound over /tmp)"; else fs="$(stat -f -c %T /tmp 2>/dev/null) (not DAX)"; fi

# Everything read from the work tree is read above: the bind hides whatever
# lived under /tmp (a work tree there too), so the programs go along.
bin=$tests
if [[ -n $dir ]]; then
    mkdir -p "$dir/hmm-tmp"
    cp "$tests" "$dir/hmm-tmp/hmm-tests-dynamic"
    cp "$daxmirror" "$dir/hmm-tmp/daxmirror"
    cp "$(dirname "$daxmirror")/libdaxmirror-hmm.so" "$dir/hmm-tmp/libdaxmirror-hmm.so"
    mount --bind "$dir/hmm-tmp" /tmp || exit 2
    trap 'umount /tmp 2>/dev/null || true' EXIT
    bin=/tmp/hmm-tests-dynamic
    daxmirror=/tmp/daxmirror
fi

# The cases, from hmm-tests' own list (fixture, variant, test columns).
cases=$("$bin" -l 2>&1 | awk '
    /^-+$/ { inblock = 1; next }
    !inblock { next }
    {
        f = substr($0, 1, 20); gsub(/ /, "", f); if (f != "") { cur = f; order[++nf] = f }
        va = substr($0, 22, 25); gsub(/ /, "", va); if (va != "") V[cur] = V[cur] " " va
        te = substr($0, 48); gsub(/ /, "", te); if (te != "") T[cur] = T[cur] " " te
    }
    END {
        for (k = 1; k <= nf; k++) {
            f = order[k]; nv = split(V[f], vs, " "); nt = split(T[f], ts, " ")
            for (i = 1; i <= nv; i++) for (j = 1; j <= nt; j++) print f "." vs[i] "." ts[j]
        }
    }')
[[ -n $cases ]] || { echo "hmm-tests-emulated: $bin -l listed no cases" >&2; exit 2; }

# all COMMAND... : one run of every case. hmm-tests' harness runs each case in
# a child of its own under its own timeout, and a case that crashes or hangs
# is its "not ok" while the run goes on.
all() { (cd /tmp && timeout -k 5 900 "$@" 2>&1; echo "exit-status $?"); }
# one CASE COMMAND... : that case alone (for a case the whole run left without a line).
one() {
    local c=$1
    shift
    (cd /tmp && timeout -k 5 120 "$@" -r "$c" 2>&1; echo "exit-status $?")
}
# outcome CASE OUTPUT : PASS, SKIP or FAIL (with where) from the case's kselftest line,
# or nothing if the output has no line for it.
outcome() {
    local c=$1 out=$2 rc
    rc=$(sed -n 's/^exit-status //p' <<<"$out" | tail -n 1)
    if grep -qE "^ok [0-9]+ $c # SKIP" <<<"$out"; then echo SKIP
    elif grep -qE "^ok [0-9]+ $c\$" <<<"$out"; then echo PASS
    elif grep -qE "^not ok [0-9]+ $c" <<<"$out"; then
        echo "FAIL$(awk -v c="$c" '/^#  RUN / { cur = ($3 == c) } cur && match($0, /hmm-tests.c:[0-9]+/) { print " at " substr($0, RSTART, RLENGTH); exit }' <<<"$out")"
    elif [[ -n ${3:-} ]]; then
        if [[ $rc == 124 ]]; then echo "FAIL (hung: killed at 120 s)"; else echo "FAIL (no kselftest line: exit $rc)"; fi
    fi
}
# outcome_of CASE WHOLE_RUN_OUTPUT COMMAND... : from the whole run, else from a run of its own.
outcome_of() {
    local c=$1 whole=$2 o
    shift 2
    o=$(outcome "$c" "$whole")
    [[ -n $o ]] || o=$(outcome "$c" "$(one "$c" "$@")" final)
    echo "$o"
}

# gup_test (debugfs) lets hmm_gup_test run where the kernel has it, on both sides.
if [[ -d /sys/kernel/debug && ! -e /sys/kernel/debug/gup_test ]] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
echo "hmm-tests under daxmirror emulate, kernel $(uname -r), /tmp on $fs"
echo "| case | module | daxmirror emulate | same |"
echo "|---|---|---|---|"
same=0 differ=0 explained=0
[[ -n $record ]] && echo "# hmm-tests outcomes under the kernel's module: kernel $(uname -r), /tmp on $fs, $(date -u +%F)" >"$record"
t0=$SECONDS
module_run=""
((module_live)) && module_run=$(all "$bin")
emulated_run=$(all "$daxmirror" emulate -- "$bin")
for c in $cases; do
    if ((module_live)); then
        m=$(outcome_of "$c" "$module_run" "$bin")
        [[ -n $record ]] && echo "$c ${m%% *}" >>"$record"
    else
        m=${ref[$c]:-unknown}
        [[ $m != unknown ]] && m="$m (recorded)"
    fi
    e=$(outcome_of "$c" "$emulated_run" "$daxmirror" emulate -- "$bin")
    test=${c##*.}
    # The recording is from DAX, where the module refuses migrate_file_private
    # too; off DAX the module migrates the file's copy-on-write pages.
    [[ $test == migrate_file_private && $m == *recorded* && $fs != *-DAX* && $c != *coherent* ]] && m="PASS (the module, off DAX)"
    if [[ ${m%% *} == "${e%% *}" ]]; then verdict=yes; same=$((same + 1))
    elif [[ -n ${named[$test]:-} ]]; then verdict="named: ${named[$test]}"; explained=$((explained + 1))
    else verdict=NO; differ=$((differ + 1))
    fi
    echo "| $c | $m | $e | $verdict |"
done
echo "hmm-tests under emulate: $same cases as the module, $explained named differences, $differ unexplained ($((SECONDS - t0)) s)"
((differ == 0))
