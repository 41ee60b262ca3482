# Shared by scripts/setup.sh, scripts/cluster-tools.sh and scripts/s3-tools.sh: one-line errors, Debian packages,
# Go builds. Callers set ROOT and PREFIX (the word their messages start with) before sourcing this file, and VENV
# and CACHE before calling build_cached.

say() { printf '%s: %s\n' "$PREFIX" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PREFIX" "$*" >&2; exit 1; }

install_debian_packages() {  # install_debian_packages PKG...: only those not installed yet
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "Debian packages missing (${missing[*]}) and apt-get not found: install them with your package manager"
    [ "$(id -u)" -eq 0 ] || die "Debian packages missing (${missing[*]}): run 'sudo apt-get install -y ${missing[*]}' and re-run make"
    say "installing Debian packages: ${missing[*]}"
    # A package's own service would bind public ports on its defaults; mlrelease starts prometheus, etcd and
    # containerd itself (on loopback or in the cluster's namespace), so no init script may start anything.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    local ok=1
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >/tmp/mlrelease-apt.log 2>&1 || ok=0
    [ "$created_policy" -eq 1 ] && rm -f "$policy"
    [ "$ok" -eq 1 ] || die "apt-get could not install ${missing[*]} (log: /tmp/mlrelease-apt.log): check that Debian's package mirror is reachable and re-run make"
}

# go_build MODULE_DIR PACKAGES OUTPUT [LDFLAGS]: PACKAGES is one or more space-separated import paths (then
# OUTPUT is a directory ending in /). Niced and bounded to two jobs: the machine may have only two cores.
go_build() {
    local dir=$1 pkgs=$2 out=$3 ldflags=${4:-}
    command -v go >/dev/null \
        || die "Go toolchain not found: install Go >= 1.21 (the pinned toolchain in tools/engine/go.mod is then fetched from the Go module proxy) and re-run make"
    local log
    log=$(mktemp /tmp/mlrelease-go-build.XXXXXX.log)
    (cd "$dir" && GOTOOLCHAIN=auto GOFLAGS=-mod=mod go mod download >"$log" 2>&1) \
        || die "the Go module proxy refused a module of $(basename "$dir")/go.mod ($(grep -m1 -E 'go: |reading' "$log" || tail -n1 "$log")): check GOPROXY and that the pinned versions are served"
    # shellcheck disable=SC2086  # PACKAGES is a list
    (cd "$dir" && GOTOOLCHAIN=auto nice -n 10 go build -p 2 -trimpath -ldflags "-s -w $ldflags" -o "$out" $pkgs >>"$log" 2>&1) \
        || die "building $pkgs failed (log: $log): $(tail -n1 "$log")"
    rm -f "$log"
}

required_version() {  # required_version MODULE_DIR MODULE: the version MODULE_DIR/go.mod requires
    awk -v m="$2" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1/go.mod"
}

module_key() {  # module_key MODULE_DIR EXTRA...: digest of the module's files, the Go version and EXTRA
    { cat "$1"/go.mod "$1"/go.sum "$1"/*.go 2>/dev/null; go env GOVERSION GOARCH; printf '%s\n' "${@:2}"; } \
        | sha256sum | cut -c1-16
}

# build_cached NAME MODULE_DIR "PACKAGES" "BINARIES" [LDFLAGS]: build PACKAGES into the cache unless a build with
# the same key is there, then link each of BINARIES into .venv/bin.
build_cached() {
    local name=$1 dir=$2 pkgs=$3 bins=$4 ldflags=${5:-}
    local key out
    key=$(module_key "$dir" "$pkgs" "$ldflags" "${CGO_ENABLED:-}")
    out="$CACHE/$name-$key"
    if [ ! -f "$out/.complete" ]; then
        say "building $name from Go modules (once per pinned version; cached in $out)"
        rm -rf "$out" && mkdir -p "$out"
        local start=$SECONDS
        if [[ "$pkgs" == *" "* ]]; then
            go_build "$dir" "$pkgs" "$out/" "$ldflags"
        else
            go_build "$dir" "$pkgs" "$out/$bins" "$ldflags"
        fi
        touch "$out/.complete"
        say "built $name in $((SECONDS - start)) s"
    fi
    for bin in $bins; do
        [ -x "$out/$bin" ] || die "$out/$bin was not built: delete $out and re-run make"
        ln -sfn "$out/$bin" "$VENV/bin/$bin"
    done
}
