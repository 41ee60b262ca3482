#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (the local S3-compatible object store, automation/s3server.py) from the Go modules
# pinned in tools/seaweedfs, cached by a digest of those files in ~/.cache/mlrelease/tools and linked into
# .venv/bin. `make setup` does not run this: users of the file:// backend never wait for it. `make test` and
# `make s3` do. Idempotent; a second run takes a second.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=s3-tools
VENV="$ROOT/.venv"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mlrelease/tools"

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

[ -x "$VENV/bin/python" ] || die ".venv is missing: run 'make setup' first"
command -v go >/dev/null || die "Go toolchain not found: install Go >= 1.26 and re-run make s3-tools"
mkdir -p "$CACHE"
version=$(required_version "$ROOT/tools/seaweedfs" github.com/seaweedfs/seaweedfs)
[ -n "$version" ] || die "tools/seaweedfs/go.mod requires no github.com/seaweedfs/seaweedfs version"
build_cached "seaweedfs-$version" "$ROOT/tools/seaweedfs" github.com/seaweedfs/seaweedfs/weed weed
say "ready: SeaweedFS $version (weed) in .venv/bin"
