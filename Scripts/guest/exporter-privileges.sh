#!/bin/bash
# Inside the pmem guest: the exporter with exactly the service unit's
# privileges. A process of one user (daemon) maps a file on the DAX mount and
# touches it; `daxmirror metrics`, run as another user (nobody) with only the
# capabilities the unit's AmbientCapabilities= names (setpriv, read from
# Packaging/systemd/daxmirror-metrics.service, so the two cannot drift),
# must report that mapping (bytes mapped and present: the kernel's pagemap)
# with daxmirror_scrape_errors_total at 0; as nobody without them, the same
# scrape succeeds and counts the process it could not read (permission)
# instead of failing. The HTTP server is scraped under the same privileges.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/Scripts/lib.sh"
bin=$daxmirror_bin
dir=${DAXMIRROR_DAX_DIR:?run me in the pmem guest (Scripts/guest.sh)}
unit=$here/Packaging/systemd/daxmirror-metrics.service
work=$(mktemp -d /tmp/privileges.XXXXXX)
chmod 755 "$work"
owned=$dir/privileges
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$owned"; }
trap cleanup EXIT
fail() { echo "exporter-privileges: FAILED: $*" >&2; exit 1; }

# The unit's capabilities, as setpriv spells them: CAP_SYS_PTRACE -> +sys_ptrace.
caps=$(sed -n 's/^AmbientCapabilities=//p' "$unit")
[[ -n $caps ]] || fail "no AmbientCapabilities= in $unit"
[[ $(sed -n 's/^CapabilityBoundingSet=//p' "$unit") == "$caps" ]] || fail "the unit's bounding set differs from its ambient set"
set_caps=$(for c in $caps; do c=${c#CAP_}; printf '+%s,' "${c,,}"; done); set_caps=${set_caps%,}
echo "exporter-privileges: the unit's capabilities: $caps (setpriv $set_caps)"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs "$@"; }
with_caps() { as_nobody --inh-caps="$set_caps" --ambient-caps="$set_caps" --bounding-set="-all,$set_caps" "$@"; }
without_caps() { as_nobody --inh-caps=-all --bounding-set=-all "$@"; }

# daemon's process: 4 MiB of a DAX file it owns, mapped shared and written.
mkdir -p "$owned"; chown daemon "$owned"; chmod 700 "$owned"
setpriv --reuid=daemon --regid=daemon --clear-groups python3 - "$owned/mapped.dat" > "$work/mapper" <<'PY' &
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.posix_fallocate(fd, 0, 4 << 20)
m = mmap.mmap(fd, 4 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(0, 4 << 20, 4096): m[i] = 1
print(os.getpid(), flush=True)
time.sleep(600)
PY
pids+=($!)
for _ in $(seq 100); do [[ -s $work/mapper ]] && break; sleep 0.1; done
mapper=$(cat "$work/mapper")
[[ -n $mapper ]] || fail "daemon's mapping process did not start"
[[ $(stat -c %U "/proc/$mapper") == daemon ]] || fail "the mapping process is not daemon's"

value() {  # value FILE SERIES-PREFIX: the sample's value, or nothing
    awk -v s="$2" 'index($0, s) == 1 { printf "%.0f\n", $NF; exit }' "$1"
}
errors() { awk '/^daxmirror_scrape_errors_total\{/ { n += $NF } END { print n + 0 }' "$1"; }
series="daxmirror_process_mapped_bytes{pid=\"$mapper\","

with_caps "$bin" metrics > "$work/with.prom" 2> "$work/with.err" || fail "with the unit's capabilities: exit $? ($(cat "$work/with.err"))"
mapped=$(value "$work/with.prom" "$series")
present=$(value "$work/with.prom" "daxmirror_process_present_bytes{pid=\"$mapper\",")
[[ $mapped == 4194304 ]] || fail "with $set_caps: mapped bytes of daemon's process '$mapped', want 4194304"
[[ $present == 4194304 ]] || fail "with $set_caps: present bytes '$present' (its pagemap), want 4194304"
[[ $(errors "$work/with.prom") == 0 ]] || fail "with $set_caps: $(grep '^daxmirror_scrape_errors_total{' "$work/with.prom" | tr '\n' ' ')"
echo "exporter-privileges: nobody with $set_caps reads daemon's DAX mapping: mapped $mapped, present $present; scrape errors 0"

without_caps "$bin" metrics > "$work/without.prom" 2> "$work/without.err" || fail "without capabilities the scrape failed (exit $?) instead of counting"
[[ -z $(value "$work/without.prom" "$series") ]] || fail "without capabilities a series for daemon's process appeared"
denied=$(value "$work/without.prom" 'daxmirror_scrape_errors_total{reason="permission"}')
[[ ${denied:-0} -ge 1 ]] || fail "without capabilities no permission error was counted: $(grep '^daxmirror_scrape_errors_total{' "$work/without.prom" | tr '\n' ' ')"
echo "exporter-privileges: nobody without capabilities: scrape ok, daemon's process not reported, permission errors $denied"

# The server, as the unit runs it.
port=19480
with_caps "$bin" metrics --listen "127.0.0.1:$port" 2> "$work/server.err" &
pids+=($!)
got=""
for _ in $(seq 100); do
    curl -sf --max-time 5 -o "$work/served.prom" "http://127.0.0.1:$port/metrics" 2>/dev/null \
        && got=$(value "$work/served.prom" "$series") && [[ -n $got ]] && break
    sleep 0.2
done
[[ $got == 4194304 ]] || fail "metrics --listen with $set_caps: '$got' ($(cat "$work/server.err"))"
echo "exporter-privileges: metrics --listen with $set_caps serves daemon's mapping: $got bytes"
