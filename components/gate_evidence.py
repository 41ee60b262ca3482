"""The evidence a gate run leaves in stack state, and the one-line failures a blocked preview prints.

Stack history is the audit trail, so the evidence is self-contained JSON: per gate the verdict, the
verification library's one-paragraph explanation and full report, the thresholds and sample sizes; for
the run the artifact and dataset digests it was computed from, durations and the cache key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.gate_inputs import ArtifactDigests, DataDigests

GateName = Literal["evaluation", "latency", "memory", "drift"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateResult(_Frozen):
    """One gate's verdict and the numbers behind it."""

    gate: GateName
    passed: bool
    summary: str
    explanation: str
    report: dict[str, Any]
    thresholds: dict[str, Any]
    sample_sizes: dict[str, int]
    observed: dict[str, float | None]
    duration_s: float


class GateEvidence(_Frozen):
    """Every gate's result for one (candidate, incumbent, data, thresholds) combination."""

    gate_code_version: str
    cache_key: str
    cached: bool
    passed: bool
    environment: str
    started_at: datetime
    candidate: ArtifactDigests
    incumbent: ArtifactDigests | None
    data: DataDigests
    gates: dict[GateName, GateResult]
    durations_s: dict[str, float]

    def failures(self) -> list[str]:
        """One line per failing gate, e.g. ``gate latency failed: p99 upper bound 63.2 ms > threshold ...``."""
        return [f"gate {g.gate} failed: {g.summary}" for g in self.gates.values() if not g.passed]
