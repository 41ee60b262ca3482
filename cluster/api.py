"""Talking to the cluster from the host: the API server through the forwarder, and kubectl in the namespace."""

from __future__ import annotations

import json
import ssl
import subprocess

import httpx
import yaml

from cluster.layout import Layout, binary
from cluster.netns import ClusterError, inside


def client(layout: Layout, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client for the API server as the operator (token, cluster CA), from the host."""
    config = yaml.safe_load(layout.kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    token = config["users"][0]["user"]["token"]
    return httpx.Client(
        base_url=cluster["server"],
        verify=ssl.create_default_context(cafile=cluster["certificate-authority"]),
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def ready(layout: Layout) -> bool:
    try:
        with client(layout, timeout=2.0) as api:
            return api.get("/readyz").status_code == 200
    except (httpx.HTTPError, OSError, KeyError):
        return False


def kubectl(layout: Layout, *args: str, stdin: str | None = None, as_admin: bool = False) -> str:
    """Run kubectl; ``as_admin`` runs it inside the namespace with the bootstrap (system:masters) identity."""
    if as_admin:
        cmd = inside(layout, [str(binary("kubectl")), f"--kubeconfig={layout.component_kubeconfig('admin')}", *args])
    else:
        cmd = [str(binary("kubectl")), f"--kubeconfig={layout.kubeconfig}", *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()
        raise ClusterError(f"kubectl {' '.join(args[:2])} failed: {last[-1] if last else done.returncode}")
    return done.stdout


def get_json(layout: Layout, *args: str) -> dict:
    return json.loads(kubectl(layout, "get", *args, "-o", "json"))


def node_ready(layout: Layout, name: str) -> bool:
    try:
        node = get_json(layout, "node", name)
    except ClusterError:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def pods_ready(layout: Layout, namespace: str, selector: str) -> bool:
    try:
        pods = get_json(layout, "pods", "-n", namespace, "-l", selector)["items"]
    except ClusterError:
        return False
    return bool(pods) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])) for p in pods
    )
