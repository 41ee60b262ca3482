"""Stock model directories as a user brings them: trained on scikit-learn's breast-cancer data, saved the standard way.

No project class is inside any artifact: a ``Pipeline(StandardScaler, LogisticRegression)`` pickled with
``joblib.dump`` for MLServer's sklearn runtime, an XGBoost booster saved as ``model.json`` for the XGBoost
runtime, and a LightGBM booster saved as ``model.bst`` for the LightGBM runtime. What each runtime answers:

- sklearn with ``extra.predict_fn: predict_proba``: ``predict_proba`` of shape [rows, 2]; column 1 is P(positive).
  Without ``predict_fn`` it answers ``predict``, class labels, unless the request names ``predict_proba`` (as the
  gates and the router do for a release whose ``mlrelease:model.output.tensor`` is ``predict_proba``).
- XGBoost (a classifier saved with ``XGBClassifier.save_model``): ``predict``, labels, unless the request names
  ``predict_proba``, then [rows, 2].
- LightGBM: ``predict`` of a binary booster, P(positive), whatever the request names (MLServer encodes a 1-D
  answer as [rows, 1]).

The positive class is ``malignant`` (scikit-learn's target is 1 for benign; it is flipped so that 1 is the event
a screening model looks for). Rows are split once with a fixed seed into training rows and 200 held-out rows;
the drift windows are the training rows (reference) against the held-out rows (current), the same population.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "breast-cancer"
LABEL = "malignant"
HOLDOUT_ROWS = 200
SEED = 7
# Two uninformative columns: a model on these alone is clearly worse (held-out AUC about 0.5 against 0.99).
WEAK_FEATURES = ["mean fractal dimension", "texture error"]


@dataclass(frozen=True)
class StockData:
    """CSV files of one split: held-out rows with the label, and the two drift windows (features only)."""

    holdout: Path
    reference: Path
    current: Path
    label: str
    features: list[str]


@functools.cache
def breast_cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows), each with the 30 features and the 0/1 ``malignant`` label."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame[LABEL] = 1 - data.frame["target"].astype(int)
    train, holdout = train_test_split(frame, test_size=HOLDOUT_ROWS, random_state=SEED, stratify=frame[LABEL])
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def features() -> list[str]:
    return [c for c in breast_cancer()[0].columns if c != LABEL]


def breast_cancer_csv(out_dir: Path) -> StockData:
    """Write holdout.csv, reference.csv and current.csv into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, holdout = breast_cancer()
    paths = {name: out_dir / f"{name}.csv" for name in ("holdout", "reference", "current")}
    holdout.to_csv(paths["holdout"], index=False)
    train[features()].to_csv(paths["reference"], index=False)
    holdout[features()].to_csv(paths["current"], index=False)
    return StockData(**paths, label=LABEL, features=features())


def _settings(model_dir: Path, implementation: str, artifact: str, version: str, extra: dict | None) -> None:
    parameters: dict = {"uri": f"./{artifact}", "version": version}
    if extra:
        parameters["extra"] = extra
    settings = {"name": MODEL_NAME, "implementation": implementation, "parameters": parameters}
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


def _training(columns: list[str] | None) -> tuple[pd.DataFrame, pd.Series]:
    """Training features and labels; with ``columns``, every other column is zeroed (the model still takes all 30)."""
    train, _ = breast_cancer()
    frame = train[features()].copy()
    if columns is not None:
        frame[[c for c in features() if c not in columns]] = 0.0
    return frame, train[LABEL]


def sklearn_pipeline_dir(
    model_dir: Path, *, version: str = "v1", columns: list[str] | None = None, predict_fn: str | None = "predict_proba"
) -> Path:
    """A joblib-pickled ``Pipeline(StandardScaler, LogisticRegression)`` for ``mlserver_sklearn.SKLearnModel``.

    ``columns`` trains on those columns only (the others zeroed), for a worse model; ``predict_fn=None`` leaves
    ``extra.predict_fn`` out, so the runtime answers class labels.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    X, y = _training(columns)
    pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=1000))])
    pipeline.fit(X.to_numpy(), y.to_numpy())
    joblib.dump(pipeline, model_dir / "model.joblib")
    extra = {"predict_fn": predict_fn} if predict_fn else None
    _settings(model_dir, "mlserver_sklearn.SKLearnModel", "model.joblib", version, extra)
    return model_dir


def xgboost_dir(model_dir: Path, *, version: str = "v1", columns: list[str] | None = None, trees: int = 50) -> Path:
    """An ``XGBClassifier`` saved by its own ``save_model`` as ``model.json``, for the XGBoost runtime."""
    import xgboost as xgb

    model_dir.mkdir(parents=True, exist_ok=True)
    X, y = _training(columns)
    model = xgb.XGBClassifier(
        n_estimators=trees, max_depth=3, learning_rate=0.2, subsample=0.9, n_jobs=1, random_state=SEED
    )
    model.fit(X.to_numpy(), y.to_numpy())
    model.save_model(model_dir / "model.json")
    _settings(model_dir, "mlserver_xgboost.XGBoostModel", "model.json", version, None)
    return model_dir


def lightgbm_dir(model_dir: Path, *, version: str = "v1", columns: list[str] | None = None) -> Path:
    """A binary LightGBM booster saved as ``model.bst`` for ``mlserver_lightgbm.LightGBMModel``."""
    import lightgbm as lgb

    model_dir.mkdir(parents=True, exist_ok=True)
    X, y = _training(columns)
    params = {"objective": "binary", "num_leaves": 15, "num_threads": 1, "seed": SEED, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(X.to_numpy(), y.to_numpy()), num_boost_round=50)
    booster.save_model(str(model_dir / "model.bst"))
    _settings(model_dir, "mlserver_lightgbm.LightGBMModel", "model.bst", version, None)
    return model_dir
