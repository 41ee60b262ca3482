"""Paired prediction comparison and the sequential comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verification import VerificationError
from verification.comparison import (
    ComparisonReport,
    SequentialComparison,
    average_ranks,
    compare_predictions,
    fixed_horizon_pairs,
    spearman,
)
from verification.intervals import wilson_interval


def test_wilson_interval_by_hand() -> None:
    # 10 successes of 100 at 95%: the textbook Wilson interval (0.0552, 0.1744)
    lo, hi = wilson_interval(10, 100, 0.95)
    assert lo == pytest.approx(0.0552, abs=1e-4)
    assert hi == pytest.approx(0.1744, abs=1e-4)
    z = stats.norm.ppf(0.975)
    assert wilson_interval(0, 50, 0.95) == (0.0, pytest.approx(z * z / (50 + z * z)))


def test_flip_table_and_rates_by_hand() -> None:
    inc = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.4])
    cand = np.array([0.9, 0.3, 0.7, 0.1, 0.6, 0.4])
    report = compare_predictions(inc, cand, threshold=0.5)
    flips = report.flips
    assert (flips.both_positive, flips.both_negative) == (2, 2)
    assert (flips.positive_to_negative, flips.negative_to_positive) == (1, 1)
    assert report.disagreement_rate == pytest.approx(2 / 6)
    assert report.bias == pytest.approx(np.mean(cand - inc))
    assert report.abs_diff_max == pytest.approx(0.5)
    assert not report.passed


def test_identical_models_pass_with_enough_pairs() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=5000)
    report = compare_predictions(scores, scores)
    assert report.passed and report.disagreement_rate == 0.0 and report.spearman == pytest.approx(1.0)
    assert "PASS" in report.explain()


def test_too_few_pairs_fails_with_pairs_needed() -> None:
    scores = np.linspace(0, 1, 100)
    report = compare_predictions(scores, scores)
    assert not report.passed
    assert report.pairs_needed > 100
    assert f"needs >= {report.pairs_needed} pairs" in report.explain()


def test_disagreement_bias_and_tail_each_fail_on_their_own() -> None:
    rng = np.random.default_rng(1)
    inc = rng.uniform(size=20_000)
    flipped = inc.copy()
    flipped[:600] = 1 - flipped[:600]  # ~3% decisions flipped
    assert not compare_predictions(inc, flipped).criteria[0].passed
    biased = np.clip(inc + 0.02, 0, 1)
    report = compare_predictions(inc, biased, threshold=2.0)  # no decision flips at this threshold
    assert [c.passed for c in report.criteria] == [True, True, False]
    tail = inc.copy()
    tail[:400] += 0.2
    report = compare_predictions(inc, tail, threshold=2.0, max_bias=1.0)
    assert [c.passed for c in report.criteria] == [True, False, True]


def test_report_serialises() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(size=1000)
    report = compare_predictions(a, np.clip(a + rng.normal(0, 0.001, size=1000), 0, 1))
    assert ComparisonReport.model_validate_json(report.model_dump_json()) == report


def test_bad_inputs_raise() -> None:
    with pytest.raises(VerificationError, match="lengths differ"):
        compare_predictions(np.ones(3), np.ones(4))
    with pytest.raises(VerificationError, match="NaN"):
        compare_predictions(np.array([0.1, np.nan]), np.array([0.1, 0.2]))
    with pytest.raises(VerificationError, match="empty"):
        compare_predictions(np.array([]), np.array([]))
    with pytest.raises(VerificationError, match="expected numbers"):
        compare_predictions(np.array(["a"]), np.array(["b"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=100))
def test_average_ranks_match_scipy(values: list[int]) -> None:
    x = np.array(values, dtype=float)
    np.testing.assert_allclose(average_ranks(x), stats.rankdata(x))


def test_spearman_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(size=3000), 1)
    b = np.round(a + rng.normal(size=3000), 1)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman(np.ones(10), np.arange(10.0)) is None


def _stream(
    rate: float, tolerance: float, seed: int, batch: int = 200, max_pairs: int | None = None
) -> tuple[str, int]:
    rng = np.random.default_rng(seed)
    seq = SequentialComparison(max_disagreement=tolerance, max_pairs=max_pairs)
    while True:
        inc = rng.uniform(size=batch)
        cand = np.where(rng.uniform(size=batch) < rate, 1 - inc, inc)
        decision = seq.update(inc, cand)
        if decision.decision != "continue":
            return decision.decision, decision.pairs


def test_sequential_fails_a_clearly_bad_candidate_early() -> None:
    tolerance = 0.01
    fixed = fixed_horizon_pairs(tolerance, 2 * tolerance, 0.05, 0.05)
    outcomes = [_stream(0.05, tolerance, seed) for seed in range(20)]
    assert all(d == "fail" for d, _ in outcomes)
    assert np.mean([p for _, p in outcomes]) < fixed / 2


def test_sequential_passes_a_good_candidate() -> None:
    decision, pairs = _stream(0.0, 0.01, seed=4)
    assert decision == "pass" and pairs <= 1000


def test_sequential_false_fail_rate_is_bounded_at_the_tolerance() -> None:
    outcomes = [_stream(0.01, 0.01, seed, batch=500, max_pairs=20_000) for seed in range(60)]
    false_fails = sum(d == "fail" and p < 20_000 for d, p in outcomes)
    assert false_fails / len(outcomes) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / len(outcomes))


def test_sequential_decision_is_sticky_and_counts_pairs() -> None:
    seq = SequentialComparison(max_disagreement=0.01)
    first = seq.update(np.zeros(500), np.ones(500))
    assert first.decision == "fail" and first.pairs == 500 and first.disagreements == 500
    assert seq.update(np.zeros(10), np.zeros(10)) == first
    assert "FAIL" in first.explain() and "500 pairs" in first.explain()


def test_sequential_max_pairs_never_passes_inconclusive() -> None:
    seq = SequentialComparison(max_disagreement=0.01, max_pairs=100)
    decision = seq.update(np.zeros(100), np.zeros(100))
    assert decision.decision == "fail" and "inconclusive" in decision.explain()


def test_sequential_counts_large_score_differences_as_disagreement() -> None:
    seq = SequentialComparison(max_disagreement=0.01, max_abs_diff=0.1, threshold=2.0)
    decision = seq.update(np.zeros(300), np.full(300, 0.5))
    assert decision.disagreements == 300


def test_sequential_rejects_bad_configuration() -> None:
    with pytest.raises(VerificationError):
        SequentialComparison(max_disagreement=1.5)
    with pytest.raises(VerificationError):
        SequentialComparison(fail_alternatives=(0.5,))
    with pytest.raises(VerificationError):
        SequentialComparison().update(np.ones(2), np.ones(3))


def test_fixed_horizon_pairs_meets_both_error_rates() -> None:
    n = fixed_horizon_pairs(0.01, 0.02, 0.05, 0.05)
    c = int(stats.binom.isf(0.05, n, 0.01)) + 1
    assert stats.binom.sf(c - 1, n, 0.01) <= 0.05
    assert stats.binom.sf(c - 1, n, 0.02) >= 0.95
    assert 1000 < n < 3000
