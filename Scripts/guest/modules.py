#!/usr/bin/env python3
"""Resolves kernel modules and their dependencies, in load order, from an
unpacked kernel's modules.dep; copies them (decompressed) to OUT and writes
OUT/order, one file name per line. Modules built into the kernel are skipped.

usage: modules.py MODULES_DIR OUT name [name ...]
A name ending in '?' is optional (absent on some kernels)."""
import lzma, os, sys

moddir, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]

def stem(path):
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            return base[: -len(ext)].replace("-", "_")
    return base

deps, paths = {}, {}
with open(os.path.join(moddir, "modules.dep")) as f:
    for line in f:
        target, _, rest = line.partition(":")
        s = stem(target)
        paths[s] = target
        deps[s] = [stem(d) for d in rest.split()]
builtin = set()
bpath = os.path.join(moddir, "modules.builtin")
if os.path.exists(bpath):
    builtin = {stem(l.strip()) for l in open(bpath) if l.strip()}

order, seen = [], set()
def visit(name):
    if name in seen:
        return
    seen.add(name)
    for d in deps[name]:
        visit(d)
    order.append(name)

for raw in names:
    optional = raw.endswith("?")
    name = raw.rstrip("?").replace("-", "_")
    if name in deps:
        visit(name)
    elif name in builtin or optional:
        continue
    else:
        sys.exit(f"modules.py: module {name} is neither a module nor built in")

os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "order"), "w") as order_file:
    for name in order:
        src = os.path.join(moddir, paths[name])
        data = open(src, "rb").read()
        if src.endswith(".xz"):
            data = lzma.decompress(data)
        elif src.endswith(".zst"):
            import subprocess
            data = subprocess.run(["zstd", "-dc", src], check=True, capture_output=True).stdout
        elif src.endswith(".gz"):
            import gzip
            data = gzip.decompress(data)
        open(os.path.join(out, name + ".ko"), "wb").write(data)
        order_file.write(name + ".ko\n")
print(" ".join(order))
