"""``mlrelease init`` as a user runs it: the real console script, the real engine and a real MLServer, on stock models
trained here on scikit-learn's breast-cancer data, with CSV held-out rows.

A stack is written only when everything checks; every refusal is one line, exit 2, and nothing written: no stack
file, no schema, no stack in the backend, no model server left running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import joblib
import pandas as pd
import psutil
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from automation.engine import select_stack, workspace
from automation.init import parse_stack_file
from automation.sandbox import copy_program
from components.gate_inputs import FeatureSchema
from components.policy import violations
from components.spec import load_spec
from components.stack_config import namespaced
from serving.artifacts import artifact_digest, file_sha256
from serving.v2 import OutputSpec
from tests import stock_models
from tests.engine.conftest import CliResult, mlrelease

pytestmark = pytest.mark.engine
PROGRESS = re.compile(r"\d\d:\d\d:\d\d ")  # a progress line's timestamp


class InitProject:
    """A copy of the program with its own backend (what ``tests.engine.conftest.mlrelease`` runs against)."""

    def __init__(self, root: Path) -> None:
        self.dir = copy_program(root / "project")
        (root / "state").mkdir()
        self.env = {**os.environ, "PULUMI_BACKEND_URL": (root / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "test"}

    def stacks(self) -> set[str]:
        return {s.name for s in workspace(work_dir=self.dir, env=self.env).list_stacks()}

    def init(self, stack: str, model: Path, holdout: Path, *args: str, label: str = stock_models.LABEL) -> CliResult:
        argv = ["init", "--stack", stack, "--model", str(model), "--holdout", str(holdout), "--label", label]
        return mlrelease(self, *argv, *args, timeout=300)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> InitProject:
    return InitProject(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    stock_models.sklearn_pipeline_dir(root / "sklearn")
    stock_models.sklearn_pipeline_dir(root / "sklearn-no-predict-fn", predict_fn=None)
    stock_models.xgboost_dir(root / "xgboost")
    stock_models.lightgbm_dir(root / "lightgbm")
    labels_only = root / "labels-only"  # an estimator without predict_proba: its only answer is class labels
    labels_only.mkdir()
    train = stock_models.breast_cancer()[0]
    svm = Pipeline([("scale", StandardScaler()), ("svm", LinearSVC())])
    joblib.dump(svm.fit(train[stock_models.features()].to_numpy(), train[stock_models.LABEL]), labels_only / "m.pkl")
    settings = {"uri": "./m.pkl", "version": "v1"}
    implementation = "mlserver_sklearn.SKLearnModel"
    (labels_only / "model-settings.json").write_text(
        json.dumps({"name": stock_models.MODEL_NAME, "implementation": implementation, "parameters": settings})
    )
    return root


def _model_servers(model_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "serving.modelserver" in cmdline and str(model_dir) in cmdline:
            found.append(proc)
    return found


def _files(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def refused(proj: InitProject) -> Callable[..., Callable[[CliResult, str], None]]:
    """Snapshot the project and data dirs and the backend's stacks; the check asserts a one-line refusal left them."""

    def snapshot(*dirs: Path) -> Callable[[CliResult, str], None]:
        before, stacks = _files(proj.dir, *dirs), proj.stacks()

        def check(result: CliResult, message: str) -> None:
            assert result.code == 2, result
            errors = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
            assert len(errors) == 1 and errors[0].startswith("mlrelease: error: "), result
            assert message in errors[0], result
            assert result.json is None  # no report on stdout
            assert _files(proj.dir, *dirs) == before, "a refusal wrote or changed files"
            assert proj.stacks() == stacks, "a refusal changed the backend's stacks"

        return check

    return snapshot


def test_init_writes_a_stack_that_loads_with_the_output_setting_digests_and_schema(
    proj: InitProject, models: Path, tmp_path: Path
) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    model_dir = models / "sklearn"
    result = proj.init(
        "staging", model_dir, data.holdout, "--reference", str(data.reference), "--current", str(data.current)
    )
    assert result.code == 0, result
    report = result.json
    assert report["served"]["outputs"] == {"predict_proba": [20, 2]}
    assert report["model"]["output"] == {"tensor": "predict_proba", "column": 1}
    assert report["next_command"] == f"mlrelease promote --stack staging --model {model_dir}"
    assert 0 < report["served"]["score_range"][0] < report["served"]["score_range"][1] < 1
    assert _model_servers(model_dir) == [], "the checking model server was left running"

    text = (proj.dir / "Pulumi.staging.yaml").read_text()
    spec = load_spec(parse_stack_file(text))
    assert spec.environment == "staging" and spec.model.name == stock_models.MODEL_NAME and spec.model.version == "v1"
    assert spec.model.sha256 == artifact_digest(model_dir)
    assert spec.model.output == OutputSpec(tensor="predict_proba", column=1)
    assert spec.data.holdout == str(data.holdout) and spec.data.holdout_sha256 == file_sha256(data.holdout)
    assert (spec.data.label, spec.data.drift_current) == (stock_models.LABEL, str(data.current))
    assert spec.canary.synthetic_rps == 50  # staging's documented value: the local target has no clients
    assert "# Thresholds of the four gates." in text and "encryptionsalt:" in text

    # The engine reads the file as written, and the stack exists in the backend.
    assert "staging" in proj.stacks()
    engine_config = select_stack("staging", work_dir=proj.dir, env=proj.env, create=False).get_all_config()
    assert load_spec(namespaced({key: value.value for key, value in engine_config.items()})) == spec

    schema = json.loads((data.holdout.parent / "schema.json").read_text())
    features = stock_models.features()
    assert schema == {
        "features": [{"name": name, "dtype": "float64", "kind": "numeric"} for name in features],
        "label": stock_models.LABEL,
        "input": {"name": "input-0", "datatype": "FP64", "shape": [-1, 30]},
    }
    assert FeatureSchema.model_validate(schema).names == features
    assert report["feature_schema"]["written"] is True


def test_an_existing_stack_or_stack_file_is_never_overwritten(
    proj: InitProject, models: Path, tmp_path: Path, refused
) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    model_dir = models / "sklearn"
    first = proj.init("existing", model_dir, data.holdout)
    assert first.code == 0, first
    assert any("drift gate reads the router's inference log" in note for note in first.json["notes"])
    check = refused(data.holdout.parent)
    check(proj.init("existing", model_dir, data.holdout), "Pulumi.existing.yaml already exists")
    check(proj.init("existing", model_dir, data.holdout), "run `mlrelease promote --stack existing --model DIR`")

    stack_file = proj.dir / "Pulumi.existing.yaml"
    kept = stack_file.read_bytes()
    stack_file.unlink()  # the stack without its file: still refused, and no file written
    try:
        check = refused(data.holdout.parent)
        check(proj.init("existing", model_dir, data.holdout), "stack 'existing' already exists in file://")
    finally:
        stack_file.write_bytes(kept)


def _with_column(data: stock_models.StockData, name: str, values) -> None:
    frame = pd.read_csv(data.holdout)
    frame[name] = values
    frame.to_csv(data.holdout, index=False)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing label", "has no label column 'diagnosis'"),
        ("model does not load", "does not serve: model server init-check for"),
        ("text column", "held-out column(s) ['site'] of"),
        ("few whole numbers", "hold a few whole numbers only: categorical or numeric?"),
        ("labels, not scores", "those are class labels, not scores; release an estimator with predict_proba"),
        ("spreadsheet", "is not a .parquet or .csv file (extension '.xlsx')"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    proj: InitProject, models: Path, tmp_path: Path, refused, case: str, message: str
) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    model_dir, holdout, label = models / "sklearn", data.holdout, stock_models.LABEL
    if case == "missing label":
        label = "diagnosis"
    elif case == "model does not load":
        model_dir = Path(shutil.copytree(models / "sklearn", tmp_path / "broken"))
        (model_dir / "model.joblib").write_bytes(b"this is not a pickle")
    elif case == "text column":
        _with_column(data, "site", "north")
    elif case == "few whole numbers":
        _with_column(data, "grade", [i % 3 for i in range(200)])
    elif case == "labels, not scores":
        model_dir = models / "labels-only"
    elif case == "spreadsheet":
        holdout = holdout.rename(holdout.with_suffix(".xlsx"))
    check = refused(data.holdout.parent, model_dir)
    check(proj.init("refused", model_dir, holdout, label=label), message)
    assert _model_servers(model_dir) == []


@pytest.mark.parametrize(
    ("runtime", "outputs", "output"),
    [
        ("xgboost", {"predict_proba": [20, 2]}, OutputSpec(tensor="predict_proba", column=1)),
        ("lightgbm", {"predict": [20, 1]}, OutputSpec(tensor="predict")),
        ("sklearn-no-predict-fn", {"predict_proba": [20, 2]}, OutputSpec(tensor="predict_proba", column=1)),
    ],
)
def test_each_runtime_gets_the_output_setting_of_its_scores(
    proj: InitProject, models: Path, tmp_path: Path, runtime: str, outputs: dict, output: OutputSpec
) -> None:
    """XGBoost's and sklearn's runtimes answer probabilities when asked by name (the gates and the router ask);
    LightGBM's booster answers P(positive) in one column. Also: a model directory with its own schema.json keeps
    it (the gates read it first); none is inferred."""
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    model_dir = Path(shutil.copytree(models / runtime, tmp_path / runtime))
    features = [{"name": name, "kind": "numeric"} for name in stock_models.features()]
    (model_dir / "schema.json").write_text(json.dumps({"features": features}))
    result = proj.init(runtime, model_dir, data.holdout)
    assert result.code == 0, result
    assert result.json["served"]["outputs"] == outputs
    spec = load_spec(parse_stack_file((proj.dir / f"Pulumi.{runtime}.yaml").read_text()))
    assert spec.model.output == output
    schema = result.json["feature_schema"]
    assert (schema["source"], schema["written"], schema["path"]) == ("model", False, str(model_dir / "schema.json"))
    assert not (data.holdout.parent / "schema.json").exists()


def test_a_declared_categorical_column_on_prod_and_a_regression(
    proj: InitProject, models: Path, tmp_path: Path
) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    # A whole-number column declared categorical; the stock model takes 30 columns, so one of its columns is recoded.
    frame = pd.read_csv(data.holdout)
    frame["mean radius"] = pd.qcut(frame["mean radius"], 3, labels=False)
    frame.to_csv(data.holdout, index=False)
    result = proj.init("prod", models / "sklearn", data.holdout, "--categorical", "mean radius")
    assert result.code == 0, result
    assert result.json["environment"] == "prod" and result.json["feature_schema"]["categorical"] == ["mean radius"]
    spec = load_spec(parse_stack_file(text := (proj.dir / "Pulumi.prod.yaml").read_text()))
    assert violations(spec) == [] and spec.canary.min_pairs == 500 and "prod policy: <= 100" in text

    # A regression: sklearn's runtime answers `predict` (fine for a continuous label), judged on RMSE.
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    regression = tmp_path / "regression"
    regression.mkdir()
    pd.concat([X, y.rename("progression")], axis=1).tail(100).to_csv(regression / "holdout.csv", index=False)
    model_dir = tmp_path / "diabetes"
    model_dir.mkdir()
    joblib.dump(LinearRegression().fit(X.to_numpy(), y.to_numpy()), model_dir / "model.joblib")
    settings = {
        "name": "diabetes",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "r1"},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(settings))
    result = proj.init("regression", model_dir, regression / "holdout.csv", label="progression")
    assert result.code == 0, result
    spec = load_spec(parse_stack_file((proj.dir / "Pulumi.regression.yaml").read_text()))
    assert spec.model.output == OutputSpec(tensor="predict") and spec.gates.evaluation.metric == "rmse"
    assert spec.gates.evaluation.floor == pytest.approx(y.tail(100).std(ddof=0), rel=1e-5)
