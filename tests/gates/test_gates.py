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

import numpy as np
import pandas as pd
import pytest

from components import gate_serving, gates
from components.gate_inputs import DriftLog, GateInputs, prepare
from components.gates import GateEvidence, GateInputError, run_gates
from components.spec import LatencyGate, MemoryGate
from serving import supervisor
from serving.artifacts import file_sha256
from serving.inference_log import InferenceLogWriter
from serving.sample_models import FEATURES, SampleModels
from tests.full_disk import full_tmpfs
from tests.gates.conftest import TEST_GATES
from verification.performance import compare_latency, latency_gate, latency_ratio_gate

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
    latency = evidence.gates["latency"]
    requests = inputs.gates.latency.requests
    assert latency.sample_sizes["succeeded"] == requests
    # The incumbent was measured in the same run, interleaved: its figures and the ratios are evidence too.
    assert latency.sample_sizes["incumbent_succeeded"] == latency.sample_sizes["pairs"] == requests
    for key in ("p50_ms", "p99_upper_ms", "incumbent_p50_ms", "incumbent_p99_ms", "incumbent_p99_upper_ms"):
        assert 0 < latency.observed[key] < 1000, key  # type: ignore[operator]
    for label in ("p50", "p99"):
        ratio, upper = latency.observed[f"{label}_ratio"], latency.observed[f"{label}_ratio_upper"]
        assert ratio is not None and upper is not None and 0 < ratio <= upper <= 10.0
    assert latency.observed["p99_ratio"] == pytest.approx(
        latency.report["ratio"]["ratios"]["p99"]["candidate"] / latency.report["ratio"]["ratios"]["p99"]["incumbent"]
    )
    assert f"on {requests} interleaved request pairs" in latency.summary and "incumbent p99 " in latency.summary
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
    # A first release: the absolute thresholds alone, and the evidence says there was nothing to compare with.
    evidence = run_gates(make_inputs("slow", incumbent=None), work_dir=dirs[0], cache_dir=dirs[1])
    assert _failed(evidence) == {"latency"}, evidence.failures()
    [line] = evidence.failures()
    pattern = r"gate latency failed: (p50 .*, )?p99 upper bound [\d.]+ ms > threshold 1000 ms \(by [\d.]+ ms\)"
    assert line.endswith(" on 300 requests; no incumbent to compare with (first release)"), line
    assert re.match(pattern, line), line
    latency = evidence.gates["latency"]
    assert latency.observed["incumbent_p99_upper_ms"] is None and latency.observed["p99_ratio_upper"] is None
    assert "pairs" not in latency.sample_sizes
    assert _nothing_runs(dirs[0])


def test_slow_candidate_against_the_incumbent_fails_on_the_ratio(
    make_inputs: MakeInputs, dirs: tuple[Path, Path]
) -> None:
    """Absolute thresholds it meets; the incumbent, measured in the same run, is several times faster."""
    gates = TEST_GATES.model_copy(
        update={
            "latency": LatencyGate(
                p99_ms=10_000.0, p50_ms=5_000.0, rate_rps=50.0, requests=300, warmup_requests=30, max_ratio=1.25
            )
        }
    )
    evidence = run_gates(make_inputs("slow", gates=gates), work_dir=dirs[0], cache_dir=dirs[1])
    assert _failed(evidence) == {"latency"}, evidence.failures()
    latency = evidence.gates["latency"]
    assert latency.report["candidate"]["passed"] and not latency.report["ratio"]["passed"]
    [line] = evidence.failures()
    pattern = (
        r"gate latency failed: p50 ratio candidate/incumbent upper bound ([\d.]+) > max ratio 1\.25 \(by [\d.]+\)"
        r" \(candidate p50 ([\d.]+) ms, incumbent p50 ([\d.]+) ms\)"
    )
    match = re.match(pattern, line)
    assert match, line
    assert line.endswith(" on 300 interleaved request pairs"), line
    assert float(match[2]) > 2 * float(match[3])  # both figures, from the same run
    assert latency.observed["p50_ms"] == pytest.approx(float(match[2]), abs=0.05)
    assert latency.observed["incumbent_p50_ms"] == pytest.approx(float(match[3]), abs=0.05)
    assert latency.observed["p50_ratio_upper"] == pytest.approx(float(match[1]), abs=0.005)
    assert latency.sample_sizes["pairs"] == latency.sample_sizes["incumbent_succeeded"] == 300
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
    latency = evidence.gates["latency"]
    assert latency.summary.endswith("; no incumbent to compare with (first release)"), latency.summary
    assert "absolute thresholds only" in latency.explanation and "ratio" not in latency.report


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


def test_summary_says_when_the_runner_is_too_slow_and_still_blocks() -> None:
    """The wording of a threshold both versions miss in the same run (pure: synthetic latencies, no servers)."""
    rng = np.random.default_rng(5)
    shared = rng.exponential(40.0, 1000)  # a busy runner: both versions slowed alike
    candidate, incumbent = 5 + shared + rng.exponential(2.0, 1000), 5 + shared + rng.exponential(2.0, 1000)
    limits = {"p99_max_ms": 40.0, "p50_max_ms": 500.0}
    ratio = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    report = compare_latency(latency_gate(candidate, **limits), latency_gate(incumbent, **limits), ratio)
    assert not report.passed
    summary = gates._compared_summary(report)
    bounds = (
        report.candidate.quantiles["p99"].upper,
        report.incumbent.quantiles["p99"].upper,
        ratio.ratios["p99"].upper,
    )
    assert summary == (
        f"p99 upper bound {bounds[0]:.1f} ms > threshold 40 ms (by {bounds[0] - 40:.1f} ms) on 1000 requests;"
        f" the incumbent's p99 upper bound in the same run is {bounds[1]:.1f} ms, also over: this runner is too"
        f" slow for the threshold, and the candidate is no slower than the incumbent (p99 ratio upper bound"
        f" {bounds[2]:.2f} <= 1.25)"
    )
    # A slower candidate on the same slow runner: the ratio is named as well, with both versions' figures.
    slower = latency_ratio_gate(candidate * 1.6, incumbent, max_ratio=1.25)
    report = compare_latency(latency_gate(candidate * 1.6, **limits), latency_gate(incumbent, **limits), slower)
    summary = gates._compared_summary(report)
    assert "also over: this runner is too slow for the threshold, and the candidate is slower than the incumbent" in (
        summary
    )
    assert re.search(r"; p50 ratio candidate/incumbent upper bound [\d.]+ > max ratio 1\.25 \(by [\d.]+\)", summary)
    assert summary.endswith(" on 1000 interleaved request pairs"), summary


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


def test_a_full_inference_log_disk_is_refused_not_read_as_a_complete_window(
    make_inputs: Callable[..., GateInputs], tmp_path: Path
) -> None:
    with full_tmpfs(tmp_path / "full") as full, pytest.raises(GateInputError) as caught:
        prepare(make_inputs("good", drift=DriftLog(log_dir=full / "log", window_hours=2)))
    message = str(caught.value)
    assert f"the inference log's disk at {tmp_path / 'full' / 'log'} is full" in message
    assert "mlrelease_log_dropped_rows_total" in message and "free space there" in message and "\n" not in message


def test_the_gate_runner_imports_nothing_from_pulumi() -> None:
    """It runs inside a dynamic provider's check and from plain scripts alike."""
    code = "import sys, components.gates; sys.exit(any(m.split('.')[0] == 'pulumi' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], check=False).returncode == 0
