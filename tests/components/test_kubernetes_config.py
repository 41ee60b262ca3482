"""``mlrelease:kubernetes`` and the kubeconfig it names: every bad value is one line naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automation.stores.s3 import Bucket
from components.spec import KubernetesSpec, SpecError, load_spec
from components.targets import factory
from components.targets.kube_api import KubeAPI, KubeConfigError
from components.targets.kubernetes import KubernetesTarget, dns_name, version_name
from components.targets.kubernetes_objects import FETCHED_DIR, fetch_container
from components.targets.local import LocalTarget
from serving.routing import Split, UpstreamSpec

MODEL = {"name": "credit-default", "version": "v1", "path": "m", "sha256": "a" * 64}
DATA = {"holdout": "h.parquet", "holdout_sha256": "b" * 64}
KUBE = {"kubeconfig": "kubeconfig", "namespace": "credit", "image": "mlrelease.local/mlrelease:x"}


def config(**extra: object) -> dict:
    return {"model": MODEL, "data": DATA, **extra}


def test_the_factory_picks_the_target_the_config_names(tmp_path: Path) -> None:
    assert isinstance(factory.for_config(tmp_path, "s", config()), LocalTarget)
    target = factory.for_config(tmp_path, "s", config(target="kubernetes", kubernetes=KUBE))
    assert isinstance(target, KubernetesTarget)
    assert target.settings.namespace == "credit" and target.settings.router_replicas == 2
    assert target.settings.kubeconfig == str((tmp_path / "kubeconfig").resolve())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"target": "kubernetes"}, "mlrelease:kubernetes is missing"),
        ({"kubernetes": KUBE}, "mlrelease:kubernetes is set but mlrelease:target is local"),
        ({"target": "kubernetes", "kubernetes": {**KUBE, "namespace": "Credit_Models"}}, "kubernetes.namespace"),
        ({"target": "kubernetes", "kubernetes": {**KUBE, "router_replicas": 0}}, "kubernetes.router_replicas"),
        ({"target": "kubernetes", "kubernetes": {**KUBE, "replicas": 2}}, "kubernetes.replicas is not a known key"),
        (
            {"target": "kubernetes", "kubernetes": {**KUBE, "model_resources": {"cpu": "lots"}}},
            "kubernetes.model_resources.cpu",
        ),
        (
            {"target": "kubernetes", "kubernetes": {**KUBE, "model_resources": {"cpu": "1", "cpu_limit": "500m"}}},
            "kubernetes.model_resources.cpu_limit",
        ),
        (
            {"target": "kubernetes", "kubernetes": {**KUBE, "artifact_endpoint": "172.31.254.1:8333"}},
            "kubernetes.artifact_endpoint",
        ),
        ({"target": "kubernetes", "kubernetes": {**KUBE, "artifact_secret": "AWS_Keys"}}, "kubernetes.artifact_secret"),
        ({"target": "aws"}, "mlrelease:target"),
    ],
)
def test_bad_kubernetes_settings_are_refused_with_one_line(extra: dict, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(config(**extra))
    assert message in str(refused.value) and "\n" not in str(refused.value)


INSECURE = {"insecure-skip-tls-verify": True}


def _kubeconfig(path: Path, user: dict, context: str = "ci") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": context,
                "clusters": [
                    {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
                ],
                "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("user", "context", "message"),
    [
        ({"token": "t"}, "prod", "has no context 'prod' (contexts: ci): set mlrelease:kubernetes.context"),
        ({"exec": {"command": "aws"}}, "ci", "authenticates with a helper program"),
        ({}, "ci", "has no token or client certificate"),
    ],
)
def test_an_unusable_kubeconfig_is_refused_naming_the_fix(
    tmp_path: Path, user: dict, context: str, message: str
) -> None:
    path = _kubeconfig(tmp_path / "kubeconfig", user)
    with pytest.raises(KubeConfigError) as refused:
        KubeAPI(path, context, tmp_path / "cache")
    assert message in str(refused.value) and str(path) in str(refused.value)


def test_a_missing_kubeconfig_and_an_unreachable_api_server_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"does not exist: set mlrelease:kubernetes\.kubeconfig"):
        KubeAPI(tmp_path / "nope", None, tmp_path / "cache")
    api = KubeAPI(_kubeconfig(tmp_path / "kubeconfig", {"token": "t"}), None, tmp_path / "cache", timeout=1.0)
    with pytest.raises(Exception, match=r"is unreachable: .*check the kubeconfig and that the cluster is up"):
        api.get("/api/v1/namespaces/credit")


def test_kubernetes_names_are_dns_labels() -> None:
    assert version_name("credit-default", "v2.1_rc") == "credit-default-v2-1-rc"
    assert len(dns_name("m" * 80, "v1")) <= 63


def test_the_split_accepts_cluster_services_only_and_must_be_consistent() -> None:
    up = UpstreamSpec(version="v1", url="http://credit-default-v1.credit.svc:8080", model_name="m")
    assert Split(upstreams=[up], weights={"v1": 100}, incumbent="v1").table().choose("k") == "v1"
    assert Split().table().upstreams == {}  # a router before the first version: routes nothing
    for url in ("http://example.com:8080", "https://m-v1.credit.svc:8080", "http://10.0.0.1:8080"):
        with pytest.raises(ValueError, match="upstream url must be"):
            UpstreamSpec(version="v1", url=url, model_name="m")
    with pytest.raises(ValueError, match="weights must sum to 100"):
        Split(upstreams=[up], weights={"v1": 50}, incumbent="v1")
    with pytest.raises(ValueError, match="faults for unknown versions"):
        Split(upstreams=[up], weights={"v1": 100}, incumbent="v1", faults={"v9": {"error_rate": 1}})


def test_the_pods_fetch_step_reaches_the_store_at_the_pods_endpoint_and_signs_with_the_secret() -> None:
    source = "s3://models/credit/v2/?endpoint=http://127.0.0.1:8333&use_path_style=true&region=us-east-1"
    kube = KubernetesSpec(**KUBE, artifact_endpoint="http://172.31.254.1:41235/", artifact_secret="artifacts")
    step = fetch_container(source, "c" * 64, kube)
    _python, _m, module, url, sha256, into = step["command"]
    assert (module, sha256, into) == ("automation.stores.pod_fetch", "c" * 64, FETCHED_DIR)
    bucket = Bucket.from_backend_url(url)
    assert (bucket.name, bucket.prefix, bucket.endpoint) == ("models", "credit/v2", "http://172.31.254.1:41235")
    assert bucket.path_style and bucket.region == "us-east-1"
    assert step["envFrom"] == [{"secretRef": {"name": "artifacts"}}]
    assert step["terminationMessagePolicy"] == "FallbackToLogsOnError"
    unset = fetch_container(source, "c" * 64, KubernetesSpec(**KUBE))
    assert unset["command"][3] == source and "envFrom" not in unset  # the path's own endpoint, the pods' identity
