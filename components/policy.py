"""The repo's policy for prod thresholds: how loose a prod stack's gates and canary may be, at most.

One table, read by two enforcers so that neither can be skipped: the gates provider's ``check`` (runs on every
preview and up, with or without a policy pack) and the mandatory CrossGuard pack in ``policy/``. A bound
names its key as written in stack config, its direction and why; ``violations`` explains each breach with
the configured value, the bound and by how much it is exceeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from components.spec import ReleaseSpec

# Marks the gates resource for the CrossGuard pack (every dynamic resource has the same type token).
GATES_KIND = "mlrelease:ReleaseGates"


@dataclass(frozen=True)
class Bound:
    """``key`` (dotted path into the spec) must be ``op`` ``limit``: ``"max"`` = at most, ``"min"`` = at least."""

    key: str
    op: Literal["max", "min"]
    limit: float
    why: str


PROD_BOUNDS: tuple[Bound, ...] = (
    Bound("gates.evaluation.tolerance", "max", 0.01, "a prod candidate may lose at most 0.01 of the metric"),
    Bound("gates.evaluation.floor", "min", 0.70, "no prod model below the floor"),
    Bound("gates.evaluation.confidence", "min", 0.95, "non-inferiority at 95 % confidence at least"),
    Bound("gates.latency.p99_ms", "max", 100.0, "the client SLO is p99 <= 100 ms"),
    Bound("gates.latency.p50_ms", "max", 50.0, "the client SLO is p50 <= 50 ms"),
    Bound("gates.latency.confidence", "min", 0.95, "latency bounds at 95 % confidence at least"),
    Bound("gates.latency.max_ratio", "max", 1.25, "at most 25 % slower than the incumbent at p50 and p99"),
    Bound("gates.memory.max_mb", "max", 2048.0, "a serving pod's memory limit"),
    Bound("gates.drift.psi_threshold", "max", 0.25, "PSI above 0.25 is a shifted population"),
    Bound("gates.drift.alpha", "min", 0.01, "a smaller alpha would hide real drift"),
    Bound("canary.steps.0", "max", 10.0, "the first canary step exposes at most 10 % of traffic"),
    Bound("canary.min_pairs", "min", 300.0, "fewer pairs cannot bound a 2 % disagreement rate"),
    Bound("canary.shadow_fraction", "min", 0.1, "at least 10 % of requests are compared"),
    Bound("canary.comparison.max_disagreement", "max", 0.02, "at most 2 % flipped decisions"),
    Bound("canary.comparison.max_abs_diff_p99", "max", 0.10, "p99 score change at most 0.10"),
    Bound("canary.comparison.max_bias", "max", 0.02, "mean score shift at most 0.02"),
    Bound("canary.comparison.confidence", "min", 0.95, "comparison bounds at 95 % confidence at least"),
    Bound("canary.judge.max_error_rate_increase", "max", 0.01, "at most one point more errors"),
    Bound("canary.judge.latency_allowed_increase", "max", 1.2, "at most 20 % slower than the incumbent"),
    Bound("canary.judge.confidence", "max", 0.99, "wider intervals let regressions pass"),
)


def _lookup(spec: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key; list indices are digits. Works on the policy SDK's read-only proxies too."""
    value: Any = spec
    for part in key.split("."):
        if part.isdigit():
            index = int(part)
            value = value[index] if isinstance(value, Sequence) and index < len(value) else None
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return None
    return value


def violations(spec: ReleaseSpec | Mapping[str, Any]) -> list[str]:
    """Every prod bound the spec breaks, one explained line each; empty outside prod."""
    data = spec.model_dump() if isinstance(spec, ReleaseSpec) else spec
    if data.get("environment") != "prod":
        return []
    found = []
    for bound in PROD_BOUNDS:
        value = _lookup(data, bound.key)
        if value is None:
            if bound.key == "gates.latency.p50_ms":
                found.append(
                    f"mlrelease:{bound.key} is unset but prod policy requires <= {bound.limit:g} ({bound.why})"
                )
            continue
        over = value - bound.limit if bound.op == "max" else bound.limit - value
        if over > 0:
            word = "<=" if bound.op == "max" else ">="
            found.append(
                f"mlrelease:{bound.key} = {value:g} is looser than prod policy ({word} {bound.limit:g}) by {over:g}:"
                f" {bound.why}"
            )
    return found
