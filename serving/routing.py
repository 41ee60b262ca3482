"""Router configuration and the routing table: which version answers a request.

The table is immutable. A weight change, an added or removed upstream or a new incumbent builds a new
table and the router swaps it in with one assignment, so a request that read the table once sees one
consistent state from start to finish and a weight switch takes effect for the next request.

Sticky routing: an entity key hashes to a point in [0, 1) that is compared with the cumulative weights,
incumbent first. The same key lands on the same version while the weights stay; when the canary moves
weight from the incumbent to the candidate, keys already on the candidate stay there (the candidate's
range only grows downward).
"""

from __future__ import annotations

import hashlib
import random
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.v2 import OutputSpec

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
SPLIT_KEY = "split.json"  # the key of the live split in a Kubernetes target's split ConfigMap
# A Kubernetes Service name in the cluster's DNS (`<service>.<namespace>.svc[.cluster.local]`): the only
# non-loopback upstream a router accepts, so a router can never be pointed at an arbitrary host.
_SERVICE_HOST = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc(\.cluster\.local)?$")


class UpstreamSpec(BaseModel):
    """One model version behind the router: a V2 server on loopback (or a cluster Service), and its pid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str = Field(description="base URL of the V2 server, e.g. http://127.0.0.1:8081 or http://m-v1.ns.svc:8080")
    model_name: str = Field(min_length=1, description="the model's name on that server")
    pid: int | None = Field(default=None, ge=1, description="server pid, for memory/CPU metrics")
    pid_file: Path | None = Field(default=None, description="re-read on every scrape (restarts move pids)")
    output: OutputSpec = Field(default=OutputSpec(), description="where this version's answers hold the score")

    @field_validator("url")
    @classmethod
    def _loopback(cls, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "http" or parts.port is None or not (host in LOOPBACK_HOSTS or _SERVICE_HOST.match(host)):
            raise ValueError(
                f"upstream url must be http://127.0.0.1:<port> or http://<service>.<ns>.svc:<port>, got {url!r}"
            )
        return url.rstrip("/")


class Fault(BaseModel):
    """Injected per-version fault, what rollback drills use. All zero means no fault."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="share of requests answered 500")
    latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0, description="added before the call")
    perturbation: float = Field(
        default=0.0, ge=-1.0, le=1.0, description="added to every output value, clipped to [0, 1]"
    )


def validate_weights(weights: Mapping[str, int], versions: list[str]) -> dict[str, int]:
    """Weights for every known version (missing ones are 0), or ValueError: unknown, negative, sum != 100.

    With no versions at all (a cluster router before the first version is deployed) the only split is ``{}``.
    """
    if not versions and not weights:
        return {}
    unknown = sorted(set(weights) - set(versions))
    if unknown:
        raise ValueError(f"unknown versions {unknown}; known: {versions}")
    for version, weight in weights.items():
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
            raise ValueError(f"weight of {version!r} must be an integer in [0, 100], got {weight!r}")
    total = sum(weights.values())
    if total != 100:
        raise ValueError(f"weights must sum to 100, got {total}")
    return {v: weights.get(v, 0) for v in versions}


def _check_versions(versions: list[str], incumbent: str) -> None:
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate upstream versions in {versions}")
    if incumbent not in versions if versions else incumbent:
        raise ValueError(f"incumbent {incumbent!r} is not an upstream version {versions}")


class RouterConfig(BaseModel):
    """The JSON file given to `python -m serving.router --config FILE`."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(ge=1, le=65535, description="listen port, allocated by the caller")
    host: str = Field(default="127.0.0.1", description="listen address: loopback unless a pod must be reached")
    admin_token: str = Field(min_length=16, description="bearer token of /admin/*")
    model_name: str = Field(min_length=1, description="the model name clients use in /v2/models/{name}")
    upstreams: list[UpstreamSpec] = Field(description="empty only for a router that follows a split object")
    weights: dict[str, int]
    incumbent: str = Field(description='"" only while there are no upstreams')
    feature_names: list[str] | None = Field(
        default=None, description="columns of a [rows, features] input tensor, validated and logged"
    )
    shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow_queue_size: int = Field(default=1000, ge=1)
    shadow_workers: int = Field(default=4, ge=1, le=64)
    decision_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    log_dir: Path
    pairs_dir: Path
    log_flush_rows: int = Field(default=5000, ge=1)
    flush_seconds: float = Field(default=5.0, gt=0.0)
    pairs_in_memory: int = Field(default=50_000, ge=1, description="pairs kept for GET /admin/pairs")
    upstream_timeout_s: float = Field(default=10.0, gt=0.0)
    health_interval_s: float = Field(default=0.5, gt=0.0)

    @field_validator("feature_names")
    @classmethod
    def _feature_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if not names or len(set(names)) != len(names):
                raise ValueError("feature_names must be non-empty and unique")
            if any(n.startswith("_") for n in names):
                raise ValueError("feature names starting with '_' are reserved for log metadata")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        versions = [u.version for u in self.upstreams]
        _check_versions(versions, self.incumbent)
        self.weights = validate_weights(self.weights, versions)
        return self


def _key_point(key: str) -> float:
    """A stable point in [0, 1) for an entity key (not Python's hash(), which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


@dataclass(frozen=True)
class RoutingTable:
    """Upstreams, weights and incumbent at one instant; replaced whole, never mutated."""

    upstreams: dict[str, UpstreamSpec]
    weights: dict[str, int]
    incumbent: str
    _order: tuple[str, ...] = field(init=False, repr=False)
    _cumulative: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = (self.incumbent, *(v for v in self.upstreams if v != self.incumbent)) if self.upstreams else ()
        cumulative, total = [], 0
        for version in order:
            total += self.weights[version]
            cumulative.append(total)
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    def choose(self, entity_key: str | None) -> str:
        """The version for this request: by the key's hash point when given, uniform at random otherwise."""
        point = _key_point(entity_key) if entity_key is not None else random.random()
        return self._order[bisect_right(self._cumulative, point * 100)]

    def with_weights(self, weights: Mapping[str, int]) -> RoutingTable:
        return RoutingTable(self.upstreams, validate_weights(weights, list(self.upstreams)), self.incumbent)

    def with_upstream(self, spec: UpstreamSpec) -> RoutingTable:
        if spec.version in self.upstreams:
            raise ValueError(f"version {spec.version!r} is already an upstream")
        return RoutingTable({**self.upstreams, spec.version: spec}, {**self.weights, spec.version: 0}, self.incumbent)

    def without_upstream(self, version: str) -> RoutingTable:
        if version not in self.upstreams:
            raise KeyError(version)
        if version == self.incumbent or self.weights[version] > 0:
            raise ValueError(f"version {version!r} is the incumbent or still has traffic; move weight first")
        upstreams = {v: s for v, s in self.upstreams.items() if v != version}
        weights = {v: w for v, w in self.weights.items() if v != version}
        return RoutingTable(upstreams, weights, self.incumbent)

    def with_incumbent(self, version: str) -> RoutingTable:
        if version not in self.upstreams:
            raise ValueError(f"unknown version {version!r}")
        return RoutingTable(self.upstreams, self.weights, version)

    def shadow_peer(self, version: str, ready: Mapping[str, bool]) -> str | None:
        """The other side of a shadow pair: incumbent <-> a ready candidate (weight 0 counts: dark launch).

        With three versions up (the candidate of an attempt, the incumbent, and the standby kept warm for a
        rollback), the incumbent's copies go to the ready version with the most traffic: during a canary step
        that is the candidate, so the step's comparison gets every pair. With none carrying traffic (before the
        first step, or a failed attempt's candidate back at 0) they are shared at random, so the watcher's
        live-against-previous divergence still sees pairs.
        """
        if version != self.incumbent:
            return self.incumbent
        candidates = [v for v in self._order[1:] if ready.get(v, False)]
        if not candidates:
            return None
        most = max(self.weights[v] for v in candidates)
        candidates = [v for v in candidates if self.weights[v] == most]
        return candidates[0] if len(candidates) == 1 else random.choice(candidates)


class Split(BaseModel):
    """The live split as one Kubernetes object holds it (``data["split.json"]`` of a ConfigMap).

    Every router replica watches that object and applies it whole (upstreams, weights, incumbent and faults
    in one table swap), so a replica that restarts or is added comes up with the live split, and a canary
    step is one update of the object. ``version`` is the object's resourceVersion, reported back by each
    replica so the writer can confirm every replica applied it.
    """

    model_config = ConfigDict(extra="forbid")

    upstreams: list[UpstreamSpec] = []
    weights: dict[str, int] = {}
    incumbent: str = ""
    faults: dict[str, Fault] = {}
    # A canary step's split is leased: past this unix time every replica puts all traffic on the incumbent by
    # itself, unless the step has written a later one (a killed `pulumi up` leaves no split behind).
    lease_until: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        versions = [u.version for u in self.upstreams]
        _check_versions(versions, self.incumbent)
        self.weights = validate_weights(self.weights, versions)
        unknown = sorted(set(self.faults) - set(versions))
        if unknown:
            raise ValueError(f"faults for unknown versions {unknown}")
        return self

    def table(self) -> RoutingTable:
        return RoutingTable({u.version: u for u in self.upstreams}, self.weights, self.incumbent)
