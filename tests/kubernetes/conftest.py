"""A release project whose stacks target the local Kubernetes cluster, started once for this package.

The cluster is started for this package only (and stopped at its end, so later tests do not share the 2 cores
with it). It runs in its own network namespace and run directory (not the one ``tests/cluster`` uses, nor one
a developer started). Stacks release the deterministic sample models: their pods run the project's image
(``cluster/images.py``: MLServer, the runtimes and the ``serving`` package), and every request and admin call
goes through the API server, which is all a CI runner can reach.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import api
from cluster.layout import Layout
from components.targets.kube_api import KubeAPI
from components.targets.kubernetes import KubernetesTarget
from tests.cluster.conftest import UP_TIMEOUT, Cluster
from tests.engine import conftest as engine
from tests.engine.conftest import Project

sample = engine.sample  # the session fixture of the sample models, shared

NETNS = "mlrelease-k8s-target"
NAMESPACE = "credit"
WATCH_P99_MS = 2_000.0  # the watcher's latency limit on this node (KubeProject.config says why)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("k8s-target")
    env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(run_dir), "MLRELEASE_CLUSTER_NETNS": NETNS}
    layout = Layout(run=run_dir, netns=NETNS)
    probe = Cluster(layout, env, "", {}, "")
    up = probe.command("up", timeout=UP_TIMEOUT)
    try:
        assert up.returncode == 0, f"cluster up failed: {up.stderr.strip() or up.stdout.strip()}"
        state = json.loads(layout.state_file.read_text())
        api.kubectl(layout, "create", "namespace", NAMESPACE)
        yield Cluster(layout, env, state["mode"], state["images"], state["fallback_reason"])
    finally:
        _keep_pod_logs(layout, run_dir)
        probe.command("down")


def _keep_pod_logs(layout: Layout, run_dir: Path) -> None:
    """The pods' logs in the run directory, for a failure's post-mortem (the cluster is gone after ``down``)."""
    try:
        pods = api.get_json(layout, "pods", "-n", NAMESPACE)["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            (run_dir / f"pod-{name}.log").write_text(api.kubectl(layout, "logs", "-n", NAMESPACE, name))
    except Exception as exc:  # best effort: the cluster may be the thing that failed
        (run_dir / "pod-logs-error.txt").write_text(str(exc))


@pytest.fixture(scope="package")
def real_pods(cluster: Cluster) -> None:
    """Tests whose requests reach in-cluster servers need a real node; in kwok mode (no container runtime on
    this machine) pods never run, so only the API-level tests run for real there."""
    if cluster.mode != "real":
        pytest.skip(f"kwok mode ({cluster.fallback_reason}): pods do not run, only API-level behaviour is tested")


class KubeProject(Project):
    """A project whose stacks release to ``NAMESPACE`` of the test cluster with two router replicas."""

    def __init__(self, root: Path, sample: Any, cluster: Cluster) -> None:
        super().__init__(root, sample)
        self.cluster = cluster

    def kubernetes(self, **overrides: Any) -> dict[str, Any]:
        return {
            "kubeconfig": str(self.cluster.kubeconfig),
            "namespace": NAMESPACE,
            "image": self.cluster.images["mlrelease"],
            "image_pull_policy": "Never",
            "router_replicas": 2,
            "router_resources": {"cpu": "250m", "cpu_limit": "1", "memory": "384Mi"},
            "model_resources": {"cpu": "250m", "cpu_limit": "1", "memory": "640Mi"},
            **overrides,
        }

    def config(self, variant: str, *, drift: str = "current", **sections: Any) -> dict[str, Any]:
        config = super().config(variant, drift=drift, **sections)
        # The gates measure latency on this runner while the cluster's pods share its 2 cores: the engine tests'
        # roomy bounds (tests/engine/conftest.py says why; the latency gate itself is tested in tests/gates).
        # The CI runner measured p99 upper bounds of 3.0-4.3 s for equal versions here (2026-12-01).
        # The canary's latency judge likewise: at the 100 % step the candidate's client-facing latency (through
        # the API server's proxy, pods under CPU limits on the same 2 cores) was measured at 4.8x the
        # incumbent's shadow-copy latency for equal-speed versions (2026-12-02); these tests exercise the
        # target, the judge is tested in tests/canary and tests/verification. So a ratio up to 10 passes, and
        # the tolerance band (2 x the shift) makes such a pass conclusive rather than baking to the deadline.
        # And the model pods may burst to a core each: 80 req/s plus their shadow copies saturated a pod held to
        # 500m (p99 at the 10 s timeout, 21 % errors on the live version before a drill's fault, 2026-12-02),
        # while a request of a whole core left a third version (standby, incumbent, candidate) unschedulable on
        # the 2-core node ("Insufficient cpu", 2026-12-02): they request 250m.
        canary = config["canary"]
        judge = {**canary.get("judge", {}), "latency_allowed_increase": 10.0, "tolerance": 2.0}
        config["canary"] = {**canary, "judge": judge}
        # The router pods may burst to a core too: held to their 250m request, 6.5 % of their CFS periods were
        # throttled through this package (kubelet cadvisor, 2026-12-08), and a quota is the pod's, so an inference
        # log flush stalls the event loop that answers clients.
        # The watcher's p99 limit likewise: the live version answered at p99 284 ms through the proxy before the
        # drill's fault (2026-12-07), over the 250 ms default, so the drill refused to start. The drill here injects
        # errors; the watcher's latency breach is tested on the local target (tests/engine/test_cli_drill.py).
        config["watch"] = {**config.get("watch", {}), "p99_ms": WATCH_P99_MS}
        return {"target": "kubernetes", "kubernetes": self.kubernetes(), **config}

    def target(self, stack: str) -> KubernetesTarget:  # type: ignore[override]
        from components.spec import load_spec
        from components.targets import factory

        spec = load_spec(self.config("incumbent"))
        return KubernetesTarget(factory.settings_for(spec, self.dir, stack))

    def api(self) -> KubeAPI:
        return KubeAPI(self.cluster.kubeconfig, None, self.dir / ".kube-cache")


@pytest.fixture(scope="module")
def kproject(tmp_path_factory: pytest.TempPathFactory, sample: Any, cluster: Cluster) -> Iterator[KubeProject]:
    project = KubeProject(tmp_path_factory.mktemp("k8s-engine"), sample, cluster)
    try:
        yield project
    finally:
        for name in project.stacks:
            project.target(name).destroy()
