# Sourced: a private apt state for one Debian suite, so kernels and kernel
# sources can be downloaded without changing the host's apt configuration.
#   private_apt SUITE DIR   -> sets apt_opts=(...) for apt-get / apt-cache
# Its sources file reuses the URI and keyring of the host's own Debian
# sources (never a host name of our own).
private_apt() {
    local suite=$1 dir=$2 uri="" keyring=/usr/share/keyrings/debian-archive-keyring.gpg f u k
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        u=$(awk '/^URIs:/{print $2; exit}' "$f")
        if [[ -n $u && $u != *security* ]] && grep -q '^Suites:.*bookworm' "$f"; then
            uri=$u
            k=$(awk '/^Signed-By:/{print $2; exit}' "$f"); [[ -n $k ]] && keyring=$k
            break
        fi
    done
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
    fi
    [[ -n $uri ]] || { echo "debian-apt: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2; return 1; }
    mkdir -p "$dir/lists/partial" "$dir/archives/partial"
    echo "deb [signed-by=$keyring] $uri $suite main" > "$dir/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
              -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Default-Release="
              -o "APT::Sandbox::User=root")
}
