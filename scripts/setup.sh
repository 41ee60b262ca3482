#!/usr/bin/env bash
# One-command, idempotent setup for a brand-new machine (see README.md).
#
# Installs, each only when missing or out of date:
#   1. Debian packages the local target needs (prometheus, node exporter, alertmanager; chromium for the page tests), with apt-get;
#   2. the Python environment .venv from requirements.txt + constraints.txt, with the project installed into it;
#   3. the Pulumi engine: the CLI built from the Go modules pinned in tools/engine/go.mod (version stamped in),
#      the Python language host built from tools/engine/langhost, and the release's own launcher scripts.
# Every failure prints one line saying what failed and what to do, and exits non-zero.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=setup
VENV="$ROOT/.venv"
ENGINE_DIR="$ROOT/tools/engine"
LANGHOST_DIR="$ENGINE_DIR/langhost"
DEBIAN_PACKAGES=(prometheus prometheus-node-exporter prometheus-alertmanager chromium)

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# The pinned release is whatever tools/engine/go.mod requires; nothing else names it.
pinned_version() {
    awk '$1 == "github.com/pulumi/pulumi/pkg/v3" { print $2; exit }' "$ENGINE_DIR/go.mod"
}

install_python_env() {
    command -v python3 >/dev/null || die "python3 not found: install Python 3.11 or 3.12 (apt-get install -y python3 python3-venv)"
    python3 -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' \
        || die "python3 is $(python3 -V 2>&1); mlrelease needs Python 3.11 or 3.12 (mlserver supports no newer)"
    local stamp="$VENV/.mlrelease-requirements" want
    want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" \
        | sha256sum | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "creating the Python environment in .venv"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" \
        || die "python3 -m venv failed: install the venv module (apt-get install -y python3-venv) and re-run make"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt" \
        || die "pip could not install requirements.txt: check that PyPI is reachable and the pins exist, then re-run make"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$ROOT/requirements-nodeps.txt" \
        || die "pip could not install requirements-nodeps.txt: check that PyPI is reachable and the pins exist, then re-run make"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT" \
        || die "pip could not install the mlrelease project into .venv: see the message above"
    printf '%s\n' "$want" >"$stamp"
}

engine_version_of() {  # prints the version a pulumi binary reports, or nothing
    PULUMI_SKIP_UPDATE_CHECK=true "$1" version 2>/dev/null | head -n1 || true
}

install_engine() {
    local version
    version=$(pinned_version)
    [ -n "$version" ] || die "tools/engine/go.mod pins no github.com/pulumi/pulumi/pkg/v3 version"
    mkdir -p "$VENV/bin" "$VENV/libexec"

    # 1. The CLI: reuse a pulumi of the pinned version on PATH, else build it once.
    if [ "$(engine_version_of "$VENV/bin/pulumi")" != "$version" ]; then
        local ambient
        ambient=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vx "$VENV/bin" | paste -sd: -) command -v pulumi || true)
        if [ -n "$ambient" ] && [ "$(engine_version_of "$ambient")" = "$version" ]; then
            say "using the pulumi $version already on PATH: $ambient"
            ln -sf "$ambient" "$VENV/bin/pulumi"
        else
            say "building the Pulumi CLI $version from Go modules (takes a few minutes once; cached afterwards)"
            go_build "$ENGINE_DIR" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi "$VENV/bin/pulumi.tmp" \
                "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$version"
            mv -f "$VENV/bin/pulumi.tmp" "$VENV/bin/pulumi"
        fi
        [ "$(engine_version_of "$VENV/bin/pulumi")" = "$version" ] \
            || die ".venv/bin/pulumi reports '$(engine_version_of "$VENV/bin/pulumi")', expected $version: delete .venv/bin/pulumi and re-run make"
    fi

    # 2. The Python language host (see tools/engine/README.md for why it comes from its own module).
    local host_version host_stamp="$VENV/libexec/.pulumi-language-python"
    host_version=$(awk '$1 == "github.com/pulumi/pulumi/sdk/v3" { print $2; exit }' "$LANGHOST_DIR/go.mod")
    if [ ! -x "$VENV/libexec/pulumi-language-python" ] || [ "$(cat "$host_stamp" 2>/dev/null)" != "$host_version" ]; then
        say "building the Pulumi Python language host from sdk/v3 $host_version"
        go_build "$LANGHOST_DIR" github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python \
            "$VENV/libexec/pulumi-language-python"
        printf '%s\n' "$host_version" >"$host_stamp"
    fi
    install -m 0755 "$ENGINE_DIR/pulumi-language-python.sh" "$VENV/bin/pulumi-language-python"
    install -m 0755 "$ENGINE_DIR/pulumi-analyzer-policy-mlrelease-python.sh" \
        "$VENV/bin/pulumi-analyzer-policy-mlrelease-python"

    # 3. The pinned release's own launcher scripts, from the sdk/v3 module in the module cache.
    local sdk_dir
    sdk_dir=$(cd "$ENGINE_DIR" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3 2>/dev/null) || sdk_dir=""
    if [ -z "$sdk_dir" ] || [ ! -d "$sdk_dir" ]; then
        (cd "$ENGINE_DIR" && go mod download github.com/pulumi/pulumi/sdk/v3 >/dev/null 2>&1) \
            || die "the Go module proxy did not serve github.com/pulumi/pulumi/sdk/v3@$version: check GOPROXY and re-run make"
        sdk_dir=$(cd "$ENGINE_DIR" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
    fi
    install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$VENV/bin/pulumi-language-python-exec"
    install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$VENV/bin/pulumi-resource-pulumi-python"
}

main() {
    install_debian_packages "${DEBIAN_PACKAGES[@]}"
    install_python_env
    install_engine
    say "ready: $("$VENV/bin/pulumi" version) at .venv/bin/pulumi"
}

main "$@"
