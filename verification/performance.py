"""Latency and memory gates.

A p99 measured on 150 requests is a guess: the gate compares the distribution-free upper confidence
bound of each quantile (an order statistic chosen from the binomial distribution of ranks) with its
threshold, so a fast-looking run with too few requests fails and says how many requests it needs.
Memory is a peak and a post-warm-up steady value against byte limits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from verification.errors import VerificationError
from verification.inputs import as_float_array, check_positive, check_probability
from verification.intervals import (
    empirical_rank,
    lower_bound_rank,
    order_statistics,
    samples_for_upper_bound,
    upper_bound_rank,
)
from verification.reports import Criterion, Report, fmt, verdict_word


class QuantileBounds(Report):
    """Empirical quantile with distribution-free bounds, each one-sided at ``confidence`` (so
    [lower, upper] together cover the quantile with probability >= 2 * confidence - 1)."""

    q: float
    confidence: float
    n: int
    estimate: float
    lower: float | None
    upper: float | None
    n_required: int


def quantile_bounds(samples: Any, q: float, confidence: float = 0.95) -> QuantileBounds:
    """Empirical q-quantile with one-sided lower and upper order-statistic bounds at ``confidence``.

    ``upper`` is X_(k) for the smallest k with P(Binomial(n, q) <= k - 1) >= confidence, which holds
    for any continuous distribution; it is None when n is below ``n_required`` (the fewest samples
    whose maximum is such a bound). ``passed`` is True when an upper bound exists.
    """
    check_probability(q, "q")
    check_probability(confidence, "confidence")
    x = as_float_array(samples, "samples")
    n = x.shape[0]
    ranks = [empirical_rank(n, q)]
    up = upper_bound_rank(n, q, confidence)
    lo = lower_bound_rank(n, q, confidence)
    ranks += [r for r in (lo, up) if r is not None]
    values = dict(zip(ranks, order_statistics(x, ranks), strict=True))
    n_required = samples_for_upper_bound(q, confidence)
    estimate = float(values[ranks[0]])
    upper = float(values[up]) if up is not None else None
    lower = float(values[lo]) if lo is not None else None
    if upper is None:
        text = (
            f"quantile p{q * 100:g}: estimate {fmt(estimate)} from n={n}; no {confidence:.0%} upper bound"
            f" exists below {n_required} samples ({n_required - n} more needed)"
        )
    else:
        text = (
            f"quantile p{q * 100:g}: estimate {fmt(estimate)} from n={n}; one-sided {confidence:.0%} bounds"
            f" [{fmt(lower)}, {fmt(upper)}] (order statistics {lo} and {up})"
        )
    return QuantileBounds(
        check="performance.quantile",
        passed=upper is not None,
        explanation=text,
        q=q,
        confidence=confidence,
        n=n,
        estimate=estimate,
        lower=lower,
        upper=upper,
        n_required=n_required,
    )


class LatencyReport(Report):
    """Latency gate: every requested quantile's upper bound is under its threshold, with enough samples."""

    confidence: float
    n: int
    n_required: int
    quantiles: dict[str, QuantileBounds]
    criteria: list[Criterion]


def latency_gate(
    samples_ms: Any,
    *,
    p99_max_ms: float,
    p50_max_ms: float | None = None,
    p95_max_ms: float | None = None,
    confidence: float = 0.95,
) -> LatencyReport:
    """Pass when the one-sided upper confidence bound of p99 (and p50/p95 when given) is under threshold.

    Samples are per-request latencies measured after warm-up. Too few samples for a p99 bound fails
    the gate with the number needed; it never passes on a point estimate.
    """
    check_positive(p99_max_ms, "p99_max_ms")
    x = as_float_array(samples_ms, "samples_ms")
    if (x < 0).any():
        raise VerificationError("samples_ms: contains negative latencies; check the clock that measured them")
    limits = {"p50": p50_max_ms, "p95": p95_max_ms, "p99": p99_max_ms}
    quantiles: dict[str, QuantileBounds] = {}
    criteria: list[Criterion] = []
    for label, limit in limits.items():
        if limit is None:
            continue
        check_positive(limit, f"{label}_max_ms")
        qb = quantile_bounds(x, int(label[1:]) / 100, confidence)
        quantiles[label] = qb
        ok = qb.upper is not None and qb.upper <= limit
        note = "" if qb.upper is not None else f"needs >= {qb.n_required} samples, have {qb.n}"
        criteria.append(
            Criterion(
                name=f"{label} latency (ms)",
                observed=qb.estimate,
                bound=qb.upper,
                comparator="<=",
                threshold=limit,
                passed=ok,
                note=note,
            )
        )
    n_required = max(q.n_required for q in quantiles.values())
    passed = all(c.passed for c in criteria)
    explanation = (
        f"latency gate: {x.shape[0]} requests (need >= {n_required} for a {confidence:.0%} p99 bound); "
        + "; ".join(c.sentence() for c in criteria)
        + f" -> {verdict_word(passed)}."
    )
    return LatencyReport(
        check="performance.latency",
        passed=passed,
        explanation=explanation,
        confidence=confidence,
        n=int(x.shape[0]),
        n_required=n_required,
        quantiles=quantiles,
        criteria=criteria,
    )


class MemoryReport(Report):
    """Memory gate: peak and steady resident memory of the serving process tree under limits."""

    peak_rss_bytes: int
    steady_rss_bytes: int
    max_bytes: int
    max_steady_bytes: int
    criteria: list[Criterion]


def _rss(value: Any, name: str) -> int:
    """A byte count, or the maximum of a series of sampled byte counts."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise VerificationError(f"{name}: expected a byte count or an array of them, got dtype {arr.dtype}")
    if arr.size == 0:
        raise VerificationError(f"{name}: no memory samples; sample RSS at least once during the run")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise VerificationError(f"{name}: byte counts must be finite and >= 0")
    return int(arr.max())


def memory_gate(
    peak_rss_bytes: Any,
    steady_rss_bytes: Any,
    *,
    max_bytes: int,
    max_steady_bytes: int | None = None,
) -> MemoryReport:
    """Pass when peak RSS <= ``max_bytes`` and steady (post-warm-up) RSS <= ``max_steady_bytes``.

    Either value may be a single byte count or a series of samples (its maximum is used).
    ``max_steady_bytes`` defaults to ``max_bytes``.
    """
    check_positive(max_bytes, "max_bytes")
    steady_limit = max_bytes if max_steady_bytes is None else max_steady_bytes
    check_positive(steady_limit, "max_steady_bytes")
    peak = _rss(peak_rss_bytes, "peak_rss_bytes")
    steady = _rss(steady_rss_bytes, "steady_rss_bytes")
    if steady > peak:
        raise VerificationError(
            f"steady_rss_bytes ({steady}) exceeds peak_rss_bytes ({peak}); the peak must cover the whole run"
        )
    mib = 1024 * 1024
    criteria = [
        Criterion(
            name="peak RSS (MiB)",
            observed=peak / mib,
            bound=None,
            comparator="<=",
            threshold=max_bytes / mib,
            passed=peak <= max_bytes,
            uses_bound=False,
        ),
        Criterion(
            name="steady RSS (MiB)",
            observed=steady / mib,
            bound=None,
            comparator="<=",
            threshold=steady_limit / mib,
            passed=steady <= steady_limit,
            uses_bound=False,
        ),
    ]
    passed = all(c.passed for c in criteria)
    explanation = "memory gate: " + "; ".join(c.sentence() for c in criteria) + f" -> {verdict_word(passed)}."
    return MemoryReport(
        check="performance.memory",
        passed=passed,
        explanation=explanation,
        peak_rss_bytes=peak,
        steady_rss_bytes=steady,
        max_bytes=int(max_bytes),
        max_steady_bytes=int(steady_limit),
        criteria=criteria,
    )
