"""What the Kubernetes target creates in the cluster, as pulumi-kubernetes resources (children of the release).

Runtime (once per stack), in the namespace of ``mlrelease:kubernetes``:

    <model>-router               ServiceAccount, Role and RoleBinding: read and watch the split ConfigMap only
    <model>-router-admin         Secret: the routers' admin token (also in the runner's run dir, mode 0600)
    <model>-split                ConfigMap: the live split; its data is written by the release (see below)
    <model>-router               Deployment (N replicas) running ``serving.split_follower``, and its Service
    <model>-router-scrape        ConfigMap: a scrape config for the firm's in-cluster Prometheus

Per served version (the candidate, and the previous verified version while it stays warm):

    <model>-<version>            Deployment running ``serving.modelserver`` (the artifact digest is checked in
                                 the pod before MLServer serves it) and its Service. A model directory in
                                 object storage is fetched by the pod's own init step, ``fetch``, which checks
                                 the digest too; otherwise the node's copy is mounted (``model_host_path``).

The split's *content* is the one thing not declared here: a canary step writes it (one update of the object,
confirmed on every replica) and a failing step reverts it within the same ``pulumi up``, which a declared
value could not do. Pulumi owns the object (created, labelled, deleted with the stack) and ignores its data.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pulumi
import pulumi_kubernetes as k8s

from components.spec import KubernetesSpec, ReleaseSpec, ResourcesSpec
from components.targets.kubernetes import (
    MODEL_PORT,
    ROUTER_LABEL,
    ROUTER_PORT,
    router_name,
    split_name,
    version_name,
)
from serving.artifacts import ModelDirError, read_settings

DATA_DIR = "/var/lib/mlrelease"
# Probed every second so a new pod takes traffic as soon as it can; a probe answered late under load (the default
# timeout is 1 s) is not a failure, and three misses in a row take a pod out of its Service, not one: a busy node
# must not flap a serving version out of its endpoints.
READINESS = {"periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 3}


# Where a pod's fetch step puts an s3:// model directory: an emptyDir shared with the model server.
FETCHED_ROOT = "/models"
FETCHED_DIR = f"{FETCHED_ROOT}/model"


def pod_source_url(source: str, endpoint: str | None) -> str:
    """The s3:// URL as the pods reach the store: ``artifact_endpoint`` replaces the runner's ``?endpoint=``."""
    if not endpoint:
        return source
    parts = urlsplit(source)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "endpoint"] + [("endpoint", endpoint.rstrip("/"))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def fetch_container(source: str, sha256: str, kube: KubernetesSpec) -> dict[str, Any]:
    """The init container that fetches ``source`` into the pod and refuses it unless its artifact is ``sha256``.

    Its one-line error becomes the container's termination message, so ``kubectl describe pod`` shows it.
    """
    container: dict[str, Any] = {
        "name": "fetch",
        "image": kube.image,
        "imagePullPolicy": kube.image_pull_policy,
        "command": [
            "python", "-m", "automation.stores.pod_fetch", pod_source_url(source, kube.artifact_endpoint), sha256,
            FETCHED_DIR,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(kube.model_resources),
        "volumeMounts": [{"name": "model", "mountPath": FETCHED_ROOT}],
    }  # fmt: skip
    if kube.artifact_secret:
        container["envFrom"] = [{"secretRef": {"name": kube.artifact_secret}}]
    return container


def admin_token(run_dir: Path) -> str:
    """The routers' admin token: generated once per stack, kept 0600 in the run directory."""
    path = run_dir / "admin-token"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _resources(spec: ResourcesSpec) -> dict[str, Any]:
    return {
        "requests": {"cpu": spec.cpu, "memory": spec.memory},
        "limits": {"cpu": spec.cpu_limit or spec.cpu, "memory": spec.memory},
    }


class KubernetesObjects:
    """Builds the runtime's and the versions' resources for one ModelDeployment."""

    def __init__(
        self,
        name: str,
        spec: ReleaseSpec,
        run_dir: Path,
        project_dir: Path,
        parent: pulumi.Resource,
        after: list[pulumi.Resource],
    ) -> None:
        assert spec.kubernetes is not None
        self.after = after
        self.name, self.spec, self.kube, self.run_dir, self.parent = name, spec, spec.kubernetes, run_dir, parent
        self.model = spec.model.name
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=str(self.kube.kubeconfig_path(project_dir)),
            context=self.kube.context,
            namespace=self.kube.namespace,
            opts=pulumi.ResourceOptions(parent=parent),
        )

    def _opts(self, depends_on: list[pulumi.Resource] = (), **kwargs: Any) -> pulumi.ResourceOptions:
        deps = [*self.after, *depends_on]
        return pulumi.ResourceOptions(parent=self.parent, provider=self.provider, depends_on=deps, **kwargs)

    def _meta(self, name: str, role: str, **extra: Any) -> dict[str, Any]:
        labels = {
            "app.kubernetes.io/name": self.model,
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "mlrelease",
            ROUTER_LABEL: role,
        }
        return {"name": name, "namespace": self.kube.namespace, "labels": labels, **extra}

    def runtime(self, feature_names: list[str] | None) -> list[pulumi.Resource]:
        kube, name, router = self.kube, self.name, router_name(self.model)
        split = split_name(self.model)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-router-account", metadata=self._meta(router, "router"), opts=self._opts()
        )
        role = k8s.rbac.v1.Role(
            f"{name}-router-role",
            metadata=self._meta(router, "router"),
            rules=[
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [split],
                    "verbs": ["get", "list", "watch"],
                }
            ],
            opts=self._opts(),
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-router-binding",
            metadata=self._meta(router, "router"),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router},
            subjects=[{"kind": "ServiceAccount", "name": router, "namespace": kube.namespace}],
            opts=self._opts(depends_on=[role, account]),
        )
        token = k8s.core.v1.Secret(
            f"{name}-router-admin",
            metadata=self._meta(f"{router}-admin", "router"),
            string_data={"token": pulumi.Output.secret(admin_token(self.run_dir))},
            opts=self._opts(),
        )
        split_map = k8s.core.v1.ConfigMap(
            f"{name}-split",
            metadata=self._meta(split, "split"),
            opts=self._opts(ignore_changes=["data"]),
        )
        canary = self.spec.canary
        base_config = {
            "port": ROUTER_PORT,
            "host": "0.0.0.0",
            "model_name": self.model,
            "feature_names": feature_names,
            "shadow_fraction": canary.shadow_fraction,
            "decision_threshold": canary.comparison.decision_threshold,
            "log_dir": f"{DATA_DIR}/log",
            "pairs_dir": f"{DATA_DIR}/pairs",
        }
        labels = self._meta(router, "router")["labels"]
        deployment = k8s.apps.v1.Deployment(
            f"{name}-router",
            metadata=self._meta(router, "router"),
            spec={
                "replicas": kube.router_replicas,
                "selector": {"matchLabels": {"app.kubernetes.io/instance": router, ROUTER_LABEL: "router"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(ROUTER_PORT),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        "serviceAccountName": router,
                        "terminationGracePeriodSeconds": 10,
                        "containers": [
                            {
                                "name": "router",
                                "image": kube.image,
                                "imagePullPolicy": kube.image_pull_policy,
                                "command": ["python", "-m", "serving.split_follower"],
                                "env": [
                                    {"name": "MLRELEASE_ROUTER_CONFIG", "value": json.dumps(base_config)},
                                    {"name": "MLRELEASE_SPLIT", "value": split},
                                    {
                                        "name": "MLRELEASE_ADMIN_TOKEN",
                                        "valueFrom": {"secretKeyRef": {"name": f"{router}-admin", "key": "token"}},
                                    },
                                    {
                                        "name": "POD_NAMESPACE",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                                    },
                                ],
                                "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/v2/health/live", "port": ROUTER_PORT},
                                    **READINESS,
                                },
                                "resources": _resources(kube.router_resources),
                                "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                    },
                },
            },
            opts=self._opts(depends_on=[binding, token, split_map]),
        )
        service = k8s.core.v1.Service(
            f"{name}-router-service",
            metadata=self._meta(router, "router"),
            spec={
                "selector": {"app.kubernetes.io/instance": router, ROUTER_LABEL: "router"},
                "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "http"}],
            },
            opts=self._opts(),
        )
        scrape = k8s.core.v1.ConfigMap(
            f"{name}-router-scrape",
            metadata=self._meta(f"{router}-scrape", "router"),
            data={"scrape.json": json.dumps(in_cluster_scrape_job(kube, router), indent=2)},
            opts=self._opts(),
        )
        return [account, role, binding, token, split_map, deployment, service, scrape]

    def versions(self, models: list[dict[str, Any]]) -> list[pulumi.Resource]:
        """A Deployment and Service per model (same names every release, so a warm version is untouched)."""
        made: list[pulumi.Resource] = []
        for model in models:
            made += self._version(model)
        return made

    def _version(self, model: dict[str, Any]) -> list[pulumi.Resource]:
        kube, version = self.kube, model["version"]
        name = version_name(self.model, version)
        model_dir = model["model_dir"]
        try:
            served = read_settings(Path(model_dir)).name
        except (ModelDirError, OSError, ValueError):  # the gates stop this release with the reason
            served = self.model
        source = model.get("source")
        annotations = {
            "mlrelease.dev/version": version,
            "mlrelease.dev/sha256": model["sha256"],
            "mlrelease.dev/model-dir": model_dir,
            "mlrelease.dev/model-name": served,
        }
        if source:
            annotations["mlrelease.dev/model-source"] = source.split("?", 1)[0]
            # The release waits for this version itself (KubernetesTarget.deploy) and names a failed fetch step's
            # error; pulumi-kubernetes' own wait would only time out, after ten minutes, on a pod stuck in Init.
            annotations["pulumi.com/skipAwait"] = "true"
        meta = self._meta(name, "model", annotations=annotations)
        labels = {"app.kubernetes.io/instance": name, ROUTER_LABEL: "model"}
        env = {
            "MLSERVER_HOST": "0.0.0.0",
            "MLSERVER_HTTP_PORT": str(MODEL_PORT),
            "MLSERVER_GRPC_PORT": str(MODEL_PORT + 1),
            "MLSERVER_METRICS_ENDPOINT": "",
            "MLSERVER_METRICS_DIR": "/tmp/mlserver-metrics",
            "MLSERVER_ENVIRONMENTS_DIR": "/tmp/mlserver-envs",
            "MLSERVER_PARALLEL_WORKERS": "0",
            "OMP_NUM_THREADS": "1",
        }
        volumes, mounts, pod, served_dir = [], [], {}, model_dir
        if source:  # the pod fetches it: the runner's copy is on the runner's disk, not the node's
            volumes.append({"name": "model", "emptyDir": {}})
            mounts.append({"name": "model", "mountPath": FETCHED_ROOT, "readOnly": True})
            pod["initContainers"] = [fetch_container(source, model["sha256"], kube)]
            served_dir = FETCHED_DIR
        elif kube.model_host_path:
            volumes.append({"name": "model", "hostPath": {"path": model_dir, "type": "Directory"}})
            mounts.append({"name": "model", "mountPath": model_dir, "readOnly": True})
        deployment = k8s.apps.v1.Deployment(
            f"{self.name}-model-{name}",
            metadata=meta,
            spec={
                "replicas": kube.model_replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**meta["labels"], **labels}},
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        **pod,
                        "containers": [
                            {
                                "name": "model",
                                "image": kube.image,
                                "imagePullPolicy": kube.image_pull_policy,
                                "command": [
                                    "python",
                                    "-m",
                                    "serving.modelserver",
                                    served_dir,
                                    "--sha256",
                                    model["sha256"],
                                ],
                                "env": [{"name": k, "value": v} for k, v in env.items()],
                                "ports": [{"name": "http", "containerPort": MODEL_PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": f"/v2/models/{served}/ready", "port": MODEL_PORT},
                                    **READINESS,
                                },
                                "resources": _resources(kube.model_resources),
                                "volumeMounts": mounts,
                            }
                        ],
                        "volumes": volumes,
                    },
                },
            },
            opts=self._opts(),
        )
        service = k8s.core.v1.Service(
            f"{self.name}-model-{name}-service",
            metadata=self._meta(name, "model"),
            spec={"selector": labels, "ports": [{"name": "http", "port": MODEL_PORT, "targetPort": "http"}]},
            opts=self._opts(),
        )
        return [deployment, service]


def in_cluster_scrape_job(kube: KubernetesSpec, router: str) -> dict[str, Any]:
    """A scrape config for a Prometheus running in the cluster: the router pods, by their annotations."""
    return {
        "job_name": "router",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [kube.namespace]}}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                "regex": router,
                "action": "keep",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                "regex": "true",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "instance"},
        ],
    }
