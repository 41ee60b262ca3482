"""kwok mode, the fallback for machines where containers cannot run: the same API server and provider, a fake
node whose pods become Running and Ready, so resources and Pulumi's await logic still work; ``status`` says so."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cluster import api
from cluster.layout import Layout
from serving.wait import wait_until
from tests.cluster.conftest import PYTHON, ROOT

pytestmark = pytest.mark.engine

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: fake, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: fake}}
  template:
    metadata: {labels: {app: fake}}
    spec:
      containers: [{name: fake, image: "mlrelease.local/never-pulled:1"}]
"""


def test_kwok_mode_runs_pods_on_a_fake_node_and_says_so(tmp_path) -> None:
    layout = Layout(run=tmp_path / "run", netns="mlrelease-kwok-test")
    env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(layout.run), "MLRELEASE_CLUSTER_NETNS": layout.netns,
           "MLRELEASE_CLUSTER_MODE": "kwok"}  # fmt: skip

    def cluster(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PYTHON), "-m", "cluster", *args], cwd=ROOT, env=env, capture_output=True, text=True)

    try:
        up = cluster("up")
        assert up.returncode == 0, up.stderr
        assert "mode kwok" in up.stdout
        report = json.loads(cluster("status", "--json").stdout)
        assert report["mode"] == "kwok" and report["node_ready"], report
        assert "kubelet" not in report["processes"] and report["processes"]["kwok"]
        api.kubectl(layout, "apply", "-f", "-", stdin=DEPLOYMENT)
        wait_until(
            lambda: api.get_json(layout, "deployment", "fake")["status"].get("readyReplicas") == 2,
            60.0,
            "kwok's pods to become Ready",
        )
        pods = api.get_json(layout, "pods", "-l", "app=fake")["items"]
        assert {p["spec"]["nodeName"] for p in pods} == {"mlrelease-kwok-node"}
        assert all(p["status"]["podIP"].startswith("10.245.") for p in pods)  # kwok's CIDR, not the host's
    finally:
        down = cluster("down")
    assert down.returncode == 0, down.stderr
    assert not layout.netns_path.exists()
    assert cluster("status").returncode == 3


def test_an_unknown_mode_is_refused_in_one_line_before_anything_starts(tmp_path) -> None:
    layout = Layout(run=tmp_path / "run", netns="mlrelease-bad-mode-test")
    env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(layout.run), "MLRELEASE_CLUSTER_NETNS": layout.netns,
           "MLRELEASE_CLUSTER_MODE": "minikube"}  # fmt: skip
    up = subprocess.run([str(PYTHON), "-m", "cluster", "up"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert up.returncode == 1
    assert up.stderr.strip().splitlines() == [
        "cluster: error: MLRELEASE_CLUSTER_MODE='minikube' is not one of auto, real, kwok: unset it or pick one"
    ]
    assert not layout.netns_path.exists() and not layout.run.exists()


def test_a_namespace_used_by_another_cluster_is_refused_and_left_running(tmp_path) -> None:
    netns = "mlrelease-taken-test"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    other = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
    try:
        env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(tmp_path / "run"), "MLRELEASE_CLUSTER_NETNS": netns}
        up = subprocess.run([str(PYTHON), "-m", "cluster", "up"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert up.returncode == 1
        assert len(up.stderr.strip().splitlines()) == 1
        assert f"network namespace {netns} is in use by a cluster" in up.stderr
        assert other.poll() is None, "up stopped the other cluster's process"
        assert not (tmp_path / "run" / "state.json").exists()
    finally:
        other.kill()
        other.wait()
        subprocess.run(["ip", "netns", "delete", netns], check=False)
