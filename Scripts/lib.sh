# Shared by the scripts (sourced, POSIX sh + awk, so that the guest's busybox
# can use it too): where the binary is, and what a DAX mount is.
#   . Scripts/lib.sh

# The work tree this file lives in, and the debug binary in it
# (DAXMIRROR_BIN overrides: the benchmarks' release build).
daxmirror_root=$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." 2>/dev/null && pwd)
daxmirror_bin=${DAXMIRROR_BIN:-$daxmirror_root/.build/debug/daxmirror}

# mount_of DIR: "MOUNTPOINT FSTYPE OPTIONS" of the mount DIR is on (the
# longest mount point that is DIR or a parent of it; the last one mounted
# there wins), from /proc/mounts (DAXMIRROR_MOUNTS names another table: tests).
mount_of() {
    _abs=$(cd "$1" 2>/dev/null && pwd -P) || return 1
    awk -v d="$_abs" '
        { m = $2; gsub(/\\040/, " ", m)
          if (d == m || m == "/" || substr(d, 1, length(m) + 1) == m "/")
              if (length(m) >= length(best)) { best = m; line = m " " $3 " " $4 } }
        END { if (line == "") exit 1; print line }' "${DAXMIRROR_MOUNTS:-/proc/mounts}"
}

# is_dax_mount DIR: true if files created in DIR are DAX: the mount's
# options hold exactly `dax` or `dax=always`, or `dax=inode` and DIR carries
# the DAX attribute (lsattr's `x`, which new files inherit). `dax=never`,
# or a word merely containing "dax", is not DAX.
is_dax_mount() {
    _opts=$(mount_of "$1" | awk '{print $3}') || return 1
    case ",$_opts," in
        *,dax,*|*,dax=always,*) return 0 ;;
        *,dax=inode,*) lsattr -d "$1" 2>/dev/null | awk '{exit !($1 ~ /x/)}' ;;
        *) return 1 ;;
    esac
}

# dax_label DIR: the filesystem type of DIR's mount, "-DAX" appended if DAX
# (the conformance table's memory column: "ext4-DAX").
dax_label() {
    _fs=$(mount_of "$1" | awk '{print $2}') || return 1
    if is_dax_mount "$1"; then echo "$_fs-DAX"; else echo "$_fs"; fi
}
