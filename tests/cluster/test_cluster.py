"""The local cluster: up, a pulumi-kubernetes release on it, a pod serving V2 inference, a pod using the API with
its service account, the host's network untouched, and ``down`` leaving nothing behind.

The tests run in file order; the last one takes the cluster down (the session fixture's ``down`` is then a
no-op), so it can check what ``down`` leaves.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi import automation as auto

from automation.engine import engine_env, pulumi_command
from cluster import api
from cluster.layout import NODE_NAME, ROOT
from serving.wait import wait_until
from tests.cluster.conftest import Cluster, HostNetwork
from tests.stock_models import MODEL_NAME, breast_cancer, features, sklearn_pipeline_dir

pytestmark = pytest.mark.engine

NAMESPACE = "smoke"
CLUSTER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")


def _needs_real_node(cluster: Cluster) -> None:
    if cluster.mode != "real":
        pytest.skip(f"kwok mode (no container runs on this machine: {cluster.fallback_reason})")


def test_cluster_comes_up_and_reports_its_mode(cluster: Cluster) -> None:
    status = cluster.command("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["up"] and report["node_ready"], report
    assert report["mode"] in ("real", "kwok")
    assert all(pid for pid in report["processes"].values()), f"a recorded process is not running: {report}"
    nodes = api.get_json(cluster.layout, "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == [NODE_NAME if cluster.mode == "real" else "mlrelease-kwok-node"]
    version = nodes[0]["status"]["nodeInfo"]["kubeletVersion"]
    assert version.startswith("v1.37."), version


def test_up_again_is_idempotent(cluster: Cluster) -> None:
    pids = {p.stem: p.read_text() for p in cluster.layout.pids.glob("*.pid")}
    again = cluster.command("up")
    assert again.returncode == 0, again.stderr
    assert f"mode {cluster.mode}" in again.stdout
    assert {p.stem: p.read_text() for p in cluster.layout.pids.glob("*.pid")} == pids, "up restarted a process"


@pytest.fixture(scope="module")
def served_model(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Pulumi program (pulumi-kubernetes) that serves a stock sklearn model with MLServer: Namespace,
    Deployment with a readiness probe on the V2 health endpoint, Service. ``up`` awaits pod readiness."""
    root = tmp_path_factory.mktemp("k8s-program")
    model_dir = sklearn_pipeline_dir(root / "model")
    model_dir.chmod(0o755)
    image = cluster.images.get("mlserver", "mlrelease.local/mlserver:kwok")

    def program() -> None:
        provider = k8s.Provider("local", kubeconfig=cluster.kubeconfig.read_text())
        opts = pulumi.ResourceOptions(provider=provider)
        ns = k8s.core.v1.Namespace("smoke", metadata={"name": NAMESPACE}, opts=opts)
        labels = {"app": "mlserver"}
        deployment = k8s.apps.v1.Deployment(
            "mlserver",
            metadata={"name": "mlserver", "namespace": ns.metadata["name"]},
            spec={
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "mlserver",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["start", "/models"],
                                "env": [{"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"}],
                                "ports": [{"containerPort": 8080, "name": "http"}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/v2/health/ready", "port": 8080},
                                    "periodSeconds": 1,
                                },
                                "volumeMounts": [{"name": "model", "mountPath": "/models", "readOnly": True}],
                            }
                        ],
                        "volumes": [{"name": "model", "hostPath": {"path": str(model_dir), "type": "Directory"}}],
                    },
                },
            },
            opts=opts,
        )
        service = k8s.core.v1.Service(
            "mlserver",
            metadata={"name": "mlserver", "namespace": ns.metadata["name"]},
            spec={"selector": labels, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]},
            opts=opts,
        )
        pulumi.export("deployment", deployment.metadata["name"])
        pulumi.export("service", service.metadata["name"])

    (root / "state").mkdir()
    env = engine_env({"PULUMI_BACKEND_URL": (root / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "test"})
    stack = auto.create_or_select_stack(
        stack_name="smoke",
        project_name="mlrelease-k8s-smoke",
        program=program,
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(root), env_vars=env, pulumi_command=pulumi_command(), pulumi_home=str(root / "home")
        ),
    )
    result = stack.up(on_output=lambda _: None)
    return {"outputs": {k: v.value for k, v in result.outputs.items()}, "summary": result.summary}


def test_pulumi_kubernetes_creates_a_deployment_and_service_and_awaits_readiness(
    cluster: Cluster, served_model: dict
) -> None:
    assert served_model["summary"].result == "succeeded"
    assert served_model["summary"].resource_changes.get("create") == 5  # stack, provider, ns, deployment, service
    deployment = api.get_json(cluster.layout, "deployment", "mlserver", "-n", NAMESPACE)
    assert deployment["status"].get("readyReplicas") == 1, deployment["status"]
    endpoints = api.get_json(
        cluster.layout, "endpointslices", "-n", NAMESPACE, "-l", "kubernetes.io/service-name=mlserver"
    )
    ready = [e for s in endpoints["items"] for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
    assert len(ready) == 1, endpoints


def test_mlserver_pod_answers_v2_inference_through_the_api_server_service_proxy(
    cluster: Cluster, served_model: dict
) -> None:
    _needs_real_node(cluster)
    _, holdout = breast_cancer()
    rows = holdout[features()].to_numpy()[:3]
    body = {
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/services/mlserver:8080/proxy/v2/models/{MODEL_NAME}/infer"
    with api.client(cluster.layout, timeout=30.0) as client:
        answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert output["shape"] == [3, 2]
    probabilities = output["data"]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert [round(probabilities[i] + probabilities[i + 1], 6) for i in (0, 2, 4)] == [1.0, 1.0, 1.0]


SA_PROBE = """
import json, socket, ssl, urllib.request
base = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{base}/token").read()
ctx = ssl.create_default_context(cafile=f"{base}/ca.crt")
req = urllib.request.Request(
    "https://kubernetes.default.svc/api/v1/namespaces/smoke/configmaps/probe",
    headers={"Authorization": "Bearer " + token})
body = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
print(json.dumps({"dns": socket.gethostbyname("kubernetes.default.svc"), "value": body["data"]["value"]}))
"""

SA_RBAC = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: probe, namespace: {NAMESPACE}}}
data: {{value: read-through-the-api}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: prober, namespace: {NAMESPACE}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-probe, namespace: {NAMESPACE}}}
rules:
- {{apiGroups: [""], resources: [configmaps], resourceNames: [probe], verbs: [get]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: prober-reads-probe, namespace: {NAMESPACE}}}
subjects:
- {{kind: ServiceAccount, name: prober, namespace: {NAMESPACE}}}
roleRef: {{kind: Role, name: read-probe, apiGroup: rbac.authorization.k8s.io}}
"""


def test_a_pod_reaches_the_api_server_with_its_service_account(cluster: Cluster, served_model: dict) -> None:
    _needs_real_node(cluster)
    api.kubectl(cluster.layout, "apply", "-f", "-", stdin=SA_RBAC)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sa-probe", "namespace": NAMESPACE},
        "spec": {
            "serviceAccountName": "prober",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": cluster.images["mlserver"],
                    "imagePullPolicy": "Never",
                    "command": ["/opt/mlserver/bin/python", "-c", SA_PROBE],
                }
            ],
        },
    }
    api.kubectl(cluster.layout, "apply", "-f", "-", stdin=json.dumps(pod))

    def finished() -> str | None:
        phase = api.get_json(cluster.layout, "pod", "sa-probe", "-n", NAMESPACE)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(finished, 120.0, "the service-account probe pod to finish")
    logs = api.kubectl(cluster.layout, "logs", "sa-probe", "-n", NAMESPACE)  # API server -> kubelet, too
    assert phase == "Succeeded", logs
    answer = json.loads(logs.strip().splitlines()[-1])
    assert answer == {"dns": "10.96.0.1", "value": "read-through-the-api"}


def test_the_hosts_iptables_routes_and_sysctls_are_unchanged_while_it_runs(
    cluster: Cluster, host_before: HostNetwork, served_model: dict
) -> None:
    now = HostNetwork.capture()
    assert now.iptables == host_before.iptables
    assert now.routes == host_before.routes
    assert now.addresses == host_before.addresses
    assert now.links == host_before.links
    # The cluster's own namespace (and its pods' namespaces) exist now, nothing else changed.
    assert set(host_before.netns) <= set(now.netns)
    assert all(n == cluster.layout.netns or n.startswith("cni-") for n in set(now.netns) - set(host_before.netns))
    if cluster.mode == "real":
        status = json.loads(cluster.command("status", "--json").stdout)
        # kubelet changed the global sysctls it always sets; status says so, and down writes them back.
        assert set(status["sysctls_changed"]) <= set(host_before.sysctls)


def _cluster_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    venv_bin = str(ROOT / ".venv" / "bin")
    return [
        line
        for line in out.splitlines()
        if any(
            f"{venv_bin}/{b}" in line or line.split(None, 1)[-1].startswith(f"/usr/bin/{b} ") for b in CLUSTER_BINARIES
        )
        or "containerd-shim" in line
        or "cluster.forward" in line
    ]


def test_down_stops_every_process_and_restores_the_host(cluster: Cluster, host_before: HostNetwork) -> None:
    pids = [int(p.read_text()) for p in cluster.layout.pids.glob("*.pid")]
    assert pids, "up recorded no process"
    down = subprocess.run(
        ["bash", str(ROOT / "scripts" / "cluster.sh"), "down"], env=cluster.env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    assert _cluster_processes() == []
    after = HostNetwork.capture()
    assert after.netns == host_before.netns, "a network namespace was left behind"
    assert after.iptables == host_before.iptables
    assert after.routes == host_before.routes
    assert after.links == host_before.links
    assert after.sysctls == host_before.sysctls
    assert after.host_paths == host_before.host_paths, "containerd, CNI or kubelet files were left on the host"
    assert not any(Path("/sys/fs/cgroup").glob("*/kubepods")), "kubelet's pod cgroups were left behind"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(cluster.layout.run) not in mounts
    status = cluster.command("status")
    assert status.returncode == 3 and "down" in status.stdout


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
