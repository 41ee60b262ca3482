"""Judge: Kayenta's Mann-Whitney classification, R's wilcox.test interval, two-proportion test, score."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verification import VerificationError
from verification.judge import (
    JudgeScore,
    MannWhitneyResult,
    kth_pairwise_difference,
    mann_whitney,
    score,
    two_proportion,
    wilcoxon_shift_interval,
)


def _r_wdiff(x: np.ndarray, y: np.ndarray, d: float, zq: float) -> float:
    """R's wilcox.test (exact=FALSE, correct=TRUE, two-sided) interval function, transcribed as maths."""
    n, m = len(x), len(y)
    ranks = stats.rankdata(np.concatenate((x - d, y)))
    _, ties = np.unique(ranks, return_counts=True)
    dz = ranks[:n].sum() - n * (n + 1) / 2 - n * m / 2
    sigma = np.sqrt(n * m / 12 * ((n + m + 1) - np.sum(ties**3 - ties) / ((n + m) * (n + m - 1))))
    return float((dz - np.sign(dz) * 0.5) / sigma - zq)


def _r_root(x: np.ndarray, y: np.ndarray, zq: float) -> float:
    lo, hi = x.min() - y.max(), x.max() - y.min()
    if _r_wdiff(x, y, lo, zq) <= 0:
        return float(lo)
    if _r_wdiff(x, y, hi, zq) >= 0:
        return float(hi)
    for _ in range(200):  # bisection converges onto the jump of the step function
        mid = (lo + hi) / 2
        if _r_wdiff(x, y, mid, zq) > 0:
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2)


def test_interval_matches_kayentas_published_values() -> None:
    # Kayenta's MannWhitney suite: control 1..4, experiment 10..40 -> interval (6, 39), estimate 22.5
    canary, baseline = np.array([10.0, 20, 30, 40]), np.array([1.0, 2, 3, 4])
    lower, upper, estimate = wilcoxon_shift_interval(canary, baseline, 0.95)
    assert (lower, upper, estimate) == (6.0, 39.0, 22.5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=2, max_size=25),
    st.lists(st.integers(0, 30), min_size=2, max_size=25),
    st.sampled_from([0.9, 0.95, 0.98]),
)
def test_interval_matches_r_root_finding(a: list[int], b: list[int], confidence: float) -> None:
    x, y = np.array(a, dtype=float) / 3, np.array(b, dtype=float) / 3
    if np.unique(np.concatenate((x, y))).size == 1:
        return
    lower, upper, estimate = wilcoxon_shift_interval(x, y, confidence)
    z = stats.norm.ppf(0.5 + confidence / 2)
    assert lower == pytest.approx(_r_root(x, y, z), abs=1e-9)
    assert upper == pytest.approx(_r_root(x, y, -z), abs=1e-9)
    eps = 1e-9
    assert _r_wdiff(x, y, estimate - eps, 0) >= 0 >= _r_wdiff(x, y, estimate + eps, 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=1, max_size=40),
    st.lists(st.integers(-20, 20), min_size=1, max_size=40),
    st.data(),
)
def test_kth_pairwise_difference_matches_brute_force(a: list[int], b: list[int], data: st.DataObject) -> None:
    x, y = np.sort(np.array(a, dtype=float) / 7), np.sort(np.array(b, dtype=float) / 7)
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    k = data.draw(st.integers(1, diffs.size))
    assert kth_pairwise_difference(x, y, k) == diffs[k - 1]


def test_kth_pairwise_difference_on_large_inputs_uses_selection() -> None:
    rng = np.random.default_rng(0)
    x, y = np.sort(rng.normal(size=1500)), np.sort(rng.normal(size=1200))
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    for k in (1, 17, 900_000, 1_799_999, diffs.size):
        assert kth_pairwise_difference(x, y, k) == diffs[k - 1]
    with pytest.raises(VerificationError):
        kth_pairwise_difference(x, y, 0)


def test_spinnaker_6278_seven_slow_of_ten_passes_under_kayentas_rule() -> None:
    result = mann_whitney([1.0] * 10, [100.0] * 7 + [1.0] * 3)
    assert result.classification == "Pass"
    assert (result.ci_lower, result.ci_upper, result.estimate) == (0.0, 99.0, 99.0)
    assert result.inconclusive  # the blind spot is flagged, not hidden
    assert "inconclusive" in result.explain()


def test_spinnaker_6278_eight_slow_of_ten_is_high() -> None:
    result = mann_whitney([1.0] * 10, [100.0] * 8 + [1.0] * 2)
    assert result.classification == "High"
    assert not result.passed and result.ci_lower == 99.0


def test_kayenta_classifier_behaviours() -> None:
    kw = {"confidence": 0.95, "tolerance": 0.10}
    assert mann_whitney([1.0, 1.0], [1.0, 1.0, 1.0], direction="decrease", **kw).classification == "Pass"
    assert mann_whitney([5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5], **kw).classification == "Pass"
    assert mann_whitney([1.0] * 5, [0.0, 1, 1, 1, 1], direction="decrease", **kw).classification == "Pass"
    assert mann_whitney([1.0] * 5, [1.0, 1, 1, 1, 10], **kw).classification == "Pass"
    assert mann_whitney([1.0] * 5, [10.0] * 5, **kw).classification == "High"
    assert mann_whitney([0.0] * 5, [10.0] * 5, **kw).classification == "High"
    assert mann_whitney([1.0, 2, 3, 4, 5], [], **kw).classification == "Nodata"
    zero_mean = mann_whitney([0.0] * 5, [54.9, 54.5, 55.1, 55.6, 57.4], allowed_increase=1.2, **kw)
    assert zero_mean.classification == "High" and zero_mean.mean_ratio is None
    low = mann_whitney([54.9, 54.5, 55.1, 55.6, 57.4], [0.0] * 5, allowed_decrease=0.8, **kw)
    assert low.classification == "Low"


def test_mean_ratio_effect_size_gates_high() -> None:
    baseline, canary = [1.0, 2.2, 1.1, 2.5, 3.0], [20.0, 22, 21, 25, 30]
    kw = {"confidence": 0.95, "tolerance": 0.10}
    assert mann_whitney(baseline, canary, allowed_increase=5.0, **kw).classification == "High"
    assert mann_whitney(baseline, canary, allowed_increase=13.0, **kw).classification == "Pass"


def test_direction_restricts_classification() -> None:
    rng = np.random.default_rng(1)
    base, slow = rng.normal(10, 1, size=200), rng.normal(20, 1, size=200)
    assert mann_whitney(base, slow).classification == "High"
    assert mann_whitney(base, slow, direction="decrease").classification == "Pass"
    assert mann_whitney(slow, base).classification == "Low"
    assert mann_whitney(slow, base, direction="increase").classification == "Pass"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_classification_is_monotone_in_shift(seed: int) -> None:
    base = np.random.default_rng(seed).lognormal(size=60)
    labels = [mann_whitney(base, base + s).classification for s in np.linspace(0.0, 4.0, 12)]
    highs = [label == "High" for label in labels]
    assert labels[0] == "Pass" and highs[-1]
    assert highs == sorted(highs)
    assert "Low" not in labels


def test_nan_values_are_dropped_and_counted() -> None:
    result = mann_whitney([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])
    assert result.dropped_nan == 1 and result.n_baseline == 2
    with pytest.raises(VerificationError, match="infinite"):
        mann_whitney([1.0, np.inf], [1.0])
    with pytest.raises(VerificationError, match="direction"):
        mann_whitney([1.0], [1.0], direction="up")  # type: ignore[arg-type]


def test_result_serialises_and_explains() -> None:
    result = mann_whitney([1.0, 2, 3, 4], [10.0, 20, 30, 40], confidence=0.95)
    assert MannWhitneyResult.model_validate_json(result.model_dump_json()) == result
    text = result.explain()
    for fragment in ("22.5", "[6, 39]", "High", "n=4"):
        assert fragment in text


def test_two_proportion_sparse_counts_cannot_pass() -> None:
    result = two_proportion(0, 50, 0, 50, max_increase=0.01)  # no errors at all, but only 50 requests
    assert result.classification == "High" and not result.conclusive
    assert result.samples_needed is not None and result.samples_needed > 50
    assert "too wide" in result.explain()
    worse = two_proportion(0, 50, 2, 50, max_increase=0.01)
    assert worse.classification == "High" and "already exceeds" in worse.explain()


def test_two_proportion_passes_with_enough_evidence_and_fails_a_clear_regression() -> None:
    ok = two_proportion(100, 100_000, 105, 100_000, max_increase=0.001)
    assert ok.classification == "Pass" and ok.passed
    bad = two_proportion(100, 100_000, 400, 100_000, max_increase=0.001)
    assert bad.classification == "High" and bad.conclusive
    assert bad.ci_lower is not None and bad.ci_lower > 0.001


def test_two_proportion_newcombe_interval_by_hand() -> None:
    # Newcombe (1998) example: 56/70 vs 48/80 -> difference 0.2 with interval (0.0524, 0.3339)
    result = two_proportion(48, 80, 56, 70, max_increase=0.5, confidence=0.95)
    assert result.difference == pytest.approx(0.2)
    assert result.ci_lower == pytest.approx(0.0524, abs=1e-4)
    assert result.ci_upper == pytest.approx(0.3339, abs=1e-4)


def test_two_proportion_bad_input_and_no_data() -> None:
    assert two_proportion(0, 0, 0, 10).classification == "Nodata"
    with pytest.raises(VerificationError, match="exceed"):
        two_proportion(5, 4, 0, 10)
    with pytest.raises(VerificationError, match="whole number"):
        two_proportion(-1, 4, 0, 10)


def test_score_weights_thresholds_and_critical_metrics() -> None:
    passing = mann_whitney([1.0, 2, 3], [1.0, 2, 3], metric="latency")
    high = mann_whitney([1.0] * 5, [10.0] * 5, metric="cpu", confidence=0.95, tolerance=0.1)
    nodata = mann_whitney([], [1.0], metric="gc")
    weights = {"latency": 3.0, "cpu": 1.0}
    result = score([passing, high, nodata], weights, pass_threshold=90, marginal_threshold=70)
    assert isinstance(result, JudgeScore)
    assert result.score == pytest.approx(75.0)
    assert result.classification == "Marginal" and not result.passed
    critical = score([passing, high], critical=["cpu"], pass_threshold=0, marginal_threshold=0)
    assert critical.classification == "Fail" and critical.failed_critical == ["cpu"]
    assert score([nodata]).classification == "Fail"
    assert score([passing]).classification == "Pass"
    with pytest.raises(VerificationError, match="not judged"):
        score([passing], {"nope": 1.0})
    with pytest.raises(VerificationError, match="repeat"):
        score([passing, passing])
