"""The one interface every serving target implements, and the JSON-able states it hands back.

In the manner of Flagger's ``pkg/router``: the release logic (dynamic providers, the canary step runner,
the watcher) talks to a target only through these verbs, so the same canary runs on the local runtime,
on Kubernetes or anywhere else that can deploy a version, split and mirror traffic and report telemetry.
Every state is a pydantic model whose ``model_dump(mode="json")`` a Pulumi provider can keep as outputs,
and every telemetry answer keeps "no data" (``None``) apart from a measured zero: a release must never
read silence as health.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from serving.v2 import DEFAULT_OUTPUT, OutputSpec


class TargetError(RuntimeError):
    """The target could not do what was asked; the message names what, where, and what to do."""


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeConfig(_State):
    """What the shared runtime (router, telemetry) is set up with; a change may restart the router."""

    model_name: str = Field(min_length=1, description="the model name clients call")
    feature_names: list[str] | None = Field(default=None, description="input columns, validated and logged")
    shadow_fraction: float = Field(default=1.0, ge=0, le=1, description="share of requests mirrored")
    decision_threshold: float = Field(default=0.5, gt=0, lt=1, description="where pairs count a flip")


class ProcessInfo(_State):
    """Liveness of one process of the target, as a refresh should report it (a dead one is not hidden)."""

    name: str
    state: Literal["running", "restarting", "unsupervised", "dead", "stopped", "absent"]
    pid: int | None = None
    restarts: int = 0
    log_path: str | None = None


class RuntimeState(_State):
    """The runtime as a provider stores it: enough to re-attach (``from_state``) and to see what is dead."""

    target: str
    location: str = Field(description="where the runtime keeps its state (local: the run directory)")
    config: RuntimeConfig
    router_url: str | None = Field(description="client endpoint; None until a first version is deployed")
    telemetry_url: str | None
    processes: dict[str, ProcessInfo]
    healthy: bool
    problems: list[str] = Field(default=[], description="one line per process that is not running")


class DeploymentState(_State):
    """One deployed model version."""

    version: str
    model_name: str
    sha256: str
    model_dir: str
    url: str = Field(description="the version's own V2 endpoint (behind the router)")
    ready: bool
    process: ProcessInfo


class Routes(_State):
    """Traffic split in percent over every version (sums to 100) and the primary.

    The primary is the version the canary compares against: shadow pairs name it ``incumbent`` and a
    failing candidate's requests fall back to it.
    """

    weights: dict[str, float]
    primary: str


class Fault(_State):
    """A fault injected on one version (rollback drills); all zero means none."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    perturbation: float = Field(default=0.0, ge=-1, le=1, description="added to every score, clipped")


class PairCursor(_State):
    """Where a reader of shadow pairs left off; ``epoch`` changes when the pair source restarts."""

    epoch: str
    seq: int


class ShadowPair(_State):
    """Both versions' answers to the same input: outputs ``None`` when that call failed."""

    seq: int
    ts: float
    request_id: str
    primary: Literal["incumbent", "candidate"]
    incumbent: str
    candidate: str
    incumbent_output: list[float] | None
    candidate_output: list[float] | None
    incumbent_latency_ms: float
    candidate_latency_ms: float
    incumbent_status: int
    candidate_status: int


class PairPage(_State):
    """Pairs after a cursor, oldest first; pass ``cursor`` back to continue."""

    cursor: PairCursor
    pairs: list[ShadowPair]
    pending: int = Field(description="mirrored requests whose pair is not recorded yet")
    restarted: bool = Field(description="the source restarted since the given cursor: pairs may be missing")
    truncated: bool = Field(description="pairs after the cursor were evicted before they were read")


class VersionStats(_State):
    """Client-facing traffic of one version over ``[start, end]``; ``None`` means no data, never zero.

    ``requests`` counts attempts on the version (answered by it, or dropped by it and retried elsewhere);
    ``errors`` those that failed. ``error_rate`` is ``None`` when there were no requests.
    """

    version: str
    start: float
    end: float
    requests: int | None
    errors: int | None
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


@runtime_checkable
class Target(Protocol):
    """Deploy versions, split and mirror traffic, read pairs and telemetry, inject faults."""

    def ensure_runtime(self, config: RuntimeConfig) -> RuntimeState:
        """Bring the shared runtime up (idempotent) and describe it."""
        ...

    def status(self) -> RuntimeState:
        """Describe the runtime without changing anything (what a refresh reads)."""
        ...

    def destroy(self) -> None:
        """Stop everything the runtime runs (versions included); a no-op when nothing runs."""
        ...

    def deploy(
        self, version: str, model_dir: Path, sha256: str, output: OutputSpec = DEFAULT_OUTPUT
    ) -> DeploymentState:
        """Serve ``version`` from ``model_dir`` after checking its digest, at weight 0 (idempotent).

        ``output`` says where the version's answers hold the score, for the shadow pairs and telemetry.
        """
        ...

    def deployment(self, version: str) -> DeploymentState | None:
        """The state of a deployed version, or None if it is not deployed."""
        ...

    def remove(self, version: str) -> None:
        """Stop serving ``version``; refused while it has traffic or is the primary."""
        ...

    def routes(self) -> Routes:
        """The live traffic split."""
        ...

    def set_routes(self, routes: Routes, lease_s: float | None = None) -> Routes:
        """Apply every weight at once (and the primary); returns the live split after the change.

        ``lease_s`` makes the split a canary step's: unless it is set again within ``lease_s`` seconds, the
        target puts all traffic back on the primary by itself, so a step whose process died (a killed
        ``pulumi up``) never leaves traffic split. Without it the split holds until changed.
        """
        ...

    def pairs(self, since: PairCursor | None = None, *, since_ts: float | None = None, limit: int = 1000) -> PairPage:
        """Shadow pairs after ``since`` (and received at or after ``since_ts``)."""
        ...

    def telemetry(self, version: str, start: float, end: float | None = None) -> VersionStats:
        """Client-facing requests, errors and latency of ``version`` over ``[start, end or now]``."""
        ...

    def set_fault(self, version: str, fault: Fault | None) -> None:
        """Inject ``fault`` on ``version``, or clear it with None."""
        ...

    def release_lock(self, stack: str, operation: str) -> AbstractContextManager | None:
        """The target's own lock on ``stack`` for a release operation (LockBusy naming the holder), or None
        when the backend's lock is the only one (a target no other runner reaches)."""
        ...

    def lock_holder(self, stack: str) -> dict[str, Any] | None:
        """Who holds the target's own lock on ``stack`` (``{"pid", "host", "operation", "since"}``), or None."""
        ...
