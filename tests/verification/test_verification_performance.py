"""Latency and memory gates: order-statistic bounds, sample-size requirements, byte limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verification import VerificationError
from verification.intervals import lower_bound_rank, samples_for_upper_bound, upper_bound_rank
from verification.performance import LatencyReport, latency_gate, memory_gate, quantile_bounds


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
