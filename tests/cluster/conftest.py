"""The local Kubernetes cluster, started once for the session by the project's own command.

The host's network state (iptables rules, routes, addresses, links, namespaces) and the global sysctls are
recorded before ``up``, so tests can compare them while the cluster runs and after ``down``. The cluster uses
its own namespace name and run directory, so a cluster a developer started by hand is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.layout import ROOT, Layout
from cluster.lifecycle import CONTAINER_LOG_LINKS, FIXED_HOST_PATHS
from cluster.netns import read_sysctls

PYTHON = ROOT / ".venv" / "bin" / "python"
UP_TIMEOUT = 900  # a cold machine builds the MLServer image on the first up


@dataclass(frozen=True)
class HostNetwork:
    iptables: str
    routes: str
    addresses: str
    links: str
    netns: list[str]
    sysctls: dict[str, str]
    host_paths: dict[str, list[str]]  # what exists in the fixed paths kubelet and containerd write to

    @classmethod
    def capture(cls) -> HostNetwork:
        def out(*cmd: str) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

        links = "\n".join(line.split(":")[1].strip() for line in out("ip", "-o", "link", "show").splitlines())
        netns = [line.split()[0] for line in out("ip", "netns", "list").splitlines() if line.strip()]
        return cls(
            iptables=_without_comments(out("iptables-save")) + _without_comments(out("ip6tables-save")),
            routes=out("ip", "route", "show", "table", "all"),
            addresses=out("ip", "-o", "addr", "show"),
            links=links,
            netns=sorted(netns),
            sysctls=read_sysctls(),
            host_paths={
                p: sorted(os.listdir(p)) if Path(p).is_dir() else []
                for p in (*FIXED_HOST_PATHS, str(CONTAINER_LOG_LINKS))
            },
        )


def _without_comments(dump: str) -> str:
    """iptables-save output without its timestamp comments."""
    return "\n".join(line for line in dump.splitlines() if not line.startswith("#"))


@dataclass(frozen=True)
class Cluster:
    layout: Layout
    env: dict[str, str]
    mode: str
    images: dict[str, str]
    fallback_reason: str

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PYTHON), "-m", "cluster", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="session")
def host_before() -> HostNetwork:
    return HostNetwork.capture()


@pytest.fixture(scope="session")
def cluster(host_before: HostNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool in ("kube-apiserver", "kubelet", "kwok", "pulumi-resource-kubernetes"):
        if not (ROOT / ".venv" / "bin" / tool).exists():
            pytest.fail(f".venv/bin/{tool} is missing: run 'make cluster-tools' (make test does)")
    run_dir = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(run_dir), "MLRELEASE_CLUSTER_NETNS": "mlrelease-k8s-test"}
    layout = Layout(run=run_dir, netns="mlrelease-k8s-test")
    probe = Cluster(layout, env, "", {}, "")
    up = probe.command("up", timeout=UP_TIMEOUT)
    try:
        assert up.returncode == 0, f"cluster up failed: {up.stderr.strip() or up.stdout.strip()}"
        state = json.loads(layout.state_file.read_text())
        yield Cluster(layout, env, state["mode"], state["images"], state["fallback_reason"])
    finally:
        probe.command("down")
