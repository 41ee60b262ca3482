"""Latency and memory gates: order-statistic bounds, sample-size requirements, the candidate/incumbent ratio
bound, byte limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verification import VerificationError
from verification.intervals import lower_bound_rank, samples_for_upper_bound, upper_bound_rank
from verification.performance import (
    LatencyRatioReport,
    LatencyReport,
    compare_latency,
    latency_gate,
    latency_ratio_gate,
    memory_gate,
    quantile_bounds,
)


def test_samples_needed_for_a_p99_bound() -> None:
    # the maximum of n samples bounds p99 at 95% once 1 - 0.99**n >= 0.95, i.e. n >= 299
    assert samples_for_upper_bound(0.99, 0.95) == 299
    assert upper_bound_rank(298, 0.99, 0.95) is None
    assert upper_bound_rank(299, 0.99, 0.95) == 299
    assert samples_for_upper_bound(0.5, 0.95) == 5


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.sampled_from([0.5, 0.9, 0.95, 0.99]), st.sampled_from([0.9, 0.95, 0.99]))
def test_bound_ranks_are_the_tightest_with_coverage(n: int, q: float, confidence: float) -> None:
    up = upper_bound_rank(n, q, confidence)
    if up is not None:
        assert stats.binom.cdf(up - 1, n, q) >= confidence
        assert up == 1 or stats.binom.cdf(up - 2, n, q) < confidence
    lo = lower_bound_rank(n, q, confidence)
    if lo is not None:
        assert stats.binom.sf(lo - 1, n, q) >= confidence
        assert lo == n or stats.binom.sf(lo, n, q) < confidence


def test_upper_bound_covers_the_true_quantile() -> None:
    rng = np.random.default_rng(0)
    n, reps, q = 400, 2000, 0.99
    k = upper_bound_rank(n, q, 0.95)
    assert k is not None
    draws = np.sort(rng.exponential(size=(reps, n)), axis=1)[:, k - 1]
    coverage = np.mean(draws >= stats.expon.ppf(q))
    assert coverage >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / reps)


def test_quantile_bounds_report() -> None:
    samples = np.arange(1, 1001, dtype=float)
    qb = quantile_bounds(samples, 0.5, 0.95)
    assert qb.estimate == 500.0
    assert qb.lower is not None and qb.upper is not None and qb.lower < 500 < qb.upper
    assert qb.passed and "p50" in qb.explain()


def test_latency_gate_passes_fast_service() -> None:
    rng = np.random.default_rng(1)
    report = latency_gate(rng.exponential(10, size=5000), p99_max_ms=80, p50_max_ms=10)
    assert isinstance(report, LatencyReport)
    assert report.passed
    assert report.quantiles["p99"].upper is not None and report.quantiles["p99"].upper <= 80
    assert "PASS" in report.explain()


def test_latency_gate_fails_on_threshold_with_margin_in_explanation() -> None:
    rng = np.random.default_rng(2)
    report = latency_gate(rng.exponential(10, size=5000), p99_max_ms=30)
    assert not report.passed
    assert "misses by" in report.explain()


def test_latency_gate_fails_with_too_few_samples_however_fast() -> None:
    report = latency_gate(np.full(150, 1.0), p99_max_ms=1000)
    assert not report.passed
    assert report.n_required == 299
    assert "needs >= 299 samples, have 150" in report.explain()


@pytest.mark.parametrize(
    ("samples", "message"),
    [([], "empty"), ([1.0, np.nan], "NaN"), ([1.0, -2.0], "negative"), (np.ones((2, 2)), "1-D")],
)
def test_latency_gate_bad_input(samples: object, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        latency_gate(samples, p99_max_ms=10)


def test_memory_gate() -> None:
    mib = 1024 * 1024
    ok = memory_gate([100 * mib, 300 * mib], 200 * mib, max_bytes=400 * mib)
    assert ok.passed and ok.peak_rss_bytes == 300 * mib
    over = memory_gate(500 * mib, 200 * mib, max_bytes=400 * mib)
    assert not over.passed and "misses by 100" in over.explain()
    steady = memory_gate(300 * mib, 250 * mib, max_bytes=400 * mib, max_steady_bytes=200 * mib)
    assert not steady.passed
    with pytest.raises(VerificationError, match="exceeds peak"):
        memory_gate(100, 200, max_bytes=1000)
    with pytest.raises(VerificationError, match="no memory samples"):
        memory_gate([], 1, max_bytes=1000)


def _interleaved(n: int, slowdown: float = 1.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Pairs as a busy runner gives them: autocorrelated machine noise both versions share, plus their own."""
    rng = np.random.default_rng(seed)
    shared = np.zeros(n)
    kicks = rng.exponential(1.0, n)
    for k in range(1, n):
        shared[k] = 0.8 * shared[k - 1] + 0.5 * kicks[k]
    return slowdown * rng.lognormal(1.0, 0.4, n) + shared, rng.lognormal(1.0, 0.4, n) + shared


def test_latency_ratio_gate_fails_a_clearly_slower_candidate() -> None:
    candidate, incumbent = _interleaved(1000, slowdown=1.8)
    report = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    assert isinstance(report, LatencyRatioReport)
    assert not report.passed and report.n_pairs == 1000
    for label in ("p50", "p99"):
        ratio = report.ratios[label]
        assert ratio.estimate is not None and ratio.upper is not None and ratio.upper >= ratio.estimate
        assert ratio.estimate == pytest.approx(ratio.candidate / ratio.incumbent)  # type: ignore[operator]
    assert report.ratios["p50"].upper > 1.25  # type: ignore[operator]
    assert "p50 ratio candidate/incumbent" in report.explain() and "misses by" in report.explain()


def test_latency_ratio_gate_passes_equal_versions() -> None:
    candidate, incumbent = _interleaved(1000)
    report = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    assert report.passed, report.explain()
    assert all(r.upper is not None and 1.0 < r.upper <= 1.25 for r in report.ratios.values())
    # Identical latencies: every resample's ratio is 1, so is the bound.
    same = latency_ratio_gate(candidate, candidate, max_ratio=1.25)
    assert same.passed and {r.upper for r in same.ratios.values()} == {1.0}


def test_latency_ratio_gate_is_deterministic() -> None:
    candidate, incumbent = _interleaved(1000)
    first = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    assert latency_ratio_gate(candidate.tolist(), incumbent.tolist(), max_ratio=1.25) == first
    other_seed = latency_ratio_gate(candidate, incumbent, max_ratio=1.25, seed=1)
    assert other_seed.ratios["p99"].upper != first.ratios["p99"].upper
    assert other_seed.ratios["p99"].upper == pytest.approx(first.ratios["p99"].upper, rel=0.05)


def test_latency_ratio_gate_fails_explicitly_on_too_few_pairs() -> None:
    candidate, incumbent = _interleaved(150)
    report = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    assert not report.passed and report.n_required == 299
    assert report.ratios["p50"].upper is not None  # 150 pairs bound a median ratio
    assert report.ratios["p99"].upper is None and report.ratios["p99"].estimate is None
    assert "too few pairs: needs >= 299, have 150" in report.explain()
    tiny = latency_ratio_gate(candidate[:40], incumbent[:40], max_ratio=1.25)
    assert all(r.upper is None for r in tiny.ratios.values())
    assert "needs >= 100, have 40" in tiny.explain()
    none = latency_ratio_gate([], [], max_ratio=1.25)
    assert not none.passed and none.n_pairs == 0


def test_upper_bound_of_the_ratio_covers_equal_versions() -> None:
    """The bound is >= the true ratio (1) in about ``confidence`` of the runs, for the tail and the median."""
    reps = 60
    covered = {"p50": 0, "p99": 0}
    for seed in range(reps):
        candidate, incumbent = _interleaved(400, seed=100 + seed)
        report = latency_ratio_gate(candidate, incumbent, max_ratio=1.25, n_boot=500)
        for label in covered:
            covered[label] += report.ratios[label].upper >= 1.0  # type: ignore[operator]
    assert min(covered.values()) / reps >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / reps), covered


@pytest.mark.parametrize(
    ("candidate", "incumbent", "options", "message"),
    [
        ([1.0, 2.0], [1.0], {}, "lengths differ"),
        ([1.0, 0.0], [1.0, 1.0], {}, "must be > 0"),
        ([1.0], [1.0], {"max_ratio": 1.0}, "max_ratio: must be a finite number > 1"),
        ([1.0], [np.nan], {}, "NaN"),
    ],
)
def test_latency_ratio_gate_bad_input(candidate: object, incumbent: object, options: dict, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        latency_ratio_gate(candidate, incumbent, **{"max_ratio": 1.25, **options})


def test_compare_latency_never_passes_on_the_incumbent_and_says_when_the_runner_is_slow() -> None:
    candidate, incumbent = _interleaved(1000)
    ratio = latency_ratio_gate(candidate, incumbent, max_ratio=1.25)
    limits = {"p99_max_ms": 1.0, "p50_max_ms": 1000.0}
    both_over = compare_latency(latency_gate(candidate, **limits), latency_gate(incumbent, **limits), ratio)
    assert ratio.passed and not both_over.passed  # no override: the threshold still blocks
    assert both_over.incumbent_also_over == ["p99"]
    assert "misses p99 too: this runner is too slow for the threshold" in both_over.explain()
    assert "no slower than the incumbent" in both_over.explain()
    roomy = {"p99_max_ms": 1000.0}
    passing = compare_latency(latency_gate(candidate, **roomy), latency_gate(incumbent, **limits), ratio)
    assert passing.passed and passing.incumbent_also_over == []
    slower = latency_ratio_gate(candidate * 2, incumbent, max_ratio=1.25)
    blocked = compare_latency(latency_gate(candidate * 2, **roomy), latency_gate(incumbent, **roomy), slower)
    assert not blocked.passed and blocked.candidate.passed
