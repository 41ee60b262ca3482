"""Latency and memory gates.

A p99 measured on 150 requests is a guess: the gate compares the distribution-free upper confidence
bound of each quantile (an order statistic chosen from the binomial distribution of ranks) with its
threshold, so a fast-looking run with too few requests fails and says how many requests it needs.
An absolute threshold alone reads a busy machine as a slow model, so when an incumbent exists it is measured
interleaved with the candidate in the same run, and the ratio of their quantiles must be bounded too
(``latency_ratio_gate``, ``compare_latency``). Memory is a peak and a post-warm-up steady value against byte
limits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from verification.errors import VerificationError
from verification.inputs import FloatArray, as_float_array, check_positive, check_probability, check_same_length
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


# The quantiles whose candidate/incumbent ratio is judged, and the bootstrap settings of its bound: fixed,
# so a verdict is a function of the samples alone.
RATIO_QUANTILES = (0.5, 0.99)
RATIO_BOOT = 2000
RATIO_SEED = 20240601
MIN_RATIO_PAIRS = 100
_BOOT_CHUNK_ELEMENTS = 2_000_000  # resampled latencies held at once (16 MB per version), whatever the run's size


class QuantileRatio(Report):
    """Candidate / incumbent ratio of one latency quantile on paired requests, with its upper bound."""

    q: float
    n_pairs: int
    n_required: int
    candidate: float | None
    incumbent: float | None
    estimate: float | None
    upper: float | None


class LatencyRatioReport(Report):
    """Latency ratio gate: each quantile's candidate/incumbent ratio upper bound is at most ``max_ratio``."""

    confidence: float
    max_ratio: float
    n_pairs: int
    n_required: int
    n_boot: int
    block: int
    seed: int
    ratios: dict[str, QuantileRatio]
    criteria: list[Criterion]


def quantile_label(q: float) -> str:
    """``p50``, ``p99``, ``p99.9``: how a quantile is named in reports and evidence keys."""
    return f"p{q * 100:g}"


def latency_ratio_gate(
    candidate_ms: Any,
    incumbent_ms: Any,
    *,
    max_ratio: float,
    quantiles: tuple[float, ...] = RATIO_QUANTILES,
    confidence: float = 0.95,
    n_boot: int = RATIO_BOOT,
    seed: int = RATIO_SEED,
) -> LatencyRatioReport:
    """Pass when the one-sided ``confidence`` upper bound of candidate/incumbent is <= ``max_ratio`` per quantile.

    Input: latencies of request pairs measured interleaved in one run, ``candidate_ms[k]`` and
    ``incumbent_ms[k]`` being the k-th request to each version (same input row, sent next to each other).

    Method: a paired circular block bootstrap (Politis & Romano) of the ratio of empirical quantiles, with
    the percentile upper bound. Why each part:
    - paired: the same resampled pair indices for both versions keep what interleaving bought, the machine
      noise both versions saw at the same moment, which cancels in the ratio; resampling the two versions
      independently would treat that shared noise as independent and widen the bound;
    - blocks of ``round(n ** (1/3))`` consecutive pairs (the usual order for distribution estimates): latency
      under load is autocorrelated (a stall or a queue delays several requests in a row), and resampling
      single pairs would take those runs for independent evidence and give a bound that is too tight;
    - a bootstrap rather than order statistics: the distribution-free order-statistic bounds used for the
      absolute thresholds exist for one sample; a ratio needs two, and combining an upper bound of one
      quantile with a lower bound of the other (Bonferroni) ignores the pairing and is far wider;
    - fixed ``seed`` and ``n_boot``: the verdict is deterministic (the gate's cache and its evidence rely on
      it); 2000 replicates of 1000 + 1000 latencies take well under a second (partial sorts, in chunks).
    A quantile needs at least ``max(MIN_RATIO_PAIRS, samples_for_upper_bound(q, confidence))`` pairs (299 for
    p99 at 95 %, as for its absolute bound): with fewer, a resampled tail quantile is only ever one of a few
    values, and the criterion fails as "too few pairs" rather than passing on a guess.
    """
    check_probability(confidence, "confidence")
    if not (np.isfinite(max_ratio) and max_ratio > 1):
        raise VerificationError(f"max_ratio: must be a finite number > 1, got {max_ratio}")
    if n_boot < 100:
        raise VerificationError(f"n_boot: must be >= 100 for a {confidence:.0%} bound, got {n_boot}")
    cand = as_float_array(candidate_ms, "candidate_ms", allow_empty=True)
    inc = as_float_array(incumbent_ms, "incumbent_ms", allow_empty=True)
    check_same_length(cand, inc, "candidate_ms/incumbent_ms")
    if (cand <= 0).any() or (inc <= 0).any():
        raise VerificationError("candidate_ms/incumbent_ms: latencies must be > 0; check the clock that measured them")
    for q in quantiles:
        check_probability(q, "quantile")
    n = int(cand.shape[0])
    block = max(1, round(n ** (1 / 3)))
    labels = {quantile_label(q): q for q in quantiles}
    required = {label: max(MIN_RATIO_PAIRS, samples_for_upper_bound(q, confidence)) for label, q in labels.items()}
    judged = [label for label in labels if n >= required[label]]
    boot = _paired_block_bootstrap(cand, inc, [empirical_rank(n, labels[lb]) for lb in judged], n_boot, block, seed)
    ratios: dict[str, QuantileRatio] = {}
    criteria: list[Criterion] = []
    for label, q in labels.items():
        n_req = required[label]
        if label in judged:
            rank = empirical_rank(n, q)
            c_q, i_q = (float(order_statistics(x, [rank])[0]) for x in (cand, inc))
            estimate = c_q / i_q
            upper = float(np.quantile(boot[:, judged.index(label)], confidence, method="inverted_cdf"))
            text = (
                f"{label} ratio candidate/incumbent: {fmt(c_q)} / {fmt(i_q)} = {fmt(estimate)} on {n} pairs;"
                f" {confidence:.0%} upper bound {fmt(upper)} (paired block bootstrap, {n_boot} x blocks of {block})"
            )
        else:
            c_q = i_q = estimate = upper = None
            text = f"{label} ratio candidate/incumbent: too few pairs for a bound ({n}, need >= {n_req})"
        ratios[label] = QuantileRatio(
            check="performance.latency_ratio_quantile",
            passed=upper is not None,
            explanation=text,
            q=q,
            n_pairs=n,
            n_required=n_req,
            candidate=c_q,
            incumbent=i_q,
            estimate=estimate,
            upper=upper,
        )
        criteria.append(
            Criterion(
                name=f"{label} ratio candidate/incumbent",
                observed=estimate,
                bound=upper,
                comparator="<=",
                threshold=max_ratio,
                passed=upper is not None and upper <= max_ratio,
                note="" if upper is not None else f"too few pairs: needs >= {n_req}, have {n}",
            )
        )
    passed = all(c.passed for c in criteria)
    explanation = (
        f"latency ratio gate: {n} request pairs measured interleaved; "
        + "; ".join(c.sentence() for c in criteria)
        + f" -> {verdict_word(passed)}."
    )
    return LatencyRatioReport(
        check="performance.latency_ratio",
        passed=passed,
        explanation=explanation,
        confidence=confidence,
        max_ratio=max_ratio,
        n_pairs=n,
        n_required=max(required.values()),
        n_boot=n_boot,
        block=block,
        seed=seed,
        ratios=ratios,
        criteria=criteria,
    )


def _paired_block_bootstrap(
    cand: FloatArray, inc: FloatArray, ranks: list[int], n_boot: int, block: int, seed: int
) -> FloatArray:
    """Ratios cand/inc of the order statistics at ``ranks`` over ``n_boot`` circular block resamples of pairs."""
    n = cand.shape[0]
    if not ranks:
        return np.empty((n_boot, 0))
    rng = np.random.default_rng(seed)
    n_blocks = -(-n // block)
    within = np.arange(block)
    kth = [r - 1 for r in ranks]
    rows = max(1, _BOOT_CHUNK_ELEMENTS // (n_blocks * block))
    chunks = []
    for done in range(0, n_boot, rows):
        starts = rng.integers(0, n, size=(min(rows, n_boot - done), n_blocks))
        idx = ((starts[:, :, None] + within) % n).reshape(starts.shape[0], -1)[:, :n]
        c_q = np.partition(cand[idx], kth, axis=1)[:, kth]
        i_q = np.partition(inc[idx], kth, axis=1)[:, kth]
        chunks.append(c_q / i_q)
    return np.concatenate(chunks)


class LatencyComparisonReport(Report):
    """Latency gate with an incumbent measured in the same run: the candidate's absolute verdict, the
    incumbent's (for context only: it never changes the verdict), and the ratio verdict."""

    candidate: LatencyReport
    incumbent: LatencyReport
    ratio: LatencyRatioReport
    incumbent_also_over: list[str]


def compare_latency(
    candidate: LatencyReport, incumbent: LatencyReport, ratio: LatencyRatioReport
) -> LatencyComparisonReport:
    """Pass when the candidate passes its absolute thresholds and the ratio gate; nothing else can pass it.

    ``incumbent_also_over`` lists the quantiles the candidate misses that the incumbent, in the same run,
    misses too: then the runner is too slow for the threshold. The gate still blocks (a threshold is a
    requirement of the release, not a comparison, and there is no override), but the explanation says so,
    and whether the candidate is any slower than the incumbent.
    """
    missed = {c.name for c in incumbent.criteria if not c.passed and c.bound is not None}
    over = [c.name.split()[0] for c in candidate.criteria if not c.passed and c.bound is not None and c.name in missed]
    passed = candidate.passed and ratio.passed
    context = ""
    if over:
        if ratio.passed:
            slower = "no slower than the incumbent"
        elif all(c.bound is not None for c in ratio.criteria if not c.passed):
            slower = "also slower than the incumbent"
        else:
            slower = "not shown to be as fast as the incumbent (too few pairs for a ratio bound)"
        context = (
            f" The incumbent, measured in the same run, misses {', '.join(over)} too: this runner is too slow for"
            f" the threshold, and the candidate is {slower}; the threshold still blocks."
        )
    explanation = (
        f"latency gate against the incumbent in the same run: candidate: {candidate.explanation}"
        f" Incumbent: {incumbent.explanation} Ratio: {ratio.explanation}{context} -> {verdict_word(passed)}."
    )
    return LatencyComparisonReport(
        check="performance.latency_comparison",
        passed=passed,
        explanation=explanation,
        candidate=candidate,
        incumbent=incumbent,
        ratio=ratio,
        incumbent_also_over=over,
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
