"""Kubeconfig files: one per component (inside the namespace, client certificates) and the operator's."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster.files import write_if_changed
from cluster.layout import API_PORT, Layout

CLUSTER = "mlrelease-local"


def write(path: Path, server: str, ca: Path, user: dict[str, str]) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": "user", "namespace": "default"}}],
        "current-context": CLUSTER,
    }
    write_if_changed(path, yaml.safe_dump(config, sort_keys=False), mode=0o600)


def write_component(layout: Layout, name: str) -> Path:
    """``name``'s kubeconfig: its client certificate, the API server on the namespace's loopback."""
    path = layout.component_kubeconfig(name)
    pki = layout.pki
    user = {"client-certificate": str(pki / f"{name}.crt"), "client-key": str(pki / f"{name}.key")}
    write(path, f"https://127.0.0.1:{API_PORT}", pki / "ca.crt", user)
    return path


def write_operator(layout: Layout, port: int, token: str) -> Path:
    """The host-side kubeconfig: the operator's token, through the forwarder on the host's 127.0.0.1."""
    write(layout.kubeconfig, f"https://127.0.0.1:{port}", layout.pki / "ca.crt", {"token": token})
    return layout.kubeconfig
