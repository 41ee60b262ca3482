"""The gate runner against real MLServer processes: the good candidate passes all four gates, each faulty
variant is blocked on its own gate with a one-line reason, the first release runs the absolute gates, a
repeated run is answered from the cache without serving, every bad input is one line, and nothing is
left running."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from components import gate_serving
from components.gate_inputs import DriftLog, GateInputs, prepare
from components.gates import GateEvidence, GateInputError, run_gates
from components.spec import MemoryGate
from serving import supervisor
from serving.artifacts import file_sha256
from serving.inference_log import InferenceLogWriter
from serving.sample_models import FEATURES, SampleModels

MakeInputs = Callable[..., GateInputs]


def _nothing_runs(work_dir: Path) -> bool:
    states = list(work_dir.glob(f"**/{supervisor.STATE_FILE}"))
    return all(supervisor.status(p).state in {"stopped", "dead"} for p in states)


def _failed(evidence: GateEvidence) -> set[str]:
    return {name for name, gate in evidence.gates.items() if not gate.passed}


@pytest.fixture(scope="module")
def good_run(
    make_inputs: MakeInputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[GateInputs, Path, GateEvidence]:
    """The good candidate against the incumbent on stable windows: run once, shared with the cache test."""
    root = tmp_path_factory.mktemp("good-run")
    inputs = make_inputs("good")
    return inputs, root, run_gates(inputs, work_dir=root / "work", cache_dir=root / "cache")


def test_good_candidate_passes_all_four_gates_and_leaves_nothing_running(
    good_run: tuple[GateInputs, Path, GateEvidence], samples: SampleModels
) -> None:
    inputs, root, evidence = good_run
    assert evidence.passed, evidence.failures()
    assert evidence.failures() == []
    assert list(evidence.gates) == ["evaluation", "latency", "memory", "drift"]
    assert not evidence.cached
    for gate in evidence.gates.values():
        assert gate.explanation and gate.report["passed"] is True and gate.thresholds
    assert evidence.gates["evaluation"].sample_sizes["rows"] == 5000
    assert evidence.gates["latency"].sample_sizes["succeeded"] == inputs.gates.latency.requests
    assert evidence.gates["drift"].sample_sizes == {
        "reference_rows": 5000,
        "current_rows": 5000,
        "features": 9,
        "tests": 9,
    }
    assert evidence.candidate.sha256 == samples.models["good"].sha256
    assert evidence.incumbent is not None and evidence.incumbent.sha256 == samples.models["incumbent"].sha256
    assert evidence.data.holdout_sha256 == samples.holdout_sha256
    assert evidence.data.drift_current.sha256 == file_sha256(inputs.drift.current)  # type: ignore[union-attr]
    assert GateEvidence.model_validate_json(evidence.model_dump_json()) == evidence
    # Servers were stopped and their run directory removed.
    assert _nothing_runs(root / "work")
    assert list((root / "work").glob("gates-*")) == []


def test_worse_candidate_on_a_shifted_window_is_blocked_on_both_and_the_verdict_is_cached(
    make_inputs: MakeInputs, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every gate runs: a release with two problems shows both, one line each."""
    evidence = run_gates(make_inputs("worse", shifted=True), work_dir=dirs[0], cache_dir=dirs[1])
    assert _failed(evidence) == {"evaluation", "drift"}, evidence.failures()
    evaluation, drift = evidence.failures()
    pattern = r"gate evaluation failed: roc_auc candidate - incumbent lower bound -0\.1\d+ < -0\.01 \(tolerance\)"
    assert re.match(pattern, evaluation), evaluation
    assert drift.startswith("gate drift failed: ") and "f0 (PSI" in drift and "region (PSI" in drift, drift
    assert evidence.gates["drift"].observed["max_psi"] > 1.0
    # Same inputs, same verdict: a blocked preview's up is answered from the cache as well.
    monkeypatch.setattr(gate_serving, "start_model_server", None)
    again = run_gates(make_inputs("worse", shifted=True), work_dir=dirs[0], cache_dir=dirs[1])
    assert again.cached and again.failures() == evidence.failures()


def test_slow_candidate_is_blocked_on_latency(make_inputs: MakeInputs, dirs: tuple[Path, Path]) -> None:
    # Latency and memory are the candidate's alone (the incumbent is stopped before the load): no incumbent
    # here, one server start less on a busy machine.
    evidence = run_gates(make_inputs("slow", incumbent=None), work_dir=dirs[0], cache_dir=dirs[1])
    assert _failed(evidence) == {"latency"}, evidence.failures()
    [line] = evidence.failures()
    pattern = r"gate latency failed: (p50 .*, )?p99 upper bound [\d.]+ ms > threshold 1000 ms \(by [\d.]+ ms\)"
    assert line.endswith(" on 300 requests"), line
    assert re.match(pattern, line), line
    assert _nothing_runs(dirs[0])


def test_memory_hungry_candidate_is_blocked_on_memory(make_inputs: MakeInputs, dirs: tuple[Path, Path]) -> None:
    evidence = run_gates(make_inputs("memory_hungry", incumbent=None), work_dir=dirs[0], cache_dir=dirs[1])
    assert _failed(evidence) == {"memory"}, evidence.failures()
    [line] = evidence.failures()
    assert re.match(r"gate memory failed: peak RSS [\d.]+ MiB > threshold 512 MiB \(by [\d.]+ MiB\)", line), line
    assert evidence.gates["memory"].observed["steady_mb"] > 512 + 100


def test_first_release_runs_the_absolute_gates(make_inputs: MakeInputs, dirs: tuple[Path, Path]) -> None:
    evidence = run_gates(make_inputs("good", incumbent=None), work_dir=dirs[0], cache_dir=dirs[1])
    assert evidence.passed, evidence.failures()
    assert evidence.incumbent is None
    evaluation = evidence.gates["evaluation"]
    assert evaluation.report["incumbent"] is None and evaluation.report["non_inferior"] is None
    assert evaluation.summary.startswith("roc_auc 0.81") and ">= floor 0.7" in evaluation.summary
    assert set(evidence.gates) == {"evaluation", "latency", "memory", "drift"}


def test_cache_hit_returns_the_same_evidence_without_serving(
    good_run: tuple[GateInputs, Path, GateEvidence], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, root, first = good_run

    def no_servers(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cache hit must not start a model server")

    monkeypatch.setattr(gate_serving, "start_model_server", no_servers)
    again = run_gates(inputs, work_dir=root / "work", cache_dir=root / "cache")
    assert again.cached
    assert again.model_copy(update={"cached": False}) == first
    # A change to anything the verdict depends on (here a threshold) is another key: it would serve again.
    changed = inputs.model_copy(update={"gates": inputs.gates.model_copy(update={"memory": MemoryGate(max_mb=600)})})
    with pytest.raises(AssertionError, match="must not start a model server"):
        run_gates(changed, work_dir=root / "work", cache_dir=root / "cache")


def _one_line_error(inputs: GateInputs, dirs: tuple[Path, Path]) -> str:
    with pytest.raises(GateInputError) as caught:
        run_gates(inputs, work_dir=dirs[0], cache_dir=dirs[1])
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_holdout_is_one_line(make_inputs: MakeInputs, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    message = _one_line_error(make_inputs("good", holdout=tmp_path / "gone.parquet"), dirs)
    assert "gone.parquet does not exist" in message and "mlrelease:data.holdout" in message


def test_holdout_digest_mismatch_is_one_line(make_inputs: MakeInputs, dirs: tuple[Path, Path]) -> None:
    message = _one_line_error(make_inputs("good", holdout_sha256="0" * 64), dirs)
    assert "but " + "0" * 64 + " was expected" in message and "holdout_sha256" in message


def test_artifact_digest_mismatch_is_one_line(
    make_inputs: MakeInputs, samples: SampleModels, dirs: tuple[Path, Path]
) -> None:
    inputs = make_inputs("good")
    tampered = inputs.candidate.model_copy(update={"sha256": samples.models["incumbent"].sha256})
    message = _one_line_error(inputs.model_copy(update={"candidate": tampered}), dirs)
    assert message.startswith("candidate credit-default v2: artifact ") and "was expected" in message


def test_missing_label_column_is_one_line(make_inputs: MakeInputs, dirs: tuple[Path, Path]) -> None:
    message = _one_line_error(make_inputs("good", label="defaulted"), dirs)
    assert "no label column 'defaulted'" in message and "mlrelease:data.label" in message


def test_wrong_feature_schema_is_one_line(
    make_inputs: MakeInputs, samples: SampleModels, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    holdout = tmp_path / "holdout.parquet"
    pd.read_parquet(samples.holdout).drop(columns=["f3"]).to_parquet(holdout, index=False)
    inputs = make_inputs("good", holdout=holdout, holdout_sha256=file_sha256(holdout), schema_path=samples.schema_path)
    message = _one_line_error(inputs, dirs)
    assert "lacks feature column(s) ['f3'] that the model expects" in message


def test_empty_inference_log_window_is_one_line(
    make_inputs: MakeInputs, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    inputs = make_inputs("good", drift=DriftLog(log_dir=tmp_path / "log", window_hours=24))
    message = _one_line_error(inputs, dirs)
    assert message.startswith("no rows in the inference log between ") and str(tmp_path / "log") in message


def test_model_server_failing_to_start_is_one_line_and_leaves_nothing_running(
    make_inputs: MakeInputs, samples: SampleModels, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(samples.models["good"].model_dir, broken)
    (broken / "model.joblib").write_bytes(b"not a pickle" * 100)
    inputs = make_inputs("good")
    candidate = inputs.candidate.model_copy(
        update={"model_dir": broken, "sha256": file_sha256(broken / "model.joblib")}
    )
    message = _one_line_error(inputs.model_copy(update={"candidate": candidate}), dirs)
    assert message.startswith("the candidate model server (credit-default v2) did not start: "), message
    assert _nothing_runs(dirs[0])


def test_inference_log_windows_are_the_last_hours_and_the_same_span_a_week_earlier(
    make_inputs: MakeInputs, samples: SampleModels, tmp_path: Path
) -> None:
    end = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    rows = pd.read_parquet(samples.holdout)[FEATURES]
    writer = InferenceLogWriter(tmp_path / "log", flush_rows=10_000)
    # Inside each window, just outside each window (before and after): only the inside rows count.
    stamps = {
        end - timedelta(hours=1): 40,
        end - timedelta(days=7, hours=1): 30,
        end + timedelta(minutes=1): 7,
        end - timedelta(days=7, hours=3): 5,
    }
    for ts, count in stamps.items():
        chunk = rows.iloc[:count]
        writer.append(
            ts=ts,
            request_id="r",
            version="v1",
            status=200,
            latency_ms=1.0,
            entity_key=None,
            columns={name: chunk[name].tolist() for name in FEATURES},
            rows=count,
            outputs=[0.5] * count,
        )
    writer.write(writer.take())
    prepared = prepare(make_inputs("good", drift=DriftLog(log_dir=tmp_path / "log", window_hours=2, end=end)))
    assert (prepared.data.drift_current.rows, prepared.data.drift_reference.rows) == (40, 30)
    assert prepared.data.drift_current.start == end - timedelta(hours=2)
    assert prepared.data.drift_reference.end == end - timedelta(days=7)
    assert list(prepared.drift_current.columns) == FEATURES


def test_the_gate_runner_imports_nothing_from_pulumi() -> None:
    """It runs inside a dynamic provider's check and from plain scripts alike."""
    code = "import sys, components.gates; sys.exit(any(m.split('.')[0] == 'pulumi' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], check=False).returncode == 0
