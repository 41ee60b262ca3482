#!/usr/bin/env bash
# scripts/cluster.sh up|down|status [--json]|expose PORT: the local Kubernetes cluster (docs/kubernetes.md).
# `up` builds what is missing first (scripts/cluster-tools.sh, cached), then starts the cluster in its own network
# namespace and prints the kubeconfig path; `down` stops every process it started and removes the namespace.
# `expose PORT` makes the host's 127.0.0.1:PORT reachable from the pods (the local object store) and prints their URL.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "cluster: error: the cluster needs root (network namespaces, cgroups): run it as root" >&2; exit 1; }
if [ "${1:-}" = "up" ]; then
    bash "$ROOT/scripts/setup.sh"
    bash "$ROOT/scripts/cluster-tools.sh"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m cluster "$@"
