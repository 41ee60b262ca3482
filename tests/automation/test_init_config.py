"""What ``mlrelease init`` decides without a server: the output setting, the label's kind, the feature kinds, and a
stack file that holds the documented values of its environment and reads back as the spec it was written from."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from automation.engine import PROJECT_DIR
from automation.errors import CommandFailed
from automation.init import build_config, choose_output, infer_features, label_kind, parse_stack_file, render_stack_file
from components.policy import violations
from components.spec import ReleaseSpec, load_spec
from serving.v2 import OutputSpec

MODEL = {"name": "m", "version": "v1", "path": "/models/m", "sha256": "a" * 64, "output": {"tensor": "predict_proba"}}
DATA = {"holdout": "/data/h.csv", "holdout_sha256": "b" * 64, "label": "y"}
HERE = Path("/data/h.csv")


def _repo_spec(stack: str) -> ReleaseSpec:
    return load_spec(parse_stack_file((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text()))


def _refusal(call, *args) -> str:
    with pytest.raises(CommandFailed) as info:
        call(*args)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"predict_proba": [20, 2]}, OutputSpec(tensor="predict_proba", column=1)),
        ({"predict": [20], "predict_proba": [20, 2]}, OutputSpec(tensor="predict_proba", column=1)),
        ({"predict": [20]}, OutputSpec(tensor="predict")),
        ({"scores": [20, 1]}, OutputSpec(tensor="scores")),
    ],
)
def test_the_output_setting_is_chosen_from_what_the_model_answered(outputs: dict, expected: OutputSpec) -> None:
    assert choose_output(outputs, "binary") == expected


def test_multiclass_and_wide_regression_outputs_are_refused_naming_the_shape() -> None:
    message = _refusal(choose_output, {"predict_proba": [20, 3]}, "binary")
    assert "shape [20, 3]" in message and "multiclass" in message
    message = _refusal(choose_output, {"predict": [20, 2]}, "continuous")
    assert "shape [20, 2]" in message and "one value per row" in message
    assert "[rows] or [rows, k]" in _refusal(choose_output, {"predict": [20, 2, 2]}, "binary")


def test_the_label_is_binary_or_continuous_and_anything_else_says_how_to_encode_it() -> None:
    assert label_kind(pd.DataFrame({"y": [0, 1, 1, 0]}), "y", HERE) == "binary"
    assert label_kind(pd.DataFrame({"y": [True, False]}), "y", HERE) == "binary"
    assert label_kind(pd.DataFrame({"y": np.linspace(0, 300, 50)}), "y", HERE) == "continuous"
    assert "no label column 'label'" in _refusal(label_kind, pd.DataFrame({"y": [0, 1]}), "label", HERE)
    assert "pass --label" in _refusal(label_kind, pd.DataFrame({"y": [0, 1]}), "label", HERE)
    assert "encode the positive class as 1" in _refusal(label_kind, pd.DataFrame({"y": ["yes", "no"]}), "y", HERE)
    assert "3 classes [0.0, 1.0, 2.0]" in _refusal(label_kind, pd.DataFrame({"y": [0, 1, 2, 1]}), "y", HERE)
    assert "one class only" in _refusal(label_kind, pd.DataFrame({"y": [1, 1]}), "y", HERE)
    assert "1 missing values" in _refusal(label_kind, pd.DataFrame({"y": [1, None, 0]}), "y", HERE)


def test_feature_kinds_are_inferred_or_declared_and_ambiguous_ones_refused() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"x": rng.normal(size=100), "age": rng.integers(18, 90, 100), "grade": rng.integers(1, 4, 100)}
    )
    frame["y"] = rng.integers(0, 2, 100)
    message = _refusal(infer_features, frame, "y", set(), set(), HERE)
    assert "'grade' (3 values)" in message and "--categorical COL[,COL] or --numeric COL[,COL]" in message
    assert "'age'" not in message  # 70-odd whole numbers: a count, numeric
    kinds = {f["name"]: f["kind"] for f in infer_features(frame, "y", {"grade"}, set(), HERE)}
    assert kinds == {"x": "numeric", "age": "numeric", "grade": "categorical"}  # held-out column order, label left out
    assert infer_features(frame, "y", set(), {"grade"}, HERE)[2] == {
        "name": "grade",
        "dtype": "float64",
        "kind": "numeric",
    }
    assert "not feature columns" in _refusal(infer_features, frame, "y", {"y"}, set(), HERE)
    assert "declare each column once" in _refusal(infer_features, frame, "y", {"grade"}, {"grade"}, HERE)
    frame["site"] = "north"
    message = _refusal(infer_features, frame, "y", {"grade", "site"}, set(), HERE)
    assert "['site']" in message and "not numeric (e.g. 'north')" in message and "encoded as numbers" in message


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_stack_file_holds_the_documented_values_and_reads_back_as_written(environment: str) -> None:
    spec = build_config(environment, MODEL, DATA, "binary", pd.Series([0, 1]))  # type: ignore[arg-type]
    documented = _repo_spec(environment)
    for section in ("gates", "canary", "rollback", "watch"):
        assert getattr(spec, section) == getattr(documented, section), section
    assert violations(spec) == []
    text = render_stack_file(spec, environment, Path("/data/schema.json"))
    assert load_spec(parse_stack_file(text)) == spec
    assert max(len(line) for line in text.splitlines()) <= 118
    lines = text.splitlines()
    assert "  # Thresholds of the four gates. Every gate always runs; only thresholds are configurable." in lines
    body = lines[lines.index("config:") + 1 :]
    for above, line in itertools.pairwise(body):  # every key is commented, inline or on the line above
        assert line.lstrip().startswith("#") or "  # " in line or above.lstrip().startswith("#"), line
    assert ("prod policy: <= 100" in text) == (environment == "prod")
    assert "    # drift_reference: (unset)" in text  # an optional key left out is still shown
    assert set(yaml.safe_load(text)) == {"config"}


def test_a_regression_is_judged_on_rmse_with_the_mean_predictor_as_floor() -> None:
    labels = pd.Series(np.arange(100.0))
    spec = build_config("staging", {**MODEL, "output": {"tensor": "predict"}}, DATA, "continuous", labels)
    assert spec.gates.evaluation.metric == "rmse"
    assert spec.gates.evaluation.floor == pytest.approx(labels.std(ddof=0))
    assert spec.model.output == OutputSpec(tensor="predict")
