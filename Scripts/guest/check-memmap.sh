#!/bin/bash
# Inside a memmap= guest (Scripts/guest.sh --pmem memmap): daxmirror must tell
# this pmem for what it is, against the kernel's own account of it.
#   - devices: the e820 bus, its region and namespace as `ndctl list` names
#     them, and "memmap-ram", survives_power_off false;
#   - map of a new file on the mount: "survives power-off NO" (text) and
#     survives_power_off false (JSON);
#   - inspect of a process mapping that file: persistence memmap-ram;
#   - caps: the namespace's backing.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
bin=$daxmirror_bin
fail() { echo "check-memmap: $*" >&2; exit 1; }
grep -q "Persistent Memory (legacy)" /proc/iomem || fail "/proc/iomem has no legacy persistent memory range: not a memmap= guest"
devices=$("$bin" devices --json)
python3 - "$devices" "$(ndctl list -BRN)" <<'PY' || fail "devices disagrees with ndctl list"
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
bus = next(b for b in ours["buses"] if b["provider"] == "e820")
region = bus["regions"][0]
assert region["persistence"]["kind"] == "memmap-ram", region["persistence"]
assert region["persistence"]["survives_power_off"] is False
theirs = theirs if isinstance(theirs, list) else [theirs]
t_bus = next(b for b in theirs if b["provider"] == "e820")
t_region = next(r for r in t_bus["regions"] if r["dev"] == region["dev"])
assert region["size"] == t_region["size"], (region["size"], t_region["size"])
assert [n["dev"] for n in region["namespaces"]] == [n["dev"] for n in t_region["namespaces"]]
assert region["namespaces"][0]["mode"] == t_region["namespaces"][0]["mode"] == "fsdax"
print("check-memmap: devices: bus", bus["dev"], "(e820),", region["dev"], region["size"], "bytes,", region["namespaces"][0]["dev"], "fsdax, memmap-ram: agrees with ndctl list")
PY
f=/mnt/check-memmap.$$
text=$("$bin" map "$f" --create --size 4M --fill 0x5a)
grep -q "survives power-off  NO" <<<"$text" || fail "map did not say the data is lost at power-off: $text"
json=$("$bin" map "$f" --json)
python3 -c 'import json,sys; p=json.loads(sys.argv[1])["persistence"]; assert p["kind"]=="memmap-ram" and p["survives_power_off"] is False, p' "$json" \
    || fail "map --json: $json"
python3 -c 'import mmap,os,sys,time; f=open(sys.argv[1],"r+b"); m=mmap.mmap(f.fileno(),0); m[0]; print(os.getpid(),flush=True); time.sleep(30)' "$f" > /tmp/holder.pid &
holder=$!
for _ in $(seq 100); do [[ -s /tmp/holder.pid ]] && break; sleep 0.1; done
inspect=$("$bin" inspect "$(cat /tmp/holder.pid)" --json)
kill "$holder" 2>/dev/null || true
python3 -c 'import json,sys; v=[v for v in json.loads(sys.argv[1])["vmas"] if v.get("path","").startswith(sys.argv[2])]; assert v and v[0]["persistence"]=="memmap-ram" and v[0]["survives_power_off"] is False, v' "$inspect" "$f" \
    || fail "inspect did not name the memmap= backing"
"$bin" caps --dir /mnt | grep -q "LOST AT POWER-OFF" || fail "caps did not name the backing"
rm -f "$f"
echo "check-memmap: map, inspect and caps say memmap= RAM, lost at power-off"
