#!/usr/bin/env bash
# Builds daxmirror for hosts without a Swift toolchain and installs it.
#
#   Scripts/install.sh [--prefix DIR] [--destdir DIR]   build and install
#   Scripts/install.sh [--prefix DIR] [--destdir DIR] --uninstall
#
# The binary is the release build with the Swift runtime linked in
# (--static-swift-stdlib): it needs only glibc and Debian's libpmem,
# libndctl and libdaxctl (`apt-get install libpmem1 libndctl6 libdaxctl1`).
# Installed under PREFIX (default /usr/local):
#   bin/daxmirror
#   share/man/man1/daxmirror.1                      (argument-parser's manual generator)
#   share/bash-completion/completions/daxmirror
#   share/zsh/site-functions/_daxmirror
#   share/fish/vendor_completions.d/daxmirror.fish
#   lib/systemd/system/daxmirror-metrics.service    (the exporter, hardened)
#   share/doc/daxmirror/systemd/*.conf.example      (drop-ins: another address, SMART)
#   share/daxmirror/prometheus/                     (scrape job, alert rules and their tests)
#   share/daxmirror/install-manifest                (what --uninstall removes)
# --destdir stages the files under DIR (for a package build): the paths
# written into them stay PREFIX's. A file already at one of those paths that
# an earlier install did not put there is never overwritten: the install
# stops before changing anything. --uninstall removes exactly the files of
# the manifest, and the directories the install created if they are empty.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $1" >&2; exit "${2:-1}"; }

prefix=/usr/local destdir="" uninstall=0
while (($#)); do
    case $1 in
        --prefix) prefix=${2:?"--prefix needs a directory"}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2:?"--destdir needs a directory"}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see Scripts/install.sh --help)" 64 ;;
    esac
done
[[ $prefix == /* ]] || die "--prefix must be an absolute path, not '$prefix'" 64
[[ -z $destdir || $destdir == /* ]] || die "--destdir must be an absolute path, not '$destdir'" 64
[[ $prefix$destdir != *$'\n'* ]] || die "a path with a newline cannot be recorded in the manifest" 64
prefix=${prefix%/}; [[ -n $prefix ]] || prefix=/
root=$destdir$prefix
manifest_rel=share/daxmirror/install-manifest
manifest=$root/$manifest_rel

# Removes what the manifest lists: files first, then the directories the
# install created, deepest first, each only if nothing else is in it.
remove_installed() {
    local kind path dirs=() tops=()
    while IFS= read -r line; do
        kind=${line%% *} path=$root/${line#* }
        case $kind in
            f) rm -f -- "$path" ;;
            d) dirs=("$path" "${dirs[@]}") ;;
            r) tops=("${line#* }" "${tops[@]}") ;;
        esac
    done < "$manifest"
    rm -f -- "$manifest"
    for d in "${dirs[@]}" "${tops[@]}"; do rmdir -- "$d" 2>/dev/null || true; done
}

if ((uninstall)); then
    [[ -f $manifest ]] || die "nothing to uninstall under $root: $manifest_rel is not there (installed with another --prefix or --destdir?)" 3
    n=$(grep -c '^f ' "$manifest" || true)
    remove_installed
    echo "install.sh: removed $n files from $root"
    exit 0
fi

command -v swift >/dev/null || die "swift is not on PATH: the build needs the Swift toolchain (its usr/bin on PATH), the installed binary does not" 11
for p in libpmem-dev libndctl-dev libdaxctl-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || die "$p is missing: run Scripts/setup.sh (or apt-get install -y libpmem-dev libndctl-dev libdaxctl-dev)" 11
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/daxmirror-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT

echo "install.sh: building the release binary with the Swift runtime linked in (a few minutes the first time)"
build=(swift build -c release --static-swift-stdlib --product daxmirror)
# Progress every 50 build steps (SwiftPM's [done/planned] count); errors as they come.
"${build[@]}" 2>&1 | tee "$stage/build.log" | {
    steps=0
    while IFS= read -r line; do
        case $line in
            \[*/*\]*) steps=$((steps + 1)); ((steps % 50)) || echo "  ${line%%]*}]" ;;
            *error:*) echo "$line" ;;
        esac
    done
} \
    || { tail -n 30 "$stage/build.log" >&2; die "the release build failed (the end of its output is above)"; }
bin=$("${build[@]}" --show-bin-path)/daxmirror
[[ -x $bin ]] || die "the build left no binary at $bin"
if swift_libs=$(ldd "$bin" | grep -o 'libswift[^ ]*\|libFoundation[^ ]*\|libdispatch[^ ]*'); then
    die "the binary still loads the toolchain's $(tr '\n' ' ' <<<"$swift_libs")— it would not run without Swift"
fi

echo "install.sh: the manual page (argument-parser's generate-manual)"
ap=.build/checkouts/swift-argument-parser
[[ -f $ap/Package.swift ]] || die "$ap is missing: the build above should have fetched it"
swift build --package-path "$ap" --scratch-path .build/tools --product generate-manual >/dev/null \
    || die "building generate-manual failed (swift build --package-path $ap --product generate-manual)"
gm=$(swift build --package-path "$ap" --scratch-path .build/tools --show-bin-path)/generate-manual
date=$(git log -1 --format=%cs 2>/dev/null || date -u +%F)
mkdir -p "$stage/man"
"$gm" "$bin" --date "$date" --output-directory "$stage/man" >/dev/null || die "generate-manual failed"
[[ -s $stage/man/daxmirror.1 ]] || die "generate-manual wrote no daxmirror.1"
# The help texts are plain text: a blank line between paragraphs becomes
# .Pp (mdoc warns about empty lines), and the indented lines under
# "Examples:" a literal display, each line kept as it is typed.
awk '
    lit && !/^  / { print ".Ed"; lit = 0 }
    /^$/ { print ".Pp"; next }
    !lit && /^  / { print ".Bd -literal -offset indent"; lit = 1 }
    lit { sub(/^  /, ""); if ($0 ~ /^[.\047]/) $0 = "\\&" $0 }
    { print }
    END { if (lit) print ".Ed" }' "$stage/man/daxmirror.1" > "$stage/daxmirror.1"

# DWARF out, symbols kept: 46 MB to 32 MB, and a crash's backtrace still names its functions.
strip --strip-debug -o "$stage/daxmirror" "$bin" || die "strip failed on $bin"

for shell in bash zsh fish; do
    "$bin" --generate-completion-script "$shell" > "$stage/completion.$shell" || die "no $shell completion script"
done
bindir=$prefix/bin; bindir=${bindir//\/\//\/}
sed "s|@BINDIR@|$bindir|g" Packaging/systemd/daxmirror-metrics.service > "$stage/unit"
sed "s|@BINDIR@|$bindir|g" Packaging/systemd/listen.conf.example > "$stage/listen"

# What goes where: source, mode, path under the prefix.
files=(
    "$stage/daxmirror|755|bin/daxmirror"
    "$stage/daxmirror.1|644|share/man/man1/daxmirror.1"
    "$stage/completion.bash|644|share/bash-completion/completions/daxmirror"
    "$stage/completion.zsh|644|share/zsh/site-functions/_daxmirror"
    "$stage/completion.fish|644|share/fish/vendor_completions.d/daxmirror.fish"
    "$stage/unit|644|lib/systemd/system/daxmirror-metrics.service"
    "$stage/listen|644|share/doc/daxmirror/systemd/listen.conf.example"
    "Packaging/systemd/smart.conf.example|644|share/doc/daxmirror/systemd/smart.conf.example"
    "Packaging/prometheus/scrape.yml|644|share/daxmirror/prometheus/scrape.yml"
    "Packaging/prometheus/rules.yml|644|share/daxmirror/prometheus/rules.yml"
    "Packaging/prometheus/rules.test.yml|644|share/daxmirror/prometheus/rules.test.yml"
)

# Nothing is touched if any target is someone else's file.
ours=""
[[ -f $manifest ]] && ours=$(cat "$manifest")
for entry in "${files[@]}"; do
    rel=${entry##*|}
    if [[ -e $root/$rel || -L $root/$rel ]] && ! grep -qxF "f $rel" <<<"$ours"; then
        die "$root/$rel exists and an earlier install did not put it there: remove or move it, or choose another --prefix" 6
    fi
done
# An earlier install of ours is replaced as a whole (a file it had and this
# one does not is not left behind).
[[ -f $manifest ]] && remove_installed

record=()
mkdir_recorded() {  # creates DIR (relative to root) and its parents, recording those it made
    local rel=$1 path="" part
    IFS=/ read -ra parts <<<"$rel"
    for part in "${parts[@]}"; do
        path=${path:+$path/}$part
        if [[ ! -d $root/$path ]]; then
            mkdir -- "$root/$path" || die "cannot create $root/$path"
            record+=("d $path")
        fi
    done
}
# The prefix itself (and DESTDIR's path to it), where it did not exist:
# recorded with absolute paths, removed last.
path=""
IFS=/ read -ra parts <<<"${root#/}"
for part in "${parts[@]}"; do
    path=$path/$part
    if [[ ! -d $path ]]; then
        mkdir -- "$path" || die "cannot create $path"
        record+=("r $path")
    fi
done
for entry in "${files[@]}"; do
    IFS='|' read -r src mode rel <<<"$entry"
    mkdir_recorded "$(dirname "$rel")"
    install -m "$mode" -- "$src" "$root/$rel" || die "cannot install $root/$rel"
    record+=("f $rel")
done
mkdir_recorded "$(dirname "$manifest_rel")"
printf '%s\n' "${record[@]}" > "$manifest"

echo "install.sh: installed ${#files[@]} files under $root ($("$root/bin/daxmirror" --version))"
echo "  binary: $(du -h "$root/bin/daxmirror" | cut -f1), needs $(ldd "$root/bin/daxmirror" | awk '/=>/{print $1}' | grep -E 'pmem|ndctl|daxctl' | tr '\n' ' ')and glibc"
if [[ -z $destdir ]]; then
    echo "  the exporter: systemctl daemon-reload && systemctl enable --now daxmirror-metrics"
    [[ $prefix == /usr/local || $prefix == /usr ]] \
        || echo "    ($prefix/lib/systemd/system is not on systemd's search path: systemctl link $prefix/lib/systemd/system/daxmirror-metrics.service)"
    echo "  Prometheus: $prefix/share/daxmirror/prometheus/ (scrape.yml, rules.yml)"
    echo "  remove: Scripts/install.sh --prefix $prefix --uninstall"
fi
