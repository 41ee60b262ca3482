"""Confidence intervals shared by the gates: Wilson for rates, Newcombe for rate differences, and
distribution-free order-statistic bounds for quantiles.

Wilson and Newcombe keep their coverage at zero or very few events, which is exactly where a normal
(Wald) interval collapses to zero width and lets a sparse failure count pass. Order-statistic bounds
need no distributional assumption about latency, and they say plainly how many samples a bound needs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from verification.errors import VerificationError
from verification.inputs import FloatArray, check_probability


def z_two_sided(confidence: float) -> float:
    """Normal quantile for a two-sided interval at ``confidence``."""
    check_probability(confidence, "confidence")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval for a binomial proportion."""
    if trials <= 0:
        raise VerificationError("wilson_interval: trials must be > 0; there is nothing to estimate from")
    if not 0 <= successes <= trials:
        raise VerificationError(f"wilson_interval: successes {successes} outside [0, {trials}]")
    z = z_two_sided(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return lo, hi


def newcombe_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for p_b - p_a, built from two Wilson intervals."""
    la, ua = wilson_interval(successes_a, trials_a, confidence)
    lb, ub = wilson_interval(successes_b, trials_b, confidence)
    pa = successes_a / trials_a
    pb = successes_b / trials_b
    d = pb - pa
    lower = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    upper = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return max(-1.0, lower), min(1.0, upper)


def samples_for_upper_bound(q: float, confidence: float) -> int:
    """Fewest samples for which the maximum is a one-sided ``confidence`` upper bound of the q-quantile."""
    check_probability(q, "q")
    check_probability(confidence, "confidence")
    return math.ceil(math.log(1 - confidence) / math.log(q) - 1e-12)


def upper_bound_rank(n: int, q: float, confidence: float) -> int | None:
    """1-based rank k with P(X_(k) >= q-quantile) >= confidence, or None when n is too small."""
    k = int(stats.binom.ppf(confidence, n, q)) + 1
    return k if k <= n else None


def lower_bound_rank(n: int, q: float, confidence: float) -> int | None:
    """1-based rank k with P(X_(k) <= q-quantile) >= confidence, or None when n is too small."""
    alpha = 1 - confidence
    j = int(stats.binom.ppf(alpha, n, q))
    if stats.binom.cdf(j, n, q) <= alpha:
        j += 1
    return j if j >= 1 else None


def empirical_rank(n: int, q: float) -> int:
    """1-based rank of the empirical q-quantile (inverted CDF: the smallest x with F_n(x) >= q)."""
    return min(n, max(1, math.ceil(q * n - 1e-9)))


def order_statistics(values: FloatArray, ranks: list[int]) -> FloatArray:
    """Values at the given 1-based ranks, by partial sort (O(n)) rather than a full sort."""
    idx = sorted({r - 1 for r in ranks})
    part = np.partition(values, idx)
    return np.asarray([part[r - 1] for r in ranks], dtype=np.float64)
