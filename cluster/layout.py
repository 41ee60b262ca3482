"""Where the cluster keeps its files, which addresses it uses, and where its binaries are.

One run directory holds everything ``up`` creates (certificates, kubeconfigs, etcd data, containerd and
kubelet state, logs, pid files); ``down`` removes it. Images live in a content-addressed cache beside the
project's other caches, so a second ``up`` does not rebuild them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"

# Addresses inside the namespace. None of them is routed on the host: the namespace has no link to it.
NODE_NAME = "mlrelease-node"
NODE_IP = "172.31.254.1"  # on the namespace's loopback; the API server advertises it to pods
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
KWOK_POD_CIDR = "10.245.0.0/16"

# Sysctls that are not per network namespace and that kubelet (and kube-proxy) set. ``up`` records them and
# ``down`` writes them back, so the host ends as it began.
GLOBAL_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)

MODES = ("real", "kwok")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlrelease"


@dataclass(frozen=True)
class Layout:
    """Paths of one cluster. ``run`` is the only directory ``up`` writes outside the cache."""

    run: Path
    netns: str

    @classmethod
    def default(cls) -> Layout:
        run = Path(os.environ.get("MLRELEASE_CLUSTER_DIR") or ROOT / ".mlrelease" / "cluster")
        return cls(run=run, netns=os.environ.get("MLRELEASE_CLUSTER_NETNS", "mlrelease-k8s"))

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The operator's kubeconfig: a token user, through the loopback forwarder on the host."""
        return self.run / "kubeconfig"

    @property
    def state_file(self) -> Path:
        """What ``up`` recorded: mode, forwarder port, sysctls before, namespaces that already existed."""
        return self.run / "state.json"

    def component_kubeconfig(self, name: str) -> Path:
        return self.run / "kubeconfigs" / f"{name}.kubeconfig"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns


def binary(name: str) -> Path:
    """A cluster binary installed by scripts/cluster-tools.sh; a clear error when it has not run."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run 'make cluster-tools' (scripts/cluster-tools.sh) first")
    return path
