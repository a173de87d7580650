#!/bin/bash
# Inside the pmem guest: a real Prometheus (Debian's) scrapes
# `daxmirror metrics --listen` on loopback, and PromQL through its HTTP API
# must return what the kernel says: the namespace's size (ndctl list) and the
# PMD-mapped bytes of a process this script starts on the DAX mount (the
# process's own pagemap, read by `daxmirror inspect`). promtool checks the
# exposition too. Everything stays on 127.0.0.1 and stops by itself.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/Scripts/lib.sh"
bin=$daxmirror_bin
dir=${DAXMIRROR_DAX_DIR:?run me in the pmem guest (Scripts/guest.sh)}
work=$(mktemp -d /tmp/prom.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$dir/prom-mapped.dat"; }
trap cleanup EXIT
fail() { echo "prometheus-scrape: $*" >&2; exit 1; }
port=19479 prom_port=19090

"$bin" metrics | promtool check metrics || fail "promtool rejects the exposition"
echo "prometheus-scrape: promtool check metrics: ok"

# A process mapping 8 MiB of a DAX file at a 2 MiB-aligned address, both 2 MiB chunks touched.
python3 - "$dir/prom-mapped.dat" > "$work/mapper" <<'PY' &
import ctypes, mmap, os, sys, time
MB2 = 2 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.posix_fallocate(fd, 0, 8 << 20)
r = libc.mmap(None, 10 << 20, 0, 0x22, -1, 0)
at = (r + MB2 - 1) & ~(MB2 - 1)
p = libc.mmap(at, 8 << 20, 3, 0x01 | 0x10, fd, 0)
ctypes.memset(p, 1, 4 << 20)
print(os.getpid(), flush=True)
time.sleep(600)
PY
pids+=($!)
for _ in $(seq 100); do [[ -s $work/mapper ]] && break; sleep 0.1; done
mapper=$(cat "$work/mapper")
[[ -n $mapper ]] || fail "the mapping process did not start"

"$bin" metrics --listen "127.0.0.1:$port" 2> "$work/server.err" &
pids+=($!)
cat > "$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: daxmirror
    static_configs: [{targets: ["127.0.0.1:$port"]}]
YML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
pids+=($!)
query() {  # query PROMQL: prints the first sample's value, or nothing
    curl -sf --max-time 5 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
up=""
for _ in $(seq 120); do
    up=$(query 'up{job="daxmirror"}' 2>/dev/null || true)
    [[ $up == 1 ]] && break
    sleep 0.5
done
[[ $up == 1 ]] || { tail -n 20 "$work/prometheus.log" "$work/server.err" >&2; fail "Prometheus never scraped daxmirror (up=$up)"; }
echo "prometheus-scrape: Prometheus $(prometheus --version 2>&1 | head -n 1 | cut -d' ' -f3) scrapes daxmirror: up=1"

want_ns=$(ndctl list -N | python3 -c 'import json,sys; n=json.load(sys.stdin); n=n if isinstance(n,list) else [n]; print(n[0]["size"])')
got_ns=$(query 'daxmirror_namespace_size_bytes{namespace="namespace0.0"}')
[[ -n $got_ns ]] && python3 -c "import sys; sys.exit(0 if float('$got_ns') == $want_ns else 1)" \
    || fail "PromQL namespace size $got_ns, ndctl list says $want_ns"
echo "prometheus-scrape: daxmirror_namespace_size_bytes = $got_ns (ndctl list: $want_ns)"

want_pmd=$("$bin" inspect "$mapper" --json | python3 -c 'import json,sys; v=[v for v in json.load(sys.stdin)["vmas"] if v.get("path","").endswith("prom-mapped.dat")]; print(sum((x["pmd"] or 0) for x in v) * (2 << 20))')
got_pmd=""
for _ in $(seq 20); do
    got_pmd=$(query "daxmirror_process_pmd_mapped_bytes{pid=\"$mapper\"}")
    [[ -n $got_pmd ]] && break
    sleep 0.5
done
[[ -n $got_pmd ]] && python3 -c "import sys; sys.exit(0 if float('$got_pmd') == $want_pmd and $want_pmd > 0 else 1)" \
    || fail "PromQL PMD-mapped bytes of $mapper: '$got_pmd', the process's pagemap (inspect): $want_pmd"
echo "prometheus-scrape: daxmirror_process_pmd_mapped_bytes{pid=\"$mapper\"} = $got_pmd (inspect: $want_pmd)"
