"""The cluster's network namespace, and the global sysctls its processes change.

Why a namespace: kube-proxy and the CNI bridge write iptables rules and routes. On the host those rules cut
the machine off its own resolver (10.0.0.0/8), so every cluster process runs with ``nsenter --net`` inside a
namespace that has only a loopback (carrying the node address) and the pods' bridge. The mount namespace stays
the host's, so kubelet's volume mounts are visible to containerd.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from cluster.layout import GLOBAL_SYSCTLS, NODE_IP, Layout

CLONE_NEWNET = 0x40000000


class ClusterError(RuntimeError):
    """A one-line, actionable failure of the cluster tooling."""


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure raise a ClusterError naming ``what`` and the command's last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise ClusterError(
            f"{what} failed ({' '.join(cmd[:3])} ...): {last[-1] if last else f'exit {done.returncode}'}"
        )
    return done


def exists(layout: Layout) -> bool:
    return layout.netns_path.exists()


def create(layout: Layout) -> None:
    """Create the namespace with loopback up and the node address on it (idempotent)."""
    if not exists(layout):
        run(["ip", "netns", "add", layout.netns], "creating network namespace " + layout.netns)
    run(inside(layout, ["ip", "link", "set", "lo", "up"]), "bringing up the namespace's loopback")
    addresses = run(inside(layout, ["ip", "-4", "-o", "addr", "show", "dev", "lo"]), "listing addresses").stdout
    if f" {NODE_IP}/" not in addresses:
        run(inside(layout, ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"]), "adding the node address")


def delete(layout: Layout) -> None:
    if exists(layout):
        run(["ip", "netns", "delete", layout.netns], "deleting network namespace " + layout.netns)


def inside(layout: Layout, cmd: list[str]) -> list[str]:
    """``cmd`` run in the cluster's network namespace (and the host's mount namespace)."""
    return ["nsenter", f"--net={layout.netns_path}", "--", *cmd]


def pids_inside(layout: Layout) -> list[int]:
    """Every process whose network namespace is the cluster's (``ip netns pids``)."""
    if not exists(layout):
        return []
    out = subprocess.run(["ip", "netns", "pids", layout.netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def enter(layout: Layout) -> None:
    """Move the calling process into the namespace (sockets created afterwards live there).

    Used by the forwarders once they have bound their listening socket on one side.
    """
    fd = os.open(layout.netns_path, os.O_RDONLY)
    try:
        setns(fd, str(layout.netns_path))
    finally:
        os.close(fd)


def setns(fd: int, what: str) -> None:
    """Move the calling process into the network namespace open at ``fd`` (Python 3.11 has no ``os.setns``, so
    this calls libc's)."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise ClusterError(f"setns into {what} failed: {os.strerror(ctypes.get_errno())}")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    return {name: _sysctl_path(name).read_text().strip() for name in GLOBAL_SYSCTLS if _sysctl_path(name).exists()}


def restore_sysctls(saved: dict[str, str]) -> list[str]:
    """Write back every recorded value that changed; return the names restored."""
    restored = []
    for name, value in saved.items():
        path = _sysctl_path(name)
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value + "\n")
            restored.append(name)
    return restored
