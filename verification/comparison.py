"""Paired comparison of two model versions' predictions on the same inputs.

Comparing aggregate metrics of two versions hides that they may decide differently for many
individual customers. On aligned (incumbent, candidate) scores this module measures the decision
disagreement at the operating threshold (with the 2x2 flip table), the size and sign of score
differences and rank agreement, and decides by tolerance bounds (the confidence bound must sit inside
the tolerance), not by a p-value that a large sample makes significant and a small one never does.

``SequentialComparison`` takes the same decision on a stream of batches: it may stop at any look and
stays valid under repeated looks (Ville's inequality on mixture likelihood-ratio martingales), so a
clearly bad candidate fails after far fewer pairs than a fixed-horizon test needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats
from scipy.special import logsumexp

from verification.errors import VerificationError
from verification.inputs import (
    FloatArray,
    as_float_array,
    check_positive,
    check_probability,
    check_same_length,
)
from verification.intervals import (
    empirical_rank,
    order_statistics,
    samples_for_upper_bound,
    upper_bound_rank,
    wilson_interval,
    z_two_sided,
)
from verification.reports import Criterion, Report, fmt, verdict_word


class FlipTable(Report):
    """Decisions of the two versions at the threshold (positive = score >= threshold)."""

    both_positive: int
    both_negative: int
    positive_to_negative: int
    negative_to_positive: int


class ComparisonReport(Report):
    """Agreement of candidate with incumbent on the same inputs, decided by tolerance bounds."""

    n_pairs: int
    threshold: float
    confidence: float
    flips: FlipTable
    disagreement_rate: float
    disagreement_interval: tuple[float, float]
    abs_diff_mean: float
    abs_diff_p95: float
    abs_diff_p99: float
    abs_diff_p99_upper: float | None
    abs_diff_max: float
    bias: float
    bias_interval: tuple[float, float]
    spearman: float | None
    pairs_needed: int
    criteria: list[Criterion]


def _pairs(incumbent: Any, candidate: Any) -> tuple[FloatArray, FloatArray]:
    inc = as_float_array(incumbent, "incumbent")
    cand = as_float_array(candidate, "candidate")
    check_same_length(inc, cand, "incumbent/candidate")
    return inc, cand


def average_ranks(values: FloatArray) -> FloatArray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``), from one argsort."""
    n = values.shape[0]
    order = np.argsort(values, kind="quicksort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    ends = np.append(starts[1:], n)
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: FloatArray, b: FloatArray) -> float | None:
    """Spearman rank correlation (None when either side is constant, where it is undefined)."""
    ra = average_ranks(a)
    rb = average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    return float(np.dot(ra, rb)) / denom if denom > 0 else None


def compare_predictions(
    incumbent: Any,
    candidate: Any,
    *,
    threshold: float = 0.5,
    max_disagreement: float = 0.01,
    max_abs_diff_p99: float = 0.05,
    max_bias: float = 0.01,
    min_spearman: float | None = None,
    confidence: float = 0.95,
) -> ComparisonReport:
    """Pass when, at ``confidence``, the candidate stays within every tolerance of the incumbent.

    - disagreement: the Wilson upper bound of the share of flipped decisions <= ``max_disagreement``;
    - score differences: the order-statistic upper bound of p99 |candidate - incumbent|
      <= ``max_abs_diff_p99``;
    - bias: the confidence interval of mean(candidate - incumbent) lies within +/- ``max_bias``;
    - optionally Spearman rank correlation >= ``min_spearman``.
    Too few pairs to bound these at all fails, reporting the number of pairs needed.
    """
    check_probability(confidence, "confidence")
    check_probability(max_disagreement, "max_disagreement")
    check_positive(max_abs_diff_p99, "max_abs_diff_p99")
    check_positive(max_bias, "max_bias")
    inc, cand = _pairs(incumbent, candidate)
    n = inc.shape[0]
    inc_pos = inc >= threshold
    cand_pos = cand >= threshold
    n_inc_pos = int(np.count_nonzero(inc_pos))
    both_pos = int(np.count_nonzero(inc_pos & cand_pos))
    pos_to_neg = n_inc_pos - both_pos
    neg_to_pos = int(np.count_nonzero(cand_pos)) - both_pos
    both_neg = n - both_pos - pos_to_neg - neg_to_pos
    flipped = pos_to_neg + neg_to_pos
    rate = flipped / n
    dis_lo, dis_hi = wilson_interval(flipped, n, confidence)
    flips = FlipTable(
        check="comparison.flips",
        passed=flipped == 0,
        explanation=(
            f"flip table at threshold {fmt(threshold)}: both positive {both_pos}, both negative {both_neg},"
            f" positive->negative {pos_to_neg}, negative->positive {neg_to_pos}"
        ),
        both_positive=both_pos,
        both_negative=both_neg,
        positive_to_negative=pos_to_neg,
        negative_to_positive=neg_to_pos,
    )

    diff = cand - inc
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else math.inf
    half = z_two_sided(confidence) * sd / math.sqrt(n)
    bias_lo, bias_hi = bias - half, bias + half
    absdiff = np.abs(diff)
    up_rank = upper_bound_rank(n, 0.99, confidence)
    ranks = [empirical_rank(n, 0.95), empirical_rank(n, 0.99), n] + ([up_rank] if up_rank else [])
    qs = order_statistics(absdiff, ranks)
    p95, p99, dmax = float(qs[0]), float(qs[1]), float(qs[2])
    p99_upper = float(qs[3]) if up_rank else None
    rho = spearman(inc, cand) if n > 2 else None

    z = z_two_sided(confidence)
    pairs_needed = max(
        samples_for_upper_bound(0.99, confidence),
        math.ceil(z * z * (1 - max_disagreement) / max_disagreement),  # Wilson upper bound with 0 flips
    )
    short = f"needs >= {pairs_needed} pairs, have {n}" if n < pairs_needed else ""
    criteria = [
        Criterion(
            name="disagreement rate",
            observed=rate,
            bound=dis_hi,
            comparator="<=",
            threshold=max_disagreement,
            passed=dis_hi <= max_disagreement,
            note=short,
        ),
        Criterion(
            name="p99 |score difference|",
            observed=p99,
            bound=p99_upper,
            comparator="<=",
            threshold=max_abs_diff_p99,
            passed=p99_upper is not None and p99_upper <= max_abs_diff_p99,
            note=short,
        ),
        Criterion(
            name="|bias| (mean candidate - incumbent)",
            observed=abs(bias),
            bound=max(abs(bias_lo), abs(bias_hi)),
            comparator="<=",
            threshold=max_bias,
            passed=-max_bias <= bias_lo and bias_hi <= max_bias,
        ),
    ]
    if min_spearman is not None:
        criteria.append(
            Criterion(
                name="Spearman rank correlation",
                observed=rho,
                bound=None,
                comparator=">=",
                threshold=min_spearman,
                passed=rho is not None and rho >= min_spearman,
                uses_bound=False,
            )
        )
    passed = all(c.passed for c in criteria)
    explanation = (
        f"prediction comparison on {n} aligned pairs at threshold {fmt(threshold)}, {confidence:.0%} bounds:"
        f" {flipped} flipped decisions ({pos_to_neg} positive->negative, {neg_to_pos} negative->positive),"
        f" rate {fmt(rate)} in [{fmt(dis_lo)}, {fmt(dis_hi)}]; |diff| mean {fmt(float(absdiff.mean()))},"
        f" p95 {fmt(p95)}, p99 {fmt(p99)}, max {fmt(dmax)}; bias {fmt(bias)} in [{fmt(bias_lo)},"
        f" {fmt(bias_hi)}]; Spearman {fmt(rho)}. "
        + "; ".join(c.sentence() for c in criteria)
        + f" -> {verdict_word(passed)}."
    )
    return ComparisonReport(
        check="comparison.paired",
        passed=passed,
        explanation=explanation,
        n_pairs=n,
        threshold=threshold,
        confidence=confidence,
        flips=flips,
        disagreement_rate=rate,
        disagreement_interval=(dis_lo, dis_hi),
        abs_diff_mean=float(absdiff.mean()),
        abs_diff_p95=p95,
        abs_diff_p99=p99,
        abs_diff_p99_upper=p99_upper,
        abs_diff_max=dmax,
        bias=bias,
        bias_interval=(bias_lo, bias_hi),
        spearman=rho,
        pairs_needed=pairs_needed,
        criteria=criteria,
    )


# ------------------------------------------------------------------------------------- sequential

Decision = Literal["continue", "pass", "fail"]


class SequentialDecision(Report):
    """The state of a sequential comparison after one look."""

    decision: Decision
    pairs: int
    disagreements: int
    rate: float
    tolerance: float
    fail_evidence: float
    pass_evidence: float
    fail_threshold: float
    pass_threshold: float
    looks: int


def fixed_horizon_pairs(tolerance: float, alternative: float, alpha: float, beta: float) -> int:
    """Pairs an exact one-sided binomial test needs to tell ``tolerance`` from ``alternative``.

    The smallest n with a critical count c such that P(X >= c | tolerance) <= alpha and
    P(X >= c | alternative) >= 1 - beta: the fixed-horizon benchmark for the sequential test.
    """
    check_probability(tolerance, "tolerance")
    check_probability(alternative, "alternative")
    if alternative <= tolerance:
        raise VerificationError("alternative: must exceed the tolerance it is told apart from")
    z_a, z_b = stats.norm.ppf(1 - alpha), stats.norm.ppf(1 - beta)
    spread = z_a * math.sqrt(tolerance * (1 - tolerance)) + z_b * math.sqrt(alternative * (1 - alternative))
    n = max(1, int((spread / (alternative - tolerance)) ** 2 * 0.8))
    while True:
        c = int(stats.binom.isf(alpha, n, tolerance)) + 1  # smallest c with P(X >= c) <= alpha
        if stats.binom.sf(c - 1, n, alternative) >= 1 - beta:
            return n
        n += max(1, n // 2000)


class SequentialComparison:
    """Anytime-valid test that the disagreement rate of candidate vs incumbent is within tolerance.

    A pair disagrees when the decisions at ``threshold`` differ (or, with ``max_abs_diff``, when the
    scores differ by more than that). Two mixture likelihood-ratio martingales run side by side:

    - fail evidence: mixture over rates above ``max_disagreement`` (``fail_alternatives`` x tolerance)
      against the tolerance; under any true rate <= tolerance it exceeds 1/alpha with probability
      <= alpha, at any look;
    - pass evidence: mixture over rates below the tolerance; under any true rate >= tolerance it exceeds
      1/beta with probability <= beta.

    ``update`` returns "fail" or "pass" as soon as one crosses its bound, else "continue". After
    ``max_pairs`` without a decision it returns "fail" (inconclusive never passes).
    """

    def __init__(
        self,
        *,
        max_disagreement: float = 0.01,
        threshold: float = 0.5,
        max_abs_diff: float | None = None,
        alpha: float = 0.05,
        beta: float = 0.05,
        fail_alternatives: Sequence[float] = (1.5, 2.0, 3.0, 5.0),
        pass_alternatives: Sequence[float] = (0.75, 0.5, 0.25, 0.0),
        max_pairs: int | None = None,
    ) -> None:
        check_probability(max_disagreement, "max_disagreement")
        check_probability(alpha, "alpha")
        check_probability(beta, "beta")
        if max_abs_diff is not None:
            check_positive(max_abs_diff, "max_abs_diff")
        fail_theta = np.array([r * max_disagreement for r in fail_alternatives if r > 1])
        fail_theta = fail_theta[fail_theta < 1]
        pass_theta = np.array([r * max_disagreement for r in pass_alternatives if 0 <= r < 1])
        if fail_theta.size == 0 or pass_theta.size == 0:
            raise VerificationError(
                "fail_alternatives/pass_alternatives: need multiples > 1 (fail) and in [0, 1) (pass)"
            )
        if max_pairs is not None and max_pairs < 1:
            raise VerificationError(f"max_pairs: must be >= 1, got {max_pairs}")
        self.tolerance = max_disagreement
        self.threshold = threshold
        self.max_abs_diff = max_abs_diff
        self.alpha = alpha
        self.beta = beta
        self.max_pairs = max_pairs
        self._fail_theta = fail_theta
        self._pass_theta = pass_theta
        self.pairs = 0
        self.disagreements = 0
        self.looks = 0
        self._decided: SequentialDecision | None = None

    def _log_mixture(self, theta: FloatArray) -> float:
        """log of the equal-weight mixture of likelihood ratios theta vs tolerance on the data so far."""
        p0 = self.tolerance
        s, f = self.disagreements, self.pairs - self.disagreements
        log_lr = f * np.log((1 - theta) / (1 - p0))
        if s > 0:  # theta = 0 is ruled out by a single disagreement
            with np.errstate(divide="ignore"):
                log_lr = log_lr + s * np.log(theta / p0)
        return float(logsumexp(log_lr) - math.log(theta.size))

    def update(self, incumbent_batch: Any, candidate_batch: Any) -> SequentialDecision:
        """Add one batch of aligned pairs and decide; after a decision further batches are ignored."""
        if self._decided is not None:
            return self._decided
        inc, cand = _pairs(incumbent_batch, candidate_batch)
        disagree = (inc >= self.threshold) != (cand >= self.threshold)
        if self.max_abs_diff is not None:
            disagree |= np.abs(cand - inc) > self.max_abs_diff
        self.pairs += inc.shape[0]
        self.disagreements += int(np.count_nonzero(disagree))
        self.looks += 1
        fail_ev = self._log_mixture(self._fail_theta)
        pass_ev = self._log_mixture(self._pass_theta)
        fail_bound = math.log(1 / self.alpha)
        pass_bound = math.log(1 / self.beta)
        decision: Decision = "continue"
        why = "neither bound crossed yet"
        if fail_ev >= fail_bound:
            decision, why = "fail", "evidence that the disagreement rate exceeds the tolerance"
        elif pass_ev >= pass_bound:
            decision, why = "pass", "evidence that the disagreement rate is below the tolerance"
        elif self.max_pairs is not None and self.pairs >= self.max_pairs:
            decision = "fail"
            why = f"no decision within max_pairs={self.max_pairs}; inconclusive never passes"
        rate = self.disagreements / self.pairs
        result = SequentialDecision(
            check="comparison.sequential",
            passed=decision == "pass",
            explanation=(
                f"sequential comparison, look {self.looks}: {self.disagreements} disagreements in"
                f" {self.pairs} pairs (rate {fmt(rate)}) vs tolerance {fmt(self.tolerance)};"
                f" log-evidence of exceeding it {fmt(fail_ev)} vs bound {fmt(fail_bound)}"
                f" (alpha {fmt(self.alpha)}), of staying below"
                f" {fmt(pass_ev)} vs bound {fmt(pass_bound)} (beta {fmt(self.beta)}); valid at every look"
                f" -> {decision.upper()}: {why}, after {self.pairs} pairs."
            ),
            decision=decision,
            pairs=self.pairs,
            disagreements=self.disagreements,
            rate=rate,
            tolerance=self.tolerance,
            fail_evidence=fail_ev,
            pass_evidence=pass_ev,
            fail_threshold=fail_bound,
            pass_threshold=pass_bound,
            looks=self.looks,
        )
        if decision != "continue":
            self._decided = result
        return result
