"""A Kubernetes target's pods fetch an ``s3://`` model directory themselves and check its digest before serving.

The object store runs on the host's loopback; ``cluster expose`` (``cluster.control_plane.expose``) gives the pods
a path to it through the node address, and a Secret carries the credentials the fetch step signs with. First the
init step alone, in bare pods: the bucket's directory arrives in the pod with its digest checked, and a tampered
object is refused with the digest sentence as the container's termination message. Then a release whose
``mlrelease:model.path`` is in the bucket: the version's pod has no hostPath, only what its fetch step brought, and
serves through the in-cluster router. This module runs before the other Kubernetes modules and destroys its stack,
so the 2-core node is theirs afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from automation.s3server import S3Server
from automation.stores.s3 import Bucket
from cluster import api, control_plane
from components.spec import KubernetesSpec
from components.targets.kube_api import KubeAPI
from components.targets.kubernetes import ROUTER_PORT, router_name
from components.targets.kubernetes_objects import FETCHED_DIR, FETCHED_ROOT, fetch_container
from serving.artifacts import artifact_path
from serving.client import v2_request
from serving.wait import wait_until
from tests.cluster.conftest import Cluster
from tests.kubernetes.conftest import KubeProject

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("real_pods")]

NAMESPACE = "credit-s3"  # its own: nothing here can touch the objects the other modules count
SECRET = "mlrelease-artifacts"
STACK = "k8s-s3"
MODEL = "credit-default"


@pytest.fixture(scope="module")
def pods_endpoint(cluster: Cluster, s3: S3Server) -> str:
    """The store as the pods reach it, and a namespace whose Secret signs for it."""
    endpoint = control_plane.expose(cluster.layout, int(s3.endpoint.rsplit(":", 1)[1]))
    api.kubectl(cluster.layout, "create", "namespace", NAMESPACE)
    api.kubectl(
        cluster.layout, "-n", NAMESPACE, "create", "secret", "generic", SECRET,
        *(f"--from-literal={key}={value}" for key, value in s3.env().items()),
    )  # fmt: skip
    return endpoint


def _upload(s3: S3Server, model_dir: Path, *, tamper: bool = False) -> str:
    """``model_dir`` at a prefix of its own in the bucket; ``tamper`` appends a byte to its artifact."""
    url = s3.backend_url().replace("mlrelease-state?", f"mlrelease-state/models/{uuid.uuid4().hex[:8]}/?", 1)
    bucket, artifact = Bucket.from_backend_url(url), artifact_path(model_dir).resolve()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        body = path.read_bytes() + (b"!" if tamper and path.resolve() == artifact else b"")
        s3.client().put_object(Bucket=bucket.name, Key=bucket.key(str(path.relative_to(model_dir))), Body=body)
    return url


def _run_pod(kube: KubeAPI, spec: KubernetesSpec, name: str, source: str, sha256: str) -> dict[str, Any]:
    """A pod whose init step is the target's fetch step and whose one container checks what it fetched; its final
    status once it has ended."""
    check = (
        "import sys; from pathlib import Path; from serving.artifacts import verify_artifact;"
        f" verify_artifact(Path({FETCHED_DIR!r}), sys.argv[1])"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [fetch_container(source, sha256, spec)],
            "containers": [
                {
                    "name": "check",
                    "image": spec.image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "command": ["python", "-c", check, sha256],
                    "volumeMounts": [{"name": "model", "mountPath": FETCHED_ROOT, "readOnly": True}],
                }
            ],
            "volumes": [{"name": "model", "emptyDir": {}}],
        },
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    kube.checked(kube.request("POST", path, json=pod), f"POST {path}")

    def ended() -> dict[str, Any] | None:
        status = (kube.get(f"{path}/{name}") or {}).get("status", {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_until(ended, 180.0, f"pod {name} to end", interval=0.5)


def _fetch_state(status: dict[str, Any]) -> dict[str, Any]:
    (fetch,) = status["initContainerStatuses"]
    return fetch["state"].get("terminated") or {}


@pytest.fixture(scope="module")
def kube(kproject: KubeProject) -> KubeAPI:
    return kproject.api()


def test_the_fetch_step_brings_the_directory_into_the_pod_and_refuses_a_tampered_object(
    kproject: KubeProject, kube: KubeAPI, s3: S3Server, s3_env: dict[str, str], pods_endpoint: str
) -> None:
    model = kproject.models.models["incumbent"]
    spec = KubernetesSpec(
        **kproject.kubernetes(namespace=NAMESPACE, artifact_endpoint=pods_endpoint, artifact_secret=SECRET)
    )
    fetched = _run_pod(kube, spec, "fetch-good", _upload(s3, model.model_dir), model.sha256)
    assert fetched["phase"] == "Succeeded" and _fetch_state(fetched)["exitCode"] == 0, fetched

    tampered_url = _upload(s3, model.model_dir, tamper=True)
    refused = _run_pod(kube, spec, "fetch-tampered", tampered_url, model.sha256)
    ended = _fetch_state(refused)
    assert refused["phase"] == "Failed" and ended["exitCode"] == 2, refused
    message = ended.get("message", "")
    where = tampered_url.split("?", 1)[0].rstrip("/")
    assert f"artifact {where}/" in message and f"but {model.sha256} was expected" in message, message
    assert "check" not in {c["name"] for c in refused.get("containerStatuses", []) if "terminated" in c["state"]}


@pytest.fixture(scope="module")
def stack(kproject: KubeProject) -> Iterator[Any]:
    stack = kproject.stack(STACK)
    yield stack
    stack.destroy(on_output=lambda _line: None)  # the node's CPU is the next modules'


def test_a_release_from_the_bucket_serves_what_its_pod_fetched(
    kproject: KubeProject, kube: KubeAPI, stack: Any, s3: S3Server, s3_env: dict[str, str], pods_endpoint: str
) -> None:
    model = kproject.models.models["incumbent"]
    source = _upload(s3, model.model_dir)
    config = kproject.config("incumbent")
    config["model"] = {**config["model"], "path": source}
    config["kubernetes"] = kproject.kubernetes(
        namespace=NAMESPACE, artifact_endpoint=pods_endpoint, artifact_secret=SECRET
    )
    kproject.configure(stack, config)
    assert stack.up(on_output=lambda _line: None).summary.result == "succeeded"

    deployment = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{MODEL}-v1")
    assert deployment is not None
    assert deployment["metadata"]["annotations"]["mlrelease.dev/model-source"] == source.split("?", 1)[0]
    template = deployment["spec"]["template"]["spec"]
    assert [v for v in template["volumes"] if "hostPath" in v] == [], "a fetched model must not need the node's disk"
    assert [c["name"] for c in template["initContainers"]] == ["fetch"]
    assert template["containers"][0]["command"][3] == FETCHED_DIR
    pods = kube.get(
        f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": f"app.kubernetes.io/instance={MODEL}-v1"}
    )
    assert pods is not None
    (fetch,) = pods["items"][0]["status"]["initContainerStatuses"]
    assert fetch["state"]["terminated"]["exitCode"] == 0, fetch

    rows = pd.read_parquet(kproject.models.holdout).drop(columns=["default"]).head(3).to_numpy(dtype=float).tolist()
    infer = f"/api/v1/namespaces/{NAMESPACE}/services/{router_name(MODEL)}:{ROUTER_PORT}/proxy/v2/models/{MODEL}/infer"
    response = kube.request("POST", infer, json=v2_request(rows))
    assert (response.status_code, response.headers.get("x-model-version")) == (200, "v1"), response.text
