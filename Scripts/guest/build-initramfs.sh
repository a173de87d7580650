#!/usr/bin/env bash
# Builds (or reuses) the guest's initramfs for an unpacked kernel:
#   Scripts/guest/build-initramfs.sh KERNEL_DIR  -> prints the .cpio.gz path
# Contents: static busybox, Scripts/guest/init, and the pmem / DAX / filesystem /
# 9p modules with their dependencies (decompressed, in load order). Cached by
# kernel release and a hash of the init script and module list.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdir=${1:?usage: build-initramfs.sh KERNEL_DIR}
release=$(cat "$kdir/release")
# crc32c first: libcrc32c asks the crypto API for it when it loads.
modules=("crc32c_generic?" "crc32c_intel?" libnvdimm nd_pmem nd_e820 nfit dax_pmem device_dax
         "dax_pmem_core?" ext4 xfs 9p 9pnet_virtio "virtio_pci?")
busybox=/bin/busybox
[[ -x $busybox ]] && file_is_static=$(ldd $busybox 2>&1 | grep -c "not a dynamic" || true)
[[ ${file_is_static:-0} -ge 1 ]] || { echo "build-initramfs: need a static /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }
key=$(cat "$here/init" "$here/modules.py" <(echo "${modules[*]}") | sha256sum | cut -c1-12)
out=$kdir/initramfs-$key.cpio.gz
if [[ -f $out ]]; then echo "$out"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,proc,sys,dev,modules,host,tmp}
cp "$busybox" "$work/bin/busybox"
cp "$here/init" "$work/init"
chmod +x "$work/init"
python3 "$here/modules.py" "$kdir/root/lib/modules/$release" "$work/modules" "${modules[@]}" >/dev/null
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
