"""The Kubernetes target: the same verbs as the local runtime, on a cluster reached through its API server only.

What runs in the cluster (Deployments, Services, the split ConfigMap, RBAC) is created and updated by
pulumi-kubernetes resources (``components/targets/kubernetes_objects.py``); this class is what the canary
steps, the watcher, drills and rollbacks call while those objects exist:

- the live split is ``data["split.json"]`` of one ConfigMap (``serving.routing.Split``). ``set_routes`` writes
  it with the resourceVersion it read (a concurrent writer is refused, never overwritten) and returns only
  when every router replica reports that resourceVersion as applied (``GET /admin/weights`` through the API
  server's pod proxy), so a canary step bakes on a split every replica routes by;
- ``deploy`` adds a version whose Deployment Pulumi created to the split at weight 0, once its Service
  answers ready through the service proxy (the pod itself checked the artifact's digest before serving);
- shadow pairs are read from every replica and merged; the cursor keeps one position per pod, and a pod that
  is gone since the last read is reported as a restart (its unread pairs are lost);
- telemetry comes from a Prometheus that scrapes every router pod through the API server (one on this
  runner, supervised like the local target's, unless ``prometheus_url`` names the firm's).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from components.targets.base import (
    DeploymentState,
    Fault,
    PairCursor,
    PairPage,
    ProcessInfo,
    Routes,
    RuntimeConfig,
    RuntimeState,
    ShadowPair,
    TargetError,
    VersionStats,
)
from components.targets.kube_api import KubeAPI
from components.targets.kube_lease import KubeLease
from components.targets.kube_lease import holder as lease_holder
from components.targets.stats import version_stats
from serving import supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError, read_settings, verify_artifact
from serving.monitoring import ALERTMANAGER, NODE_EXPORTER
from serving.private_files import write_private
from serving.prometheus import PrometheusError, start_prometheus
from serving.routing import SPLIT_KEY, Split, UpstreamSpec
from serving.routing import Fault as RouterFault
from serving.v2 import DEFAULT_OUTPUT, OutputSpec
from serving.wait import wait_until

ROUTER_PORT = 8080
MODEL_PORT = 8080
SCRAPE_JOB = "router"
PROMETHEUS = "prometheus"
TRAFFIC = "traffic"
FIELD_MANAGER = "mlrelease"
CONFIRM_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 240.0


class KubernetesSettings(BaseModel):
    """What a provider keeps to re-attach to the target (JSON in its state; no credential in it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "kubernetes"
    run_dir: str
    kubeconfig: str
    context: str | None = None
    namespace: str
    model_name: str
    router_replicas: int
    prometheus_url: str | None = None


def dns_name(*parts: str) -> str:
    """A DNS-1035 label from ``parts`` (lowercase, dashes), as Deployment and Service names must be."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-")


def router_name(model: str) -> str:
    return dns_name(model, "router")


def split_name(model: str) -> str:
    return dns_name(model, "split")


def version_name(model: str, version: str) -> str:
    return dns_name(model, version)


ROUTER_LABEL = "mlrelease.dev/role"


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _rv(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class KubernetesTarget:
    """One model's release objects in one namespace of one cluster."""

    kind = "kubernetes"

    def __init__(self, settings: KubernetesSettings | Mapping[str, Any]) -> None:
        self.settings = KubernetesSettings.model_validate(settings)
        self.run_dir = Path(self.settings.run_dir)
        self._api: KubeAPI | None = None

    # -- plumbing ------------------------------------------------------------------------------------

    @property
    def api(self) -> KubeAPI:
        if self._api is None:
            s = self.settings
            self._api = KubeAPI(Path(s.kubeconfig), s.context, self.run_dir / "kube")
        return self._api

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def _ns(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/{path}"

    def _token(self) -> str:
        path = self.run_dir / "admin-token"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise TargetError(f"no router admin token in {path}: `pulumi up` creates it") from None

    def check_namespace(self) -> None:
        """TargetError naming the fix when the namespace does not exist or cannot be read."""
        found = self.api.get(f"/api/v1/namespaces/{self.namespace}")
        if found is None:
            raise TargetError(
                f"namespace {self.namespace!r} does not exist in context {self.api.context} of"
                f" {self.api.kubeconfig}: create it (kubectl create namespace {self.namespace}) or fix"
                " mlrelease:kubernetes.namespace"
            )

    def _router_pods(self) -> list[dict[str, Any]]:
        selector = f"{ROUTER_LABEL}=router,app.kubernetes.io/instance={router_name(self.settings.model_name)}"
        listed = self.api.get(self._ns("pods"), params={"labelSelector": selector}) or {"items": []}
        pods = [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]
        self._note_pods(pods)
        return pods

    def _admin(self, pod: str, method: str, path: str, **kwargs: Any) -> Any:
        url = self._ns(f"pods/{pod}:{ROUTER_PORT}/proxy{path}")
        response = self.api.request(method, url, headers={"X-Mlrelease-Token": self._token()}, **kwargs)
        return self.api.checked(response, f"{method} {path} on router pod {pod}")

    # -- the split object ----------------------------------------------------------------------------

    def _read_split(self) -> tuple[Split, str]:
        name = split_name(self.settings.model_name)
        configmap = self.api.get(self._ns(f"configmaps/{name}"))
        if configmap is None:
            raise TargetError(
                f"split ConfigMap {self.namespace}/{name} does not exist: `pulumi up` creates the runtime"
            )
        raw = (configmap.get("data") or {}).get(SPLIT_KEY) or "{}"
        return Split.model_validate_json(raw), configmap["metadata"]["resourceVersion"]

    def _write_split(self, split: Split, read_version: str) -> str:
        """Write ``split`` if the object is still at ``read_version``; return the new resourceVersion."""
        body = {
            "metadata": {"resourceVersion": read_version},
            "data": {SPLIT_KEY: split.model_dump_json()},
        }
        name = split_name(self.settings.model_name)
        response = self.api.request(
            "PATCH",
            self._ns(f"configmaps/{name}"),
            params={"fieldManager": FIELD_MANAGER},
            content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if response.status_code == 409:
            raise TargetError(
                f"split ConfigMap {self.namespace}/{name} changed while it was being written (another release"
                " command?): nothing was applied; run the command again"
            )
        written = self.api.checked(response, f"PATCH configmap {name}")["metadata"]["resourceVersion"]
        self._confirm(written)
        return written

    def _confirm(self, version: str, timeout: float = CONFIRM_TIMEOUT_S) -> None:
        """Wait until every router replica reports ``version`` (or later) as its applied split."""
        behind: list[str] = []

        def applied() -> bool:
            behind.clear()
            pods = self._router_pods()
            if len(pods) < self.settings.router_replicas:
                behind.append(f"{len(pods)}/{self.settings.router_replicas} router pods exist")
                return False
            for pod in pods:
                name = pod["metadata"]["name"]
                if not _pod_ready(pod):
                    behind.append(f"{name} not ready")
                    continue
                try:
                    seen = self._admin(name, "GET", "/admin/weights").get("split_version")
                except TargetError as exc:
                    behind.append(f"{name}: {exc}")
                    continue
                if _rv(seen) < _rv(version):
                    behind.append(f"{name} at {seen}")
            return not behind

        try:
            wait_until(applied, timeout, f"every router replica applying split {version}", interval=0.02)
        except TimeoutError:
            raise TargetError(
                f"split {version} is written but not applied by every router replica after {timeout:.0f}s"
                f" ({'; '.join(behind)}): check the router pods (kubectl -n {self.namespace} get pods)"
            ) from None

    # -- Target verbs ----------------------------------------------------------------------------------

    def ensure_runtime(self, config: RuntimeConfig) -> RuntimeState:
        self.check_namespace()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "runtime.json").write_text(config.model_dump_json())
        if self.settings.prometheus_url is None:
            self._start_prometheus()
        with contextlib.suppress(TimeoutError):  # status() below says which replica is not running
            wait_until(self._routers_ready, READY_TIMEOUT_S, "the router replicas", interval=0.25)
        return self.status()

    def _routers_ready(self) -> bool:
        pods = self._router_pods()
        return len(pods) >= self.settings.router_replicas and all(_pod_ready(p) for p in pods)

    def status(self) -> RuntimeState:
        processes: dict[str, ProcessInfo] = {}
        for pod in self._router_pods():
            statuses = pod.get("status", {}).get("containerStatuses") or [{}]
            name = pod["metadata"]["name"]
            processes[name] = ProcessInfo(
                name=name,
                state="running" if _pod_ready(pod) else "restarting",
                restarts=int(statuses[0].get("restartCount", 0)),
            )
        problems = [f"router pod {p.name} is not ready" for p in processes.values() if p.state != "running"]
        if len(processes) < self.settings.router_replicas:
            problems.append(f"{len(processes)}/{self.settings.router_replicas} router pods exist")
        try:
            split, _ = self._read_split()
        except TargetError as exc:
            split, problems = Split(), [*problems, str(exc)]
        return RuntimeState(
            target=self.kind,
            location=str(self.run_dir),
            config=RuntimeConfig(model_name=self.settings.model_name),
            router_url=self.router_url() if split.upstreams else None,
            telemetry_url=self.telemetry_url(),
            processes=processes,
            healthy=not problems,
            problems=problems,
        )

    def router_url(self) -> str:
        """The router's Service through the API server's service proxy (the only path from a runner)."""
        return f"{self.api.server}{self._ns(f'services/{router_name(self.settings.model_name)}:{ROUTER_PORT}/proxy')}"

    def telemetry_url(self) -> str | None:
        if self.settings.prometheus_url:
            return self.settings.prometheus_url
        running = supervisor.running_handle(PROMETHEUS, self.run_dir)
        return f"http://127.0.0.1:{running.ports['http']}" if running else None

    def destroy(self) -> None:
        """Stop what runs on this runner (Prometheus and its companions, synthetic traffic); the cluster's objects
        are Pulumi's."""
        for name in (TRAFFIC, PROMETHEUS, NODE_EXPORTER, ALERTMANAGER):
            state = self.run_dir / name / supervisor.STATE_FILE
            if state.exists():
                supervisor.stop(state)

    def deploy(
        self, version: str, model_dir: Path, sha256: str, output: OutputSpec = DEFAULT_OUTPUT
    ) -> DeploymentState:
        try:
            verify_artifact(Path(model_dir), sha256)
            served_name = read_settings(Path(model_dir)).name
        except (ArtifactDigestError, ModelDirError) as exc:
            raise TargetError(str(exc)) from None
        name = version_name(self.settings.model_name, version)
        deployment = self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        if deployment is None:
            raise TargetError(
                f"{version} has no Deployment {self.namespace}/{name}: `pulumi up` creates it (mlrelease promote)"
            )
        recorded = deployment["metadata"].get("annotations", {}).get("mlrelease.dev/sha256")
        if recorded != sha256:
            raise TargetError(
                f"Deployment {self.namespace}/{name} serves artifact {recorded}, not {sha256}: `pulumi up` updates it"
            )
        try:
            wait_until(lambda: self._version_ready(name, served_name), READY_TIMEOUT_S, f"{name} ready", interval=0.5)
        except TimeoutError:
            failed = self._fetch_failure(name)
            raise TargetError(
                f"model server {self.namespace}/{name} is not ready after {READY_TIMEOUT_S:.0f}s: "
                + (
                    f"its fetch step failed: {failed}"
                    if failed
                    else f"see kubectl -n {self.namespace} logs deploy/{name} (a digest mismatch stops it before"
                    " serving)"
                )
            ) from None
        split, read = self._read_split()
        if version not in {u.version for u in split.upstreams}:
            upstream = UpstreamSpec(
                version=version,
                url=f"http://{name}.{self.namespace}.svc:{MODEL_PORT}",
                model_name=served_name,
                output=output,
            )
            upstreams = [*split.upstreams, upstream]
            incumbent = split.incumbent or version
            weights = {**split.weights, version: 0} if split.upstreams else {version: 100}
            self._write_split(
                Split(
                    upstreams=upstreams,
                    weights=weights,
                    incumbent=incumbent,
                    faults=split.faults,
                    lease_until=split.lease_until,  # adding a version at 0 keeps a step's lease
                ),
                read,
            )
        state = self.deployment(version)
        assert state is not None
        return state

    def _fetch_failure(self, name: str) -> str | None:
        """The termination message of a pod's failed ``fetch`` init step (an s3:// model directory), if any."""
        try:
            pods = self.api.get(self._ns("pods"), params={"labelSelector": f"app.kubernetes.io/instance={name}"}) or {}
        except TargetError:
            return None
        for pod in pods.get("items", []):
            for status in pod.get("status", {}).get("initContainerStatuses", []):
                for state in (status.get("state", {}), status.get("lastState", {})):
                    ended = state.get("terminated") or {}
                    if ended.get("exitCode"):
                        return (ended.get("message") or f"exit {ended['exitCode']}").strip().splitlines()[-1]
        return None

    def _version_ready(self, name: str, served_name: str) -> bool:
        path = self._ns(f"services/{name}:{MODEL_PORT}/proxy/v2/models/{served_name}/ready")
        try:
            return self.api.request("GET", path).status_code == 200
        except TargetError:
            return False

    def deployment(self, version: str) -> DeploymentState | None:
        name = version_name(self.settings.model_name, version)
        found = self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        if found is None:
            return None
        annotations = found["metadata"].get("annotations", {})
        ready = int(found.get("status", {}).get("readyReplicas") or 0) > 0
        return DeploymentState(
            version=version,
            model_name=annotations.get("mlrelease.dev/model-name", self.settings.model_name),
            sha256=annotations.get("mlrelease.dev/sha256", ""),
            model_dir=annotations.get("mlrelease.dev/model-dir", ""),
            url=f"{self.api.server}{self._ns(f'services/{name}:{MODEL_PORT}/proxy')}",
            ready=ready,
            process=ProcessInfo(name=name, state="running" if ready else "restarting"),
        )

    def remove(self, version: str) -> None:
        split, read = self._read_split()
        if version not in {u.version for u in split.upstreams}:
            return
        if split.incumbent == version or split.weights.get(version, 0) > 0:
            raise TargetError(f"{version} is the primary or still has traffic: move its weight first")
        self._write_split(
            Split(
                upstreams=[u for u in split.upstreams if u.version != version],
                weights={v: w for v, w in split.weights.items() if v != version},
                incumbent=split.incumbent,
                faults={v: f for v, f in split.faults.items() if v != version},
                lease_until=split.lease_until,
            ),
            read,
        )

    def routes(self) -> Routes:
        split, _ = self._read_split()
        if not split.upstreams:
            raise TargetError(f"no version is routed yet in {self.namespace}: release one first")
        return Routes(weights={v: float(w) for v, w in split.weights.items()}, primary=split.incumbent)

    def set_routes(self, routes: Routes, lease_s: float | None = None) -> Routes:
        """The split object updated and confirmed on every replica.

        With ``lease_s`` the object carries ``lease_until`` and every replica reverts to the incumbent by
        itself once it passes. A step renews every second; an unchanged split is rewritten only once a third
        of its lease has gone, so the API server sees a write per ``lease_s / 3``, not per second.
        """
        split, read = self._read_split()
        known = {u.version for u in split.upstreams}
        unknown = sorted(set(routes.weights) - known)
        if unknown or routes.primary not in known:
            raise TargetError(f"cannot route to {unknown or [routes.primary]}: not deployed in {self.namespace}")
        weights = {v: round(routes.weights.get(v, 0)) for v in known}
        now = time.time()
        try:
            new = Split(
                upstreams=split.upstreams,
                weights=weights,
                incumbent=routes.primary,
                faults=split.faults,
                lease_until=None if lease_s is None else now + lease_s,
            )
        except ValueError as exc:
            raise TargetError(f"invalid split {routes.weights}: {exc}") from None
        unchanged = (new.weights, new.incumbent) == (split.weights, split.incumbent)
        fresh = split.lease_until is not None and lease_s is not None and split.lease_until - now > lease_s * 2 / 3
        if unchanged and fresh:
            return self.routes()
        self._write_split(new, read)
        return self.routes()

    def pairs(self, since: PairCursor | None = None, *, since_ts: float | None = None, limit: int = 1000) -> PairPage:
        """Every replica's pairs after its own position in ``since``, merged in time order."""
        positions: dict[str, list[Any]] = json.loads(since.epoch) if since else {}
        cursor: dict[str, list[Any]] = {}
        pairs: list[ShadowPair] = []
        pending, restarted, truncated = 0, False, False
        for pod in self._router_pods():
            name = pod["metadata"]["name"]
            if not _pod_ready(pod):
                if name in positions:
                    cursor[name] = positions[name]
                continue
            epoch, seq = positions.get(name, [None, None])
            params: dict[str, Any] = {"limit": limit}
            if since_ts is not None:
                params["since_ts"] = since_ts
            if seq is not None:
                params["since"] = seq
            try:
                page = self._admin(name, "GET", "/admin/pairs", params=params)
                if epoch is not None and page["epoch"] != epoch:  # the replica restarted: read it from the start
                    restarted = True
                    params.pop("since", None)
                    page = self._admin(name, "GET", "/admin/pairs", params=params)
            except TargetError:
                # Unreadable this time (e.g. terminating, or its proxy path broke): keep its place and read it
                # next time; if it is gone by then, that is reported as a restart. No pairs is never a pass.
                if name in positions:
                    cursor[name] = positions[name]
                continue
            cursor[name] = [page["epoch"], page["next"]]
            pending += int(page["pending"])
            truncated |= bool(page["truncated"])
            pairs += [ShadowPair.model_validate({k: p[k] for k in ShadowPair.model_fields}) for p in page["pairs"]]
        restarted |= bool(set(positions) - set(cursor))  # a replica is gone, with the pairs it had not handed over
        pairs.sort(key=lambda p: p.ts)
        return PairPage(
            cursor=PairCursor(epoch=json.dumps(cursor, sort_keys=True), seq=sum(v[1] for v in cursor.values())),
            pairs=pairs,
            pending=pending,
            restarted=restarted,
            truncated=truncated,
        )

    def telemetry(self, version: str, start: float, end: float | None = None) -> VersionStats:
        url = self.telemetry_url()
        if url is None:
            raise TargetError(f"no Prometheus scrapes the routers of {self.namespace} (none runs in {self.run_dir})")
        return version_stats(url, SCRAPE_JOB, version, start, end)

    def set_fault(self, version: str, fault: Fault | None) -> None:
        split, read = self._read_split()
        if version not in {u.version for u in split.upstreams}:
            if fault is None:
                return
            raise TargetError(f"{version} is not deployed in {self.namespace}: no fault injected")
        faults = {v: f for v, f in split.faults.items() if v != version}
        if fault is not None and fault != Fault():
            faults[version] = RouterFault(**fault.model_dump())
        self._write_split(split.model_copy(update={"faults": faults}), read)

    # -- lock ---------------------------------------------------------------------------------------

    def release_lock(self, stack: str, operation: str) -> KubeLease:
        """A ``coordination.k8s.io`` Lease in the namespace: every runner that releases here sees it."""
        return KubeLease(self.api, self.namespace, stack, operation)

    def lock_holder(self, stack: str) -> dict[str, Any] | None:
        return lease_holder(self.api, self.namespace, stack)

    # -- runner-side processes -------------------------------------------------------------------------

    def _credentials(self) -> dict[str, Any]:
        """Prometheus's ``authorization``/``tls_config`` for the API server, from the kubeconfig's credential."""
        api = self.api
        auth: dict[str, Any] = {}
        token = api.http.headers.get("Authorization", "").removeprefix("Bearer ")
        if token:
            path = self.run_dir / "kube" / "prometheus-token"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, token)
            auth["authorization"] = {"credentials_file": str(path)}
        tls: dict[str, Any] = {}
        if api.ca_file:
            tls["ca_file"] = str(api.ca_file)
        if api.cert_files:
            tls["cert_file"], tls["key_file"] = map(str, api.cert_files)
        return {**auth, "tls_config": tls}

    @property
    def _scrape_file(self) -> Path:
        return self.run_dir / PROMETHEUS / "routers.json"

    def scrape_job(self) -> dict[str, Any]:
        """Every router pod scraped through the API server's pod proxy: one series set per replica.

        The pods are listed into a file_sd file (``_note_pods``) rather than found by Prometheus's own
        Kubernetes discovery, which Debian's prometheus is built without.
        """
        return {
            "job_name": SCRAPE_JOB,
            "scheme": "https",
            **self._credentials(),
            "file_sd_configs": [{"files": [str(self._scrape_file)], "refresh_interval": "1s"}],
        }

    def _note_pods(self, pods: list[dict[str, Any]]) -> None:
        """Point the runner's Prometheus at exactly ``pods`` (rewritten only when the set changes)."""
        if self.settings.prometheus_url is not None or not self._scrape_file.parent.is_dir():
            return
        server = self.api.server.removeprefix("https://").removeprefix("http://")
        groups = [
            {
                "targets": [server],
                "labels": {
                    "__metrics_path__": f"{self._ns(f'pods/{name}:{ROUTER_PORT}/proxy/metrics')}",
                    "pod": name,
                    "instance": name,
                },
            }
            for name in sorted(p["metadata"]["name"] for p in pods)
        ]
        text = json.dumps(groups, indent=2)
        try:
            if self._scrape_file.read_text() == text:
                return
        except FileNotFoundError:
            pass
        tmp = self._scrape_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self._scrape_file)

    def _start_prometheus(self) -> None:
        try:
            start_prometheus(self.run_dir, [], jobs=[self.scrape_job()])
            self._router_pods()  # writes the file of pods to scrape
        except PrometheusError as exc:
            raise TargetError(str(exc)) from None

    def start_traffic(self, rps: float, rows: Path) -> ProcessInfo:
        """Replay ``rows`` through the router Service (via the API server) at ``rps``; 0 stops it."""
        state = self.run_dir / TRAFFIC / supervisor.STATE_FILE
        if rps <= 0:
            if state.exists():
                supervisor.stop(state)
            return ProcessInfo(name=TRAFFIC, state="stopped")
        creds = self._credentials()
        argv = [
            sys.executable,
            "-m",
            "serving.traffic",
            "--url",
            self.router_url(),
            "--model",
            self.settings.model_name,
            "--rows",
            str(Path(rows).resolve()),
            "--rps",
            f"{rps:g}",
        ]
        try:
            features = RuntimeConfig.model_validate_json((self.run_dir / "runtime.json").read_text()).feature_names
        except (OSError, ValueError):
            features = None
        if features:
            argv += ["--features", ",".join(features)]
        if "authorization" in creds:
            argv += ["--token-file", creds["authorization"]["credentials_file"]]
        if creds["tls_config"].get("ca_file"):
            argv += ["--ca-file", creds["tls_config"]["ca_file"]]
        running = supervisor.running_handle(TRAFFIC, self.run_dir)
        if running is not None and supervisor.read_state(state).spec.argv != argv:
            supervisor.stop(state)
        supervisor.start_process(TRAFFIC, argv, self.run_dir, meta={"rps": rps}, stop_grace_s=5.0)
        started = supervisor.status(state)
        return ProcessInfo(name=TRAFFIC, state=started.state, pid=started.pid, log_path=str(started.log_path))
