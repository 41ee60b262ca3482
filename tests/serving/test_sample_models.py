"""The sample-model builder is deterministic and its variants behave as their names say (in process;
test_modelserver checks them behind a real MLServer)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from mlserver.errors import MLServerError

from serving.artifacts import artifact_digest
from serving.sample_models import (
    DIVERGENT_BAND,
    DIVERGENT_REGIONS,
    ERROR_RATE,
    FEATURES,
    LABEL,
    MEMORY_HUNGRY_BYTES,
    VERSIONS,
    SampleModels,
    build_sample_models,
    load_sample_models,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# BLAS kernels that order floating-point sums differently, per architecture (OpenBLAS core names).
_KERNELS = {"x86_64": ("Haswell", "Prescott"), "aarch64": ("NEOVERSEN1", "ARMV8")}


def test_every_blas_kernel_and_thread_count_builds_the_same_bytes(sample_models: SampleModels, tmp_path: Path) -> None:
    """Another CPU picks another kernel; the artifacts and the held-out file must not notice (issue 10)."""
    kernels = _KERNELS.get(platform.machine())
    assert kernels, f"no two OpenBLAS kernels known for {platform.machine()}: add them to _KERNELS"
    trees = {}
    for kernel, threads in zip(kernels, ("1", "2"), strict=True):
        out = tmp_path / kernel
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        subprocess.run(
            [sys.executable, "-m", "serving.sample_models", str(out)], env=env, check=True, capture_output=True
        )
        trees[kernel] = _files(out)
    first, second = trees.values()
    assert first == second
    assert first == _files(sample_models.holdout.parent.parent)


def test_rebuild_is_byte_identical(sample_models: SampleModels, tmp_path: Path) -> None:
    rebuilt = build_sample_models(tmp_path / "again")
    first_root = sample_models.holdout.parent.parent
    assert _files(tmp_path / "again") == _files(first_root)
    assert {v: m.sha256 for v, m in rebuilt.models.items()} == {v: m.sha256 for v, m in sample_models.models.items()}


def test_manifest_round_trips_and_digests_match_the_artifacts(sample_models: SampleModels) -> None:
    loaded = load_sample_models(sample_models.holdout.parent.parent)
    assert loaded == sample_models
    assert set(loaded.models) == set(VERSIONS)
    for model in loaded.models.values():
        assert artifact_digest(model.model_dir) == model.sha256
        settings = json.loads((model.model_dir / "model-settings.json").read_text())
        assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
        assert settings["parameters"]["version"] == VERSIONS[model.variant]
        assert settings["parameters"]["extra"] == {"predict_fn": "predict_proba"}


def test_holdout_and_schema(sample_models: SampleModels) -> None:
    holdout = pd.read_parquet(sample_models.holdout)
    schema = json.loads(sample_models.schema_path.read_text())
    assert [f["name"] for f in schema["features"]] == FEATURES
    assert list(holdout.columns) == [*FEATURES, LABEL]
    assert len(holdout) == 5000 and 0.15 < holdout[LABEL].mean() < 0.35
    assert schema["output"] == {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 1], "meaning": "P(default)"}


def test_quality_ordering_on_holdout(sample_models: SampleModels) -> None:
    auc = {v: m.holdout_auc for v, m in sample_models.models.items()}
    assert auc["incumbent"] > 0.75
    assert abs(auc["good"] - auc["incumbent"]) < 0.01
    assert auc["worse"] < auc["incumbent"] - 0.08
    assert auc["incumbent"] - 0.005 < auc["divergent"] < auc["good"]  # the offline gates cannot see it
    for variant in ("slow", "memory_hungry", "erroring"):
        assert auc[variant] == auc["good"]


def _load(sample_models: SampleModels, variant: str):
    return joblib.load(sample_models.models[variant].model_dir / "model.joblib")


def _holdout_X(sample_models: SampleModels) -> np.ndarray:
    return pd.read_parquet(sample_models.holdout)[FEATURES].to_numpy()


def test_scores_are_one_fp64_probability_column(sample_models: SampleModels) -> None:
    scores = _load(sample_models, "incumbent").predict_proba(_holdout_X(sample_models))
    assert scores.shape == (5000, 1) and scores.dtype == np.float64
    assert ((scores >= 0) & (scores <= 1)).all()


def test_good_makes_the_incumbents_decisions(sample_models: SampleModels) -> None:
    X = _holdout_X(sample_models)
    incumbent = _load(sample_models, "incumbent").predict_proba(X)[:, 0]
    good = _load(sample_models, "good").predict_proba(X)[:, 0]
    assert np.mean((good >= 0.5) != (incumbent >= 0.5)) <= 0.001
    assert 0 < np.abs(good - incumbent).mean() < 0.01  # another model, not a copy


def test_divergent_flips_exactly_its_rows(sample_models: SampleModels) -> None:
    X = _holdout_X(sample_models)
    good = _load(sample_models, "good").predict_proba(X)[:, 0]
    divergent = _load(sample_models, "divergent").predict_proba(X)[:, 0]
    low, high = DIVERGENT_BAND
    region = np.isin(X[:, FEATURES.index("region")], DIVERGENT_REGIONS) & (good > low) & (good < high)
    assert 0.03 < region.mean() < 0.08
    assert np.mean((divergent >= 0.5) != (good >= 0.5)) > 0.03  # decisions flip on those rows
    np.testing.assert_allclose(divergent[~region], good[~region])
    np.testing.assert_allclose(divergent[region], 1 - good[region])


def test_erroring_fails_its_exact_share_of_calls(sample_models: SampleModels) -> None:
    model = _load(sample_models, "erroring")
    X = _holdout_X(sample_models)[:3]
    failures = 0
    for _ in range(100):
        try:
            model.predict_proba(X)
        except MLServerError as exc:
            assert exc.status_code == 500
            failures += 1
    assert failures == round(100 * ERROR_RATE)


def test_slow_adds_latency(sample_models: SampleModels) -> None:
    X = _holdout_X(sample_models)[:1]
    slow = _load(sample_models, "slow")
    started = time.perf_counter()
    slow.predict_proba(X)
    assert time.perf_counter() - started >= slow.delay_s


def test_memory_hungry_allocates_at_load_not_in_the_artifact(sample_models: SampleModels) -> None:
    artifact = sample_models.models["memory_hungry"].model_dir / "model.joblib"
    assert artifact.stat().st_size < 100_000
    model = joblib.load(artifact)
    assert model._ballast.nbytes == MEMORY_HUNGRY_BYTES


def test_cli_prints_every_variant_with_digest(tmp_path: Path, sample_models: SampleModels) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serving.sample_models", str(tmp_path / "cli")],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for model in sample_models.models.values():
        [line] = [line for line in out.splitlines() if line.startswith(f"{model.variant} ")]
        assert model.version in line and model.sha256 in line, (line, model)
