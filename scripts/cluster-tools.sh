#!/usr/bin/env bash
# Builds and installs what the local Kubernetes cluster (scripts/cluster.sh) and the Kubernetes target need.
# `make setup` does not run this: users of the local target never wait for it. `make test` and `make cluster-up`
# do. Idempotent; a second run takes seconds.
#
#   1. Debian packages: etcd, containerd, runc, CNI plugins, iptables (used only inside the cluster's network
#      namespace), conntrack, mmdebstrap (image rootfs), iproute2 (ip netns) and openssl (certificates);
#   2. from the Go modules pinned under tools/ (each cached by a digest of its module files, build flags and Go
#      version, in ~/.cache/mlrelease/tools, and linked into .venv/bin):
#      - tools/kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl;
#      - tools/kwok: kwok (fake nodes, for machines where containers cannot run);
#      - tools/coredns: CoreDNS with the plugins the cluster uses; tools/pause: the pods' sandbox binary;
#      - tools/pulumi-kubernetes: pulumi-resource-kubernetes, the provider plugin the engine finds on PATH.
# Every failure prints one line saying what failed and what to do, and exits non-zero.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=cluster-tools
VENV="$ROOT/.venv"
TOOLS="$ROOT/tools"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mlrelease/tools"
DEBIAN_PACKAGES=(etcd-server containerd runc containernetworking-plugins iptables conntrack mmdebstrap iproute2 openssl)

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

[ -x "$VENV/bin/python" ] || die ".venv is missing: run 'make setup' first"

build_kubernetes() {
    local dir="$TOOLS/kubernetes" version minor
    version=$(required_version "$dir" k8s.io/kubernetes)
    [ -n "$version" ] || die "tools/kubernetes/go.mod requires no k8s.io/kubernetes version"
    minor=$(printf '%s' "$version" | cut -d. -f2)
    local ldflags="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$version"
    local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) pkgs=""
    for c in "${cmds[@]}"; do pkgs+="k8s.io/kubernetes/cmd/$c "; done
    build_cached "kubernetes-$version" "$dir" "${pkgs% }" "${cmds[*]}" "$ldflags"
}

build_provider() {
    local dir="$TOOLS/pulumi-kubernetes" sdk version pinned
    sdk=$(required_version "$dir" github.com/pulumi/pulumi-kubernetes/sdk/v4)
    version=${sdk#v}
    pinned=$(sed -n 's/^pulumi-kubernetes==//p' "$ROOT/requirements.txt")
    [ "$pinned" = "$version" ] \
        || die "requirements.txt pins pulumi-kubernetes==$pinned but tools/pulumi-kubernetes/go.mod builds $version: make them match"
    # The provider embeds its schema with the version set, generated from the module's own files.
    # `go list -m` names the module's directory only once it is in the module cache: download it first (a new
    # machine's cache is empty).
    local src module=github.com/pulumi/pulumi-kubernetes/provider/v4
    (cd "$dir" && GOFLAGS=-mod=mod go mod download "$module" >/dev/null 2>&1) \
        || die "the Go module proxy did not serve pulumi-kubernetes' provider module: check GOPROXY and re-run make"
    src=$(cd "$dir" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$module" 2>/dev/null) || src=""
    [ -n "$src" ] && [ -f "$src/cmd/pulumi-resource-kubernetes/schema.json" ] \
        || die "pulumi-kubernetes' provider module has no schema.json in the module cache ($src): run 'go clean -modcache' and re-run make"
    "$VENV/bin/python" - "$src/cmd/pulumi-resource-kubernetes" "$dir" "$version" <<'EOF'
import json, pathlib, sys
src, dst, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
schema = json.loads((src / "schema.json").read_text())
schema["version"] = version
for name, data in (("schema-embed.json", schema), ("terraform-mapping-embed.json", json.loads((src / "terraform-mapping.json").read_text()))):
    text = json.dumps(data, separators=(",", ":"))
    if not (dst / name).exists() or (dst / name).read_text() != text:
        (dst / name).write_text(text)
EOF
    build_cached "pulumi-kubernetes-$version" "$dir" . pulumi-resource-kubernetes \
        "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$version"
}

main() {
    install_debian_packages "${DEBIAN_PACKAGES[@]}"
    command -v go >/dev/null || die "Go toolchain not found: install Go >= 1.26 and re-run make cluster-tools"
    mkdir -p "$CACHE"
    CGO_ENABLED=0 build_cached pause "$TOOLS/pause" . mlrelease-pause
    CGO_ENABLED=0 build_cached "coredns-$(required_version "$TOOLS/coredns" github.com/coredns/coredns)" \
        "$TOOLS/coredns" . coredns
    build_cached "kwok-$(required_version "$TOOLS/kwok" sigs.k8s.io/kwok)" "$TOOLS/kwok" sigs.k8s.io/kwok/cmd/kwok kwok
    build_kubernetes
    build_provider
    say "ready: Kubernetes $(required_version "$TOOLS/kubernetes" k8s.io/kubernetes), pulumi-resource-kubernetes $(required_version "$TOOLS/pulumi-kubernetes" github.com/pulumi/pulumi-kubernetes/sdk/v4), in .venv/bin"
}

main "$@"
