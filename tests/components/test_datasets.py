"""CSV and Parquet are read alike wherever a dataset is named: the gates' inputs, synthetic traffic, ``init``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automation.init import infer_features, schema_document
from components.gate_inputs import DriftFiles, GateInputError, GateInputs, ModelRef, prepare
from serving.artifacts import artifact_digest, file_sha256
from serving.tables import TableError, read_table
from serving.traffic import request_bodies
from tests import stock_models


def test_csv_numbers_read_back_as_the_exact_doubles_written(tmp_path: Path) -> None:
    # Values whose shortest text needs up to 17 digits, over 16 decades: each must read back as the same double.
    values = np.random.default_rng(3).normal(size=5000) * 10.0 ** np.random.default_rng(4).integers(-8, 8, 5000)
    frame = pd.DataFrame({"x": values, "n": np.arange(5000)})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    read = read_table(tmp_path / "rows.csv")
    assert read["x"].to_numpy().tobytes() == values.tobytes()
    assert read["n"].dtype == np.int64


def test_csv_parsing_does_not_depend_on_the_process(tmp_path: Path) -> None:
    """Two fresh interpreters read the same bytes into the same frame (hash of values and dtypes)."""
    values = np.random.default_rng(5).lognormal(size=20_000)
    pd.DataFrame({"a": values, "b": values * 1e-7}).to_csv(tmp_path / "rows.csv", index=False)
    code = (
        "import sys, pandas as pd; from serving.tables import read_table; f = read_table(sys.argv[1]);"
        " print(pd.util.hash_pandas_object(f, index=False).sum(), list(map(str, f.dtypes)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "rows.csv")], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outputs) == 1 and "float64" in outputs.pop()


def test_parquet_and_csv_give_the_same_frame(tmp_path: Path) -> None:
    _, holdout = stock_models.breast_cancer()
    holdout.to_parquet(tmp_path / "h.parquet", index=False)
    holdout.to_csv(tmp_path / "h.CSV", index=False)  # the extension is matched case-insensitively
    pd.testing.assert_frame_equal(read_table(tmp_path / "h.parquet"), read_table(tmp_path / "h.CSV"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rows.xlsx", b"x", r"rows.xlsx is not a .parquet or .csv file \(extension '.xlsx'\)"),
        ("rows", b"x", r"rows is not a .parquet or .csv file \(extension 'none'\)"),
        ("rows.parquet", b"not parquet at all", r"rows.parquet is not readable parquet \(\w+\)"),
        ("rows.csv", b"", r"rows.csv is not readable csv \(EmptyDataError\)"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TableError, match=message) as info:
        read_table(tmp_path / name)
    assert "\n" not in str(info.value)


def _inputs(tmp_path: Path, data: stock_models.StockData) -> GateInputs:
    model_dir = stock_models.sklearn_pipeline_dir(tmp_path / "model")
    frame = read_table(data.holdout)
    document = schema_document(infer_features(frame, data.label, set(), set(), data.holdout), data.label)
    (data.holdout.parent / "schema.json").write_text(json.dumps(document))
    return GateInputs(
        candidate=ModelRef(name="breast-cancer", version="v1", model_dir=model_dir, sha256=artifact_digest(model_dir)),
        holdout=data.holdout,
        holdout_sha256=file_sha256(data.holdout),
        label=data.label,
        drift=DriftFiles(reference=data.reference, current=data.current),
    )


def test_gate_inputs_read_csv_holdout_and_drift_windows(tmp_path: Path) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    prepared = prepare(_inputs(tmp_path, data))
    _, holdout = stock_models.breast_cancer()
    assert prepared.data.features == stock_models.features()
    np.testing.assert_array_equal(prepared.holdout.to_numpy(), holdout[stock_models.features()].to_numpy())
    assert prepared.data.holdout_sha256 == file_sha256(data.holdout)
    assert prepared.data.drift_reference.rows == 369 and prepared.data.drift_current.rows == 200
    assert prepared.data.drift_current.sha256 == file_sha256(data.current)  # the file's bytes, as given


def test_gate_inputs_refuse_other_extensions_in_one_line(tmp_path: Path) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    inputs = _inputs(tmp_path, data)
    odd = data.current.with_suffix(".tsv")
    data.current.rename(odd)
    with pytest.raises(GateInputError) as info:
        prepare(inputs.model_copy(update={"drift": DriftFiles(reference=data.reference, current=odd)}))
    assert str(info.value) == (
        f"drift current window {odd} is not a .parquet or .csv file (extension '.tsv'): set"
        " mlrelease:data.drift_current to an existing parquet or csv of input rows"
    )


def test_synthetic_traffic_replays_csv_rows(tmp_path: Path) -> None:
    data = stock_models.breast_cancer_csv(tmp_path / "data")
    bodies = request_bodies(data.holdout, None, data.label)
    assert len(bodies) == 200
    assert b'"shape":[1,30]' in bodies[0] and b'"entity_key":"row-0"' in bodies[0]
