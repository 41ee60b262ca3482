"""The validated release spec: stack config in, a typed spec out, or one line naming the bad key.

Stack config is the only input a release has, so every key is checked before any resource is touched:
the error names the key as it is written in ``Pulumi.<stack>.yaml``, the bad value and what is allowed.
There is deliberately no key that disables a gate or skips the canary: thresholds can be tuned, gates
cannot be turned off, and prod thresholds are bounded by ``components/policy.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from serving.v2 import OutputSpec

NAMESPACE = "mlrelease"
SHA256 = r"^[0-9a-f]{64}$"


class SpecError(ValueError):
    """Stack config that cannot describe a release; the message is one line naming key, value and fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve(path: str, project_dir: Path) -> Path:
    """A configured path as an absolute path (relative paths are taken from the project directory)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else (project_dir / candidate).resolve()


class ModelSpec(_Strict):
    """The model a stack should serve: an MLServer model directory and the digest its artifact must have."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="model name clients call")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="version label")
    path: str = Field(
        min_length=1,
        description="model directory: absolute, relative to the project, or s3://BUCKET/PREFIX/ (fetched, checked)",
    )
    sha256: str = Field(pattern=SHA256, description="sha256 of the artifact (64 lowercase hex)")
    output: OutputSpec = Field(
        default=OutputSpec(), description="which V2 output (tensor) and column holds the score, e.g. predict_proba, 1"
    )

    @field_validator("path")
    @classmethod
    def _local_or_s3(cls, path: str) -> str:
        scheme = path.split("://", 1)[0] if "://" in path else None
        if scheme is not None and (scheme != "s3" or not path[len("s3://") :].split("?", 1)[0].strip("/").count("/")):
            raise ValueError(
                f"{path!r} is neither a local directory nor s3://BUCKET/PREFIX/: object storage is read over S3's API"
            )
        return path

    def model_dir(self, project_dir: Path) -> Path:
        """The model directory as an absolute local path; one in object storage is fetched into the artifact
        cache first and its digest checked (ModelDirError or ArtifactDigestError when it cannot be served)."""
        if self.path.startswith("s3://"):
            from automation.stores.artifacts import cache_root, fetch_model_dir  # boto3 only where it is needed

            return fetch_model_dir(self.path, self.sha256, cache_root(project_dir))
        return resolve(self.path, project_dir)


class DataSpec(_Strict):
    """The datasets the gates read; each is pinned by its digest so evidence names exactly what was used."""

    holdout: str = Field(min_length=1, description="held-out rows with features and the label (parquet or csv)")
    holdout_sha256: str = Field(pattern=SHA256, description="sha256 of the held-out file")
    label: str = Field(default="default", min_length=1, description="label column of the held-out set")
    drift_reference: str | None = Field(
        default=None, description="prior week's input rows (parquet or csv); default: the router's inference log"
    )
    drift_current: str | None = Field(
        default=None, description="current window's input rows (parquet or csv); default: the router's inference log"
    )
    drift_window_hours: float = Field(
        default=24.0, gt=0, le=168, description="inference-log window length; the reference is 7 days earlier"
    )

    @model_validator(mode="after")
    def _both_drift_windows_or_neither(self) -> DataSpec:
        if (self.drift_reference is None) != (self.drift_current is None):
            raise ValueError(
                "set both drift_reference and drift_current, or neither (then both windows come from the"
                " router's inference log)"
            )
        return self


class EvaluationGate(_Strict):
    """Non-inferiority on the held-out set, served exactly as in production, plus an absolute floor."""

    metric: Literal["roc_auc", "gini", "ks", "log_loss", "brier", "f1", "rmse", "mae"] = "roc_auc"
    tolerance: float = Field(default=0.01, ge=0, le=0.2, description="allowed loss against the incumbent")
    floor: float = Field(default=0.70, description="worst acceptable candidate value")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    n_boot: int = Field(default=1000, ge=200, le=20000)


class LatencyGate(_Strict):
    """p99 (and p50) upper confidence bounds of the served candidate, at a constant request rate; with an
    incumbent (measured interleaved in the same run), also the upper bound of candidate/incumbent p99 and p50."""

    p99_ms: float = Field(default=100.0, gt=0)
    p50_ms: float | None = Field(default=50.0, gt=0)
    rate_rps: float = Field(default=100.0, gt=0, le=2000)
    requests: int = Field(default=1000, ge=300, le=100_000, description=">= 299 for a 95 % bound on p99")
    warmup_requests: int = Field(default=100, ge=0, le=10_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_ratio: float = Field(
        default=1.25, gt=1, description="candidate/incumbent p99 and p50 upper bound, measured in the same run"
    )


class MemoryGate(_Strict):
    """Resident memory of the serving process tree, peak and after warm-up."""

    max_mb: float = Field(default=512.0, gt=0)


class DriftGate(_Strict):
    """Input drift of the current window against the prior week's (PSI and a corrected test per feature)."""

    psi_threshold: float = Field(default=0.25, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    correction: Literal["bh", "bonferroni"] = "bh"


class GatesSpec(_Strict):
    """Thresholds of the four gates. Every gate always runs; only thresholds are configurable."""

    evaluation: EvaluationGate = EvaluationGate()
    latency: LatencyGate = LatencyGate()
    memory: MemoryGate = MemoryGate()
    drift: DriftGate = DriftGate()


class ComparisonSpec(_Strict):
    """Tolerances of the paired prediction comparison (equivalence bounds, decided sequentially)."""

    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    max_disagreement: float = Field(default=0.02, gt=0, lt=1)
    max_abs_diff_p99: float = Field(default=0.10, gt=0)
    max_bias: float = Field(default=0.02, gt=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class JudgeSpec(_Strict):
    """The statistical judge of the candidate's error rate and latency against the incumbent's."""

    confidence: float = Field(default=0.98, gt=0.5, lt=1)
    tolerance: float = Field(default=0.25, ge=0)
    max_error_rate_increase: float = Field(default=0.01, gt=0, lt=1)
    latency_allowed_increase: float = Field(default=1.2, ge=1, description="canary/baseline mean ratio")


class CanarySpec(_Strict):
    """Traffic steps and what each step must show before the next one starts."""

    steps: list[float] = Field(default=[5, 25, 50, 100], min_length=1, description="percent, increasing, ends at 100")
    bake_seconds: float = Field(default=0.0, ge=0, le=86_400)
    min_pairs: int = Field(default=300, ge=30, description="shadow pairs a step needs before it may pass")
    max_pairs: int = Field(default=3000, ge=30)
    max_bake_seconds: float = Field(
        default=120.0, gt=0, description="deadline for min_pairs; missing telemetry fails the step"
    )
    lease_seconds: float = Field(
        default=30.0,
        ge=3,
        le=600,
        description="a step's split reverts to the incumbent by itself unless its step renews it this often"
        " (a killed pulumi up never leaves traffic split)",
    )
    shadow_fraction: float = Field(default=1.0, gt=0, le=1)
    synthetic_rps: float = Field(
        default=0.0, ge=0, le=2000, description="local target: replay held-out rows at this rate during bakes"
    )
    comparison: ComparisonSpec = ComparisonSpec()
    judge: JudgeSpec = JudgeSpec()

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        if any(s != int(s) for s in steps):
            raise ValueError("steps must be whole percentages (the router splits traffic in whole percent)")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100 (full promotion)")
        return steps

    @field_validator("max_pairs")
    @classmethod
    def _max_at_least_min(cls, max_pairs: int, info: Any) -> int:
        if max_pairs < info.data.get("min_pairs", 0):
            raise ValueError("max_pairs must be >= min_pairs")
        return max_pairs


class RollbackSpec(_Strict):
    """How long the previous verified version stays warm (serving shadow copies) after a promotion."""

    window_seconds: float = Field(default=3600.0, ge=0, le=30 * 86_400)


class WatchSpec(_Strict):
    """What ``mlrelease watch`` reads from live telemetry, and when a breach fires the rollback by itself.

    Every signal is taken over the last ``window_seconds``; a breach needs the lower confidence bound of a
    rate above its limit (not one bad request), and no usable telemetry for ``missing_seconds`` is a breach.
    """

    window_seconds: float = Field(default=10.0, ge=1, le=3600, description="sliding window of every signal")
    interval_seconds: float = Field(default=1.0, gt=0, le=60, description="how often the watcher looks")
    max_disagreement: float = Field(default=0.05, gt=0, lt=1, description="live vs warm previous, decision flips")
    max_error_rate: float = Field(default=0.05, gt=0, lt=1, description="live version's client-facing errors")
    p99_ms: float = Field(default=250.0, gt=0, description="live version's client-facing p99 latency")
    confidence: float = Field(default=0.99, gt=0.5, lt=1, description="of the lower bounds a breach needs")
    min_samples: int = Field(default=50, ge=10, description="pairs or requests a signal needs in its window")
    missing_seconds: float = Field(
        default=15.0, ge=1, le=3600, description="no usable telemetry this long is a breach, never health"
    )


class RestoreSpec(_Strict):
    """Set by ``mlrelease rollback`` (cleared by ``mlrelease promote``): converge to a release this stack verified.

    It is honoured only for the stack's verified previous release (or the live one, once restored), so it can
    never carry an unverified model past the gates: a restore re-checks the artifact digest and records the
    gate evidence of the release it restores.
    """

    version: str = Field(description="the verified version restored")
    sha256: str = Field(pattern=SHA256, description="its artifact digest")
    from_version: str | None = Field(default=None, description="the version rolled back from")
    traffic_moved_at: float | None = Field(default=None, description="unix time all traffic moved to `version`")
    reason: str = Field(default="", max_length=500, description="why: the watcher's breach or the operator's")


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


class ResourcesSpec(_Strict):
    """Requests of one kind of pod (what the scheduler reserves) and its limits (what the kubelet enforces).

    Memory's limit is its request: a pod is never OOM-killed for memory the node promised it. CPU may burst
    above its request up to ``cpu_limit`` (default: the request), so a node can hold every version a release
    keeps up (standby, incumbent, candidate) while the one under load gets the spare cores.
    """

    cpu: str = Field(default="500m", pattern=QUANTITY, description="Kubernetes CPU request, e.g. 500m")
    cpu_limit: str | None = Field(default=None, pattern=QUANTITY, description="CPU limit (default: the request)")
    memory: str = Field(default="512Mi", pattern=QUANTITY, description="memory request and limit, e.g. 512Mi")

    @field_validator("cpu_limit")
    @classmethod
    def _limit_not_below_request(cls, limit: str | None, info: ValidationInfo) -> str | None:
        request = info.data.get("cpu")  # absent when it failed its own pattern
        if limit is not None and request is not None and _cpu_cores(limit) < _cpu_cores(request):
            raise ValueError(f"{limit} is below the cpu request {request}: the API server would refuse the pod")
        return limit


_SI = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _cpu_cores(quantity: str) -> float:
    """A quantity that matched QUANTITY, in cores (``500m`` is 0.5)."""
    number = quantity.rstrip("mkMGTi")
    return float(number) * _SI.get(quantity[len(number) :], 1.0)


class KubernetesSpec(_Strict):
    """Where and how the ``kubernetes`` target releases: the cluster, the namespace, the images, the replicas.

    mlrelease reaches the cluster only through its API server (kubeconfig): services are read through the API
    server's service proxy, so a CI runner needs no other network path into the cluster.
    """

    kubeconfig: str = Field(min_length=1, description="kubeconfig file (relative to the project, or absolute)")
    context: str | None = Field(default=None, description="kubeconfig context (default: its current-context)")
    namespace: str = Field(pattern=DNS_LABEL, description="an existing namespace mlrelease may write in")
    image: str = Field(min_length=1, description="router and model-server image (docker/*.Dockerfile)")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    router_replicas: int = Field(default=2, ge=1, le=50, description="router Deployment replicas")
    model_replicas: int = Field(default=1, ge=1, le=50, description="replicas of each model version's Deployment")
    router_resources: ResourcesSpec = ResourcesSpec(cpu="250m", memory="256Mi")
    model_resources: ResourcesSpec = ResourcesSpec()
    model_host_path: bool = Field(
        default=True, description="mount model directories from the node at the same path (local cluster)"
    )
    prometheus_url: str | None = Field(
        default=None, description="the firm's Prometheus that scrapes the routers; default: one on this runner"
    )
    artifact_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+/?$",
        description="the object store's URL as the pods reach it, for s3:// model directories (default: the"
        " endpoint in mlrelease:model.path, or the pods' AWS_ENDPOINT_URL_S3)",
    )
    artifact_secret: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        description="a Secret in the namespace whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) the pods'"
        " fetch step signs with; default: the pods' own identity (IRSA, a node role)",
    )

    def kubeconfig_path(self, project_dir: Path) -> Path:
        return resolve(self.kubeconfig, project_dir)


class ReleaseSpec(_Strict):
    """Everything a stack's config says about a release."""

    environment: Literal["staging", "prod"] = "staging"
    target: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSpec | None = None
    model: ModelSpec
    data: DataSpec
    gates: GatesSpec = GatesSpec()
    canary: CanarySpec = CanarySpec()
    rollback: RollbackSpec = RollbackSpec()
    watch: WatchSpec = WatchSpec()
    restore: RestoreSpec | None = None

    @model_validator(mode="after")
    def _target_settings(self) -> ReleaseSpec:
        if self.target == "kubernetes" and self.kubernetes is None:
            raise ValueError(
                "mlrelease:target is kubernetes but mlrelease:kubernetes is missing: set its kubeconfig, namespace"
                " and image (docs/kubernetes.md)"
            )
        if self.target != "kubernetes" and self.kubernetes is not None:
            raise ValueError(f"mlrelease:kubernetes is set but mlrelease:target is {self.target}: remove one")
        return self

    @model_validator(mode="after")
    def _restore_names_the_model(self) -> ReleaseSpec:
        restore = self.restore
        if restore and (restore.version, restore.sha256) != (self.model.version, self.model.sha256):
            raise ValueError(
                f"restore of {restore.version} does not match mlrelease:model ({self.model.version}):"
                " remove mlrelease:restore (mlrelease rollback sets it, mlrelease promote clears it)"
            )
        return self


def load_spec(config: Mapping[str, Any]) -> ReleaseSpec:
    """Validate the ``mlrelease:*`` keys of a stack's config (keys without the namespace prefix)."""
    try:
        return ReleaseSpec.model_validate(dict(config))
    except ValidationError as exc:
        # A misspelled key also shows up as a missing one: name the misspelling first.
        error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        key = f"{NAMESPACE}:" + ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            raise SpecError(f"stack config {key} is missing: set it in Pulumi.<stack>.yaml") from None
        if error["type"] == "extra_forbidden":
            raise SpecError(
                f"stack config {key} is not a known key: remove it or fix its spelling"
                f" (allowed: {', '.join(_fields_at(error['loc'][:-1]))})"
            ) from None
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across sections
            raise SpecError(f"stack config: {message}") from None
        raise SpecError(
            f"stack config {key} = {error.get('input')!r} is not allowed: {message}{_described(error['loc'])}"
        ) from None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = ReleaseSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _described(loc: tuple[int | str, ...]) -> str:
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model else None
    return f" (expected: {field.description})" if field and field.description else ""
