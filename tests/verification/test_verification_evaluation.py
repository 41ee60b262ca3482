"""Evaluation: metrics against scikit-learn, paired bootstrap, non-inferiority and floors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from verification import VerificationError
from verification.evaluation import (
    EvaluationReport,
    brier,
    evaluate_absolute,
    evaluate_non_inferiority,
    gini,
    ks_statistic,
    log_loss,
    mae,
    metric_value,
    precision_recall_f1,
    rmse,
    roc_auc,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.uniform(size=n) < 0.25).astype(float)
    incumbent = np.clip(0.25 + 0.35 * (y - 0.25) + rng.normal(0, 0.2, size=n), 0.001, 0.999)
    candidate = np.clip(incumbent + rng.normal(0, 0.01, size=n), 0.001, 0.999)
    return y, incumbent, np.clip(np.round(candidate, 2), 0.01, 0.99)  # rounding creates ties


def test_metrics_match_scikit_learn(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, _, s = data
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert gini(y, s) == pytest.approx(2 * skm.roc_auc_score(y, s) - 1)
    fpr, tpr, _ = skm.roc_curve(y, s)
    assert ks_statistic(y, s) == pytest.approx(np.max(tpr - fpr))
    assert log_loss(y, s) == pytest.approx(skm.log_loss(y, s))
    assert brier(y, s) == pytest.approx(skm.brier_score_loss(y, s))
    p, r, f = precision_recall_f1(y, s, threshold=0.3)
    pred = s >= 0.3
    expected = (skm.precision_score(y, pred), skm.recall_score(y, pred), skm.f1_score(y, pred))
    assert (p, r, f) == pytest.approx(expected)
    assert rmse(y, s) == pytest.approx(np.sqrt(skm.mean_squared_error(y, s)))
    assert mae(y, s) == pytest.approx(skm.mean_absolute_error(y, s))


def test_regression_metrics_accept_any_real_targets() -> None:
    y, pred = np.array([1.5, -2.0, 3.0]), np.array([1.0, -2.5, 4.0])
    assert rmse(y, pred) == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
    assert mae(y, pred) == pytest.approx(np.mean(np.abs(y - pred)))


def test_bootstrap_replicate_equals_metric_on_the_resampled_rows(data: tuple[np.ndarray, ...]) -> None:
    from verification.evaluation import _prepare

    y, _, s = data
    rng = np.random.default_rng(1)
    idx = rng.integers(0, y.shape[0], size=y.shape[0])
    for metric in ("roc_auc", "gini", "ks", "log_loss", "brier", "precision", "recall", "f1", "rmse", "mae"):
        expected = metric_value(y[idx], s[idx], metric)  # type: ignore[arg-type]
        assert _prepare(metric, y, s, 0.5).evaluate(idx) == pytest.approx(expected)


def test_equal_models_are_non_inferior(data: tuple[np.ndarray, ...]) -> None:
    y, inc, cand = data
    report = evaluate_non_inferiority(y, inc, cand, tolerance=0.01, floor=0.6, n_boot=300)
    assert isinstance(report, EvaluationReport)
    assert report.passed and report.non_inferior and report.above_floor
    assert report.difference_interval is not None and report.difference_interval[0] >= -0.01
    assert "PASS" in report.explain() and "lower end" in report.explain()


def test_worse_candidate_fails_non_inferiority(data: tuple[np.ndarray, ...]) -> None:
    y, inc, _ = data
    rng = np.random.default_rng(2)
    worse = np.clip(inc + rng.normal(0, 0.25, size=inc.shape[0]), 0.001, 0.999)
    report = evaluate_non_inferiority(y, inc, worse, tolerance=0.01, n_boot=300)
    assert not report.passed and report.non_inferior is False
    assert "FAIL" in report.explain()


def test_direction_aware_for_lower_is_better_metrics(data: tuple[np.ndarray, ...]) -> None:
    y, inc, cand = data
    ok = evaluate_non_inferiority(y, inc, cand, metric="log_loss", tolerance=0.01, n_boot=300)
    assert ok.passed and not ok.higher_is_better
    worse = np.clip(inc * 0.5 + 0.4, 0.001, 0.999)
    bad = evaluate_non_inferiority(y, inc, worse, metric="log_loss", tolerance=0.01, n_boot=300)
    assert not bad.passed
    assert bad.difference is not None and bad.difference > 0  # higher log loss is worse


def test_floor_blocks_weak_first_release(data: tuple[np.ndarray, ...]) -> None:
    y, _, cand = data
    assert evaluate_absolute(y, cand, floor=0.6, n_boot=200).passed
    weak = evaluate_absolute(y, cand, floor=0.99, n_boot=200)
    assert not weak.passed and not weak.above_floor and weak.incumbent is None
    assert weak.check == "evaluation.absolute"


def test_too_few_rows_fails_with_rows_needed() -> None:
    y = np.array([1.0] * 5 + [0.0] * 45)
    s = np.linspace(0.01, 0.99, 50)
    report = evaluate_non_inferiority(y, s, s, n_boot=100)
    assert not report.passed and not report.enough_data
    assert report.rows_needed == 300
    assert "too few rows" in report.explain()


def test_paired_bootstrap_is_reproducible(data: tuple[np.ndarray, ...]) -> None:
    y, inc, cand = data
    a = evaluate_non_inferiority(y, inc, cand, n_boot=200, seed=7)
    b = evaluate_non_inferiority(y, inc, cand, n_boot=200, seed=7)
    assert a == b
    assert EvaluationReport.model_validate_json(a.model_dump_json()) == a


def test_bad_inputs_raise() -> None:
    with pytest.raises(VerificationError, match="labels 0/1"):
        roc_auc(np.array([0.0, 2.0]), np.array([0.1, 0.2]))
    with pytest.raises(VerificationError, match="probabilities"):
        roc_auc(np.array([0.0, 1.0]), np.array([0.1, 1.2]))
    with pytest.raises(VerificationError, match="lengths differ"):
        evaluate_non_inferiority(np.array([0.0, 1.0]), np.array([0.1, 0.2]), np.array([0.1]))
    with pytest.raises(VerificationError, match="unknown"):
        metric_value(np.array([0.0, 1.0]), np.array([0.1, 0.2]), "accuracy")  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="n_boot"):
        evaluate_absolute(np.array([0.0, 1.0]), np.array([0.1, 0.2]), floor=0.5, n_boot=10)
