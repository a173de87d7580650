#!/usr/bin/env bash
# The test command's check of Scripts/install.sh, into a temporary prefix
# that already holds files of others:
#   - the installed binary runs `caps`, `metrics` and `--version` with the
#     Swift toolchain's directory hidden (a private mount namespace with an
#     empty tmpfs over it) and a PATH without it; ldd shows no libswift*;
#   - `man -l` renders the page without warnings, naming every subcommand;
#   - each completion script loads in its shell and completes the subcommands;
#   - `systemd-analyze verify` accepts the unit, whose ExecStart is the
#     installed binary; the drop-in's ExecStart too;
#   - `promtool check rules` accepts the rules, `promtool test rules` passes,
#     and fails for each of a set of broken rules (the tests can fail);
#     `promtool check config` accepts the scrape job with the rules;
#   - a second install over the first is fine; one over a file that is not
#     ours is refused before anything changes; --destdir stages under DIR
#     with PREFIX's paths inside; --uninstall leaves the prefix as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/daxmirror-check-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "check-install: FAILED: $*" >&2; exit 1; }
ok() { echo "check-install: ok: $*"; }
prefix=$work/prefix
snapshot() { (cd "$1" && find . -printf '%y %m %s %p\n' | sort); }

# Someone else's files, in directories the install also uses.
mkdir -p "$prefix/bin" "$prefix/share/man/man1"
echo '#!/bin/sh' > "$prefix/bin/other-tool"; chmod 755 "$prefix/bin/other-tool"
echo '.TH OTHER 1' > "$prefix/share/man/man1/other-tool.1"
before=$(snapshot "$prefix")

t0=$SECONDS
Scripts/install.sh --prefix "$prefix" || fail "install.sh exited $?"
ok "installed in $((SECONDS - t0)) s"
bin=$prefix/bin/daxmirror

# --- the binary, without the toolchain
ldd "$bin"
! ldd "$bin" | grep -q 'libswift\|libFoundation\|libdispatch' || fail "the binary loads Swift runtime libraries"
swift_root=$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")
[[ -d $swift_root/lib/swift ]] || fail "cannot find the toolchain's root from $(command -v swift)"
commit=$(git rev-parse --short=12 HEAD)
# Everything the binary needs is in the prefix and the system: run it where
# the toolchain's directory is an empty tmpfs.
unshare --mount --propagation private bash -c '
    set -euo pipefail
    mount -t tmpfs -o ro,size=1m none "$1"
    [[ -z $(ls -A "$1") ]] || { echo "the toolchain is still visible"; exit 1; }
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin; unset LD_LIBRARY_PATH
    ! command -v swift >/dev/null || { echo "swift is still on PATH"; exit 1; }
    "$2" --version
    "$2" caps > "$3/caps.txt"
    "$2" metrics > "$3/metrics.txt"
' _ "$swift_root" "$bin" "$work" > "$work/version.txt" || fail "the installed binary failed without the toolchain"
grep -q "daxmirror [0-9.]* (commit $commit" "$work/version.txt" \
    || fail "--version says '$(cat "$work/version.txt")', the tree is at $commit"
grep -q 'userfaultfd' "$work/caps.txt" || fail "caps printed no userfaultfd line: $(head -c 300 "$work/caps.txt")"
promtool check metrics < "$work/metrics.txt" || fail "promtool rejects the installed binary's metrics"
grep -q '^daxmirror_kernel_info{' "$work/metrics.txt" || fail "no daxmirror_kernel_info in the metrics"
ok "without the toolchain (hidden $swift_root): $(cat "$work/version.txt"); caps and metrics (promtool check metrics) run"
python3 - "$bin" <<'PY'
import statistics, subprocess, sys, time, os, resource
runs = []
for _ in range(21):
    t = time.perf_counter(); subprocess.run([sys.argv[1], "--version"], stdout=subprocess.DEVNULL, check=True); runs.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"check-install: the installed binary: {os.path.getsize(sys.argv[1]) / 1e6:.1f} MB; start-up (--version) median {statistics.median(runs) * 1000:.1f} ms of 21 runs, {rss / 1024:.1f} MiB max RSS")
PY

# --- the manual
page=$prefix/share/man/man1/daxmirror.1
MANWIDTH=100 man --warnings -l -P cat "$page" > "$work/man.txt" 2> "$work/man.err" || fail "man -l failed: $(cat "$work/man.err")"
[[ ! -s $work/man.err ]] || fail "man -l warns: $(head -n 5 "$work/man.err")"
for sub in caps devices map run inspect watch metrics persist-writer persist-verify probe-dax-wp; do
    grep -q "$sub" "$work/man.txt" || fail "the manual does not mention '$sub'"
done
grep -q 'Exit codes' "$work/man.txt" || fail "the manual lacks the exit codes"
ok "man -l renders $(wc -l < "$work/man.txt") lines, no warnings, every subcommand"

# --- completions: each loads in its own shell and completes the subcommands
bash -c 'source "$1"; complete -p daxmirror >/dev/null; COMP_WORDS=(daxmirror me); COMP_CWORD=1; COMP_LINE="daxmirror me"; COMP_POINT=${#COMP_LINE}
         f=$(complete -p daxmirror | sed -E "s/.*-F ([^ ]+).*/\1/"); "$f" daxmirror me daxmirror; printf "%s\n" "${COMPREPLY[@]}"' \
    _ "$prefix/share/bash-completion/completions/daxmirror" > "$work/bash.txt" 2>&1 || fail "bash: $(cat "$work/bash.txt")"
grep -qx 'metrics' "$work/bash.txt" || fail "bash completes 'me' as: $(tr '\n' ' ' < "$work/bash.txt")"
zsh -f -c 'fpath=("$1" $fpath); autoload -Uz compinit; compinit -u -D; (( ${+_comps[daxmirror]} )) && print ${_comps[daxmirror]}' \
    _ "$prefix/share/zsh/site-functions" > "$work/zsh.txt" 2>&1 || fail "zsh: compinit did not register daxmirror: $(cat "$work/zsh.txt")"
zsh -n "$prefix/share/zsh/site-functions/_daxmirror" || fail "zsh: the script does not parse"
fish --no-config -c 'source $argv[1]; complete -C"daxmirror "' "$prefix/share/fish/vendor_completions.d/daxmirror.fish" > "$work/fish.txt" 2>&1 \
    || fail "fish: $(cat "$work/fish.txt")"
grep -q '^inspect' "$work/fish.txt" || fail "fish completes 'daxmirror ' as: $(tr '\n' ' ' < "$work/fish.txt")"
ok "completions: bash completes 'me' to metrics, zsh's compinit registers $(cat "$work/zsh.txt"), fish lists $(wc -l < "$work/fish.txt") subcommands"

# --- the service unit
unit=$prefix/lib/systemd/system/daxmirror-metrics.service
grep -qx "ExecStart=$bin metrics --listen 127.0.0.1:9479" "$unit" || fail "the unit's ExecStart is not the installed binary: $(grep ExecStart "$unit")"
# Documentation=man:daxmirror(1) is looked up: the installed page must be found by name.
MANPATH="$prefix/share/man:" systemd-analyze verify "$unit" 2>&1 | tee "$work/verify.txt" || fail "systemd-analyze verify rejects the unit"
! grep -v 'Failed to .*cgroup\|System has not been booted with systemd' "$work/verify.txt" | grep -q . \
    || fail "systemd-analyze verify warns about the unit"
grep -qx "ExecStart=$bin metrics --listen 0.0.0.0:9479 --max-connections 128" "$prefix/share/doc/daxmirror/systemd/listen.conf.example" \
    || fail "the listen drop-in does not run the installed binary"
ok "systemd-analyze verify accepts the unit (ExecStart $bin)"

# --- Prometheus files
pdir=$prefix/share/daxmirror/prometheus
promtool check rules "$pdir/rules.yml"
(cd "$pdir" && promtool test rules rules.test.yml) || fail "promtool test rules fails"
# Each broken rule must fail the tests: they can tell.
mutants=('s/(daxmirror_region_survives_power_off == 0)/(daxmirror_region_survives_power_off >= 0)/'
         's/"\/dev\/(pmem\[0-9.\]+?)(p\[0-9\]+)?"/"\/dev\/(pmem[0-9.]+)"/'
         's/state!="ok"/state=~".+"/'
         's/daxmirror_dimm_smart_error == 1/daxmirror_dimm_smart_error >= 0/'
         's/reason!="vanished"/reason=~".+"/'
         's/ or absent(up{job="daxmirror"})//'
         's/up{job="daxmirror"} == 0 or //'
         's/for: 10m/for: 1m/' 's/for: 5m/for: 0m/')
mkdir "$work/mutant"; cp "$pdir/rules.test.yml" "$work/mutant/"
for m in "${mutants[@]}"; do
    sed "$m" "$pdir/rules.yml" > "$work/mutant/rules.yml"
    ! cmp -s "$pdir/rules.yml" "$work/mutant/rules.yml" || fail "the mutation $m changed nothing: update it"
    ! (cd "$work/mutant" && promtool test rules rules.test.yml >/dev/null 2>&1) || fail "rules.test.yml passes with a broken rule ($m)"
done
cat > "$work/prometheus.yml" <<YML
rule_files: ["$pdir/rules.yml"]
$(cat "$pdir/scrape.yml")
YML
promtool check config "$work/prometheus.yml" >/dev/null || fail "promtool check config rejects scrape.yml with the rules"
ok "promtool: rules checked, rules.test.yml passes, and fails for each of ${#mutants[@]} broken rules; scrape.yml checks"

# --- reinstall, a foreign file, --destdir, --uninstall
Scripts/install.sh --prefix "$prefix" > "$work/again.txt" 2>&1 || fail "a second install over the first failed: $(tail -n 3 "$work/again.txt")"
Scripts/install.sh --prefix "$prefix" --uninstall
[[ $(snapshot "$prefix") == "$before" ]] || { diff <(echo "$before") <(snapshot "$prefix") || true; fail "--uninstall did not leave the prefix as it was"; }
ok "--uninstall left the prefix as it was ($(wc -l <<<"$before") entries)"
echo "not ours" > "$prefix/share/man/man1/daxmirror.1"
refused=$(snapshot "$prefix")
if Scripts/install.sh --prefix "$prefix" > "$work/foreign.txt" 2>&1; then fail "install.sh overwrote a file that was not its own"; else rc=$?; fi
((rc == 6)) || fail "a foreign file: exit $rc, not 6: $(tail -n 2 "$work/foreign.txt")"
grep -q "daxmirror.1 exists and an earlier install did not put it there" "$work/foreign.txt" || fail "no reason given: $(cat "$work/foreign.txt")"
[[ $(snapshot "$prefix") == "$refused" ]] || fail "a refused install changed the prefix"
ok "an install over a file not its own is refused (exit 6), nothing changed"
Scripts/install.sh --prefix /opt/daxmirror --destdir "$work/stage" > "$work/destdir.txt" 2>&1 || fail "--destdir: $(tail -n 3 "$work/destdir.txt")"
[[ -x $work/stage/opt/daxmirror/bin/daxmirror && ! -e /opt/daxmirror/bin/daxmirror ]] || fail "--destdir did not stage under DIR"
grep -qx "ExecStart=/opt/daxmirror/bin/daxmirror metrics --listen 127.0.0.1:9479" "$work/stage/opt/daxmirror/lib/systemd/system/daxmirror-metrics.service" \
    || fail "--destdir: the unit names the staging path"
Scripts/install.sh --prefix /opt/daxmirror --destdir "$work/stage" --uninstall >/dev/null
# The staging directory did not exist before: the uninstall takes it too.
[[ ! -e $work/stage ]] || fail "--destdir --uninstall left $(find "$work/stage" | head -n 3)"
ok "--destdir stages under DIR with PREFIX's paths inside, and uninstalls from there"
if Scripts/install.sh --prefix "$work/never" --uninstall > "$work/none.txt" 2>&1; then fail "--uninstall of nothing succeeded"; fi
grep -q "nothing to uninstall" "$work/none.txt" || fail "--uninstall of nothing: $(cat "$work/none.txt")"
ok "--uninstall where nothing is installed says so"
