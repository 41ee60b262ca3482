"""Fixtures for the gate runner's tests: sample models and drift windows built once per session, and
gate inputs with thresholds set from measured numbers of the sample variants (see the margins below)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from components.gate_inputs import DriftFiles, GateInputs, ModelRef
from components.spec import GatesSpec, LatencyGate, MemoryGate
from serving.sample_models import SampleModels, build_sample_models
from serving.sample_windows import SampleWindows, build_sample_windows

# Measured on the shared 2-core machine at 100 rps, 300 requests (load average 5-17): good p50 upper bound
# 2-20 ms, p99 upper bound 12-92 ms; RSS good 260 MiB, memory_hungry 772 MiB. The slow variant sleeps
# 15 ms per call and MLServer runs the model on its event loop, so it serves one call at a time: 300 calls
# take >= 4.5 s, sending ends at 3 s, so its slowest answer (the p99 bound at n=300) is >= 1.5 s on any
# machine. Candidate/incumbent ratio upper bounds, both measured interleaved (load average 2-4): good p50
# 0.95-1.16, p99 1.0-1.8 at 300 requests (0.9-5.6 at 1000: on a busy machine the tail is one process's
# stalls, which the other does not share); slow at 50 rps (below its nominal 66 rps: it queues only on a
# busy machine) p50 5.8-23.5. Thresholds sit far from both sides.
TEST_GATES = GatesSpec(
    latency=LatencyGate(p99_ms=1000.0, p50_ms=100.0, rate_rps=100.0, requests=300, warmup_requests=30, max_ratio=10.0),
    memory=MemoryGate(max_mb=512.0),
)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> SampleModels:
    """Every sample variant with its held-out set and schema, built once."""
    return build_sample_models(tmp_path_factory.mktemp("gate-samples"))


@pytest.fixture(scope="session")
def windows(samples: SampleModels) -> SampleWindows:
    """Stable and shifted drift windows beside the held-out set, built once."""
    return build_sample_windows(samples.holdout.parent)


def model_ref(samples: SampleModels, variant: str) -> ModelRef:
    model = samples.models[variant]
    return ModelRef(name=model.name, version=model.version, model_dir=model.model_dir, sha256=model.sha256)


@pytest.fixture(scope="session")
def make_inputs(samples: SampleModels, windows: SampleWindows) -> Callable[..., GateInputs]:
    """Gate inputs for a candidate variant against the incumbent, on the stable drift windows by default."""

    def make(
        variant: str, *, incumbent: str | None = "incumbent", shifted: bool = False, **overrides: object
    ) -> GateInputs:
        fields: dict[str, object] = {
            "candidate": model_ref(samples, variant),
            "incumbent": model_ref(samples, incumbent) if incumbent else None,
            "holdout": samples.holdout,
            "holdout_sha256": samples.holdout_sha256,
            "drift": DriftFiles(reference=windows.reference, current=windows.shifted if shifted else windows.current),
            "gates": TEST_GATES,
        }
        return GateInputs.model_validate({**fields, **overrides})

    return make


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A work directory and a cache directory of one test."""
    return tmp_path / "work", tmp_path / "cache"
