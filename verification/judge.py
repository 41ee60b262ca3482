"""Canary judge: does the canary's metric (latency, error rate) differ from the baseline's?

``mann_whitney`` reproduces the classification of Kayenta's NetflixACAJudge: the confidence interval
of the location shift is R's ``wilcox.test(canary, baseline, conf.int=TRUE, exact=FALSE,
correct=TRUE)`` interval, the allowed band is +/- tolerance * |Hodges-Lehmann shift estimate|, and a
High/Low also needs the mean ratio beyond the allowed effect size. R finds the interval by root-finding
a step function; here the roots are computed exactly as order statistics of the n*m pairwise
differences, selected without materialising them (randomised selection over the sorted matrix).

Kayenta's known blind spots are kept visible rather than silently reproduced: a Pass whose interval
still reaches beyond the allowed band is flagged ``inconclusive`` (spinnaker#6278), and rates go
through ``two_proportion``, a non-inferiority test on the Newcombe interval, under which sparse error
counts cannot pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from scipy import stats

from verification.errors import VerificationError
from verification.inputs import FloatArray, check_positive, check_probability
from verification.intervals import newcombe_interval, z_two_sided
from verification.reports import Report, fmt

Classification = Literal["Pass", "High", "Low", "Nodata"]
Direction = Literal["increase", "decrease", "either"]
_DIRECTIONS = ("increase", "decrease", "either")
_SELECTION_SAMPLE = 2048


class MetricJudgement(Report):
    """Classification of one canary metric against its baseline."""

    metric: str
    classification: Classification
    direction: Direction
    n_baseline: int
    n_canary: int


class MannWhitneyResult(MetricJudgement):
    """Kayenta-style Mann-Whitney classification with the numbers behind it."""

    confidence: float
    tolerance: float
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    allowed_band: float | None
    mean_ratio: float | None
    p_value: float | None
    inconclusive: bool
    dropped_nan: int


class TwoProportionResult(MetricJudgement):
    """Non-inferiority of a canary rate (e.g. errors / requests) against the baseline rate."""

    confidence: float
    baseline_rate: float | None
    canary_rate: float | None
    difference: float | None
    ci_lower: float | None
    ci_upper: float | None
    max_increase: float
    max_decrease: float
    conclusive: bool
    samples_needed: int | None


class JudgeScore(Report):
    """Weighted canary score over metric classifications."""

    score: float
    classification: Literal["Pass", "Marginal", "Fail"]
    pass_threshold: float
    marginal_threshold: float
    failed_critical: list[str]
    metrics: dict[str, Classification]


# ------------------------------------------------------------------- pairwise-difference selection


def _rows_greater(x: FloatArray, y: FloatArray, v: float, strict: bool) -> np.ndarray:
    """Per row i, how many j have x[i] - y[j] > v (``strict``) or >= v; y sorted ascending.

    The float difference x[i] - y[j] is non-increasing in y[j], so each row's set is a prefix of y;
    ``searchsorted`` gives the prefix length up to rounding, and a short fix-up makes it exact for
    the differences as computed in floating point (the same values the selection returns).
    """
    m = y.shape[0]
    side = "left" if strict else "right"
    g = np.searchsorted(y, x - v, side=side)

    def inside(idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
        d = x[rows] - y[idx]
        return d > v if strict else d >= v

    for _ in range(64):
        rows = np.flatnonzero(g > 0)
        back = rows[~inside(g[rows] - 1, rows)]
        rows = np.flatnonzero(g < m)
        fwd = rows[inside(g[rows], rows)]
        if back.size == 0 and fwd.size == 0:
            return g
        g[back] -= 1
        g[fwd] += 1
    raise VerificationError("pairwise differences: rounding did not settle; values may be non-finite")


def kth_pairwise_difference(x: FloatArray, y: FloatArray, k: int, seed: int = 0) -> float:
    """The k-th smallest (1-based) of the n*m differences x[i] - y[j], both inputs sorted ascending.

    Selection over the implicitly sorted matrix (in the manner of Floyd-Rivest): keep per row the
    window of candidate columns, draw a random sample of candidates, take two pivots just below and
    above the sample quantile where the k-th should sit, count how many differences are <= each
    pivot, and shrink the window around k; once few candidates remain, materialise and partition.
    """
    n, m = x.shape[0], y.shape[0]
    total = n * m
    if not 1 <= k <= total:
        raise VerificationError(f"k: must be in [1, {total}], got {k}")
    rng = np.random.default_rng(seed)
    hi_g = np.zeros(n, dtype=np.int64)  # per row: #j with diff >= hi (hi exclusive, starts at +inf)
    lo_g = np.full(n, m, dtype=np.int64)  # per row: #j with diff > lo  (lo starts at -inf)
    lo_val, hi_val = -math.inf, math.inf
    below = 0  # number of differences <= lo
    limit = max(4 * (n + m), 4096)
    for _ in range(100):
        widths = lo_g - hi_g
        cum = np.cumsum(widths)
        candidates = int(cum[-1])
        if candidates <= limit:
            break
        draws = rng.integers(candidates, size=min(candidates, _SELECTION_SAMPLE))
        rows = np.searchsorted(cum, draws, side="right")
        sample = np.sort(x[rows] - y[hi_g[rows] + draws - (cum[rows] - widths[rows])])
        where = (k - below - 0.5) / candidates
        spread = 2.5 / math.sqrt(sample.shape[0])
        picks = {
            int(np.clip((where - spread) * sample.shape[0], 0, sample.shape[0] - 1)),
            int(np.clip((where + spread) * sample.shape[0], 0, sample.shape[0] - 1)),
        }
        for pick in sorted(picks):
            pivot = float(sample[pick])
            if not lo_val < pivot < hi_val:
                continue
            g = _rows_greater(x, y, pivot, strict=True)
            at_most = total - int(g.sum())
            if at_most >= k:
                g_ge = _rows_greater(x, y, pivot, strict=False)
                if total - int(g_ge.sum()) < k:
                    return pivot  # k falls inside the block of differences equal to the pivot
                hi_g, hi_val = g_ge, pivot
            else:
                lo_g, lo_val, below = g, pivot, at_most
    widths = lo_g - hi_g
    rows = np.repeat(np.arange(n), widths)
    starts = np.repeat(np.cumsum(widths) - widths, widths)
    cols = hi_g[rows] + (np.arange(rows.shape[0]) - starts)
    values = x[rows] - y[cols]
    return float(np.partition(values, k - below - 1)[k - below - 1])


def _tie_term(sorted_values: FloatArray) -> float:
    """sum(t^3 - t) over groups of tied values of one (sorted) sample."""
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    t = np.diff(np.append(starts, sorted_values.shape[0])).astype(np.float64)
    return float(np.sum(t**3 - t))


def wilcoxon_shift_interval(canary: FloatArray, baseline: FloatArray, confidence: float) -> tuple[float, float, float]:
    """(lower, upper, estimate) of the canary - baseline shift, as R's asymptotic wilcox.test.

    R solves (U(d) - nm/2 - 0.5 sign(.)) / sigma = +/- z for d, where U(d) counts pairs with
    x - d > y (ties 1/2). U(d) steps only at pairwise differences, so each root is one of them: the
    K-th smallest, with K from the largest U that stays under the boundary. sigma uses the within-
    sample ties (cross-sample ties occur only at the step points themselves). The estimate is the
    Hodges-Lehmann median of pairwise differences (R's root lies in the flat region around it).
    """
    x = np.sort(canary)
    y = np.sort(baseline)
    n, m = x.shape[0], y.shape[0]
    total = n * m
    ties = _tie_term(x) + _tie_term(y)
    sigma = math.sqrt(n * m / 12.0 * ((n + m + 1) - ties / ((n + m) * (n + m - 1))))
    z = z_two_sided(confidence)

    def root(zq: float) -> float:
        shift = 0.5 if zq > 0 else -0.5
        u_max = math.ceil(total / 2 + shift + zq * sigma) - 1  # largest U with f < 0
        k = min(max(total - u_max, 1), total)
        return kth_pairwise_difference(x, y, k)

    lower = root(z)
    upper = root(-z)
    if total % 2:
        estimate = kth_pairwise_difference(x, y, (total + 1) // 2)
    else:
        half = total // 2
        estimate = 0.5 * (kth_pairwise_difference(x, y, half) + kth_pairwise_difference(x, y, half + 1))
    return lower, upper, estimate


# ----------------------------------------------------------------------------------- classifiers


def _metric_values(values: Any, name: str) -> tuple[FloatArray, int]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise VerificationError(f"{name}: expected a 1-D array of metric values, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "biuf":
        raise VerificationError(f"{name}: expected numbers, got dtype {arr.dtype}")
    out = arr.astype(np.float64, copy=False)
    if np.isinf(out).any():
        raise VerificationError(f"{name}: contains infinite values; fix the metric query")
    nan = np.isnan(out)
    return out[~nan], int(nan.sum())


def mann_whitney(
    baseline: Any,
    canary: Any,
    *,
    direction: Direction = "either",
    allowed_increase: float = 1.0,
    allowed_decrease: float = 1.0,
    confidence: float = 0.98,
    tolerance: float = 0.25,
    metric: str = "metric",
) -> MannWhitneyResult:
    """Classify a canary metric as Kayenta's NetflixACAJudge does: Pass, High, Low or Nodata.

    High when direction allows increases, the interval's lower end exceeds +tolerance * |estimate| and
    the mean ratio canary/baseline is >= ``allowed_increase`` (symmetrically for Low). NaNs are
    dropped (and counted); an empty side is Nodata, which never counts as a pass in ``score``.
    """
    if direction not in _DIRECTIONS:
        raise VerificationError(f"direction: {direction!r} is not one of {_DIRECTIONS}")
    check_probability(confidence, "confidence")
    check_positive(tolerance, "tolerance", allow_zero=True)
    check_positive(allowed_increase, "allowed_increase")
    check_positive(allowed_decrease, "allowed_decrease")
    base, dropped_b = _metric_values(baseline, "baseline")
    can, dropped_c = _metric_values(canary, "canary")
    common: dict[str, Any] = {
        "check": "judge.mann_whitney",
        "metric": metric,
        "direction": direction,
        "n_baseline": int(base.shape[0]),
        "n_canary": int(can.shape[0]),
        "confidence": confidence,
        "tolerance": tolerance,
        "dropped_nan": dropped_b + dropped_c,
    }
    head = f"judge[{metric}] Mann-Whitney (canary n={can.shape[0]} vs baseline n={base.shape[0]})"
    if base.size == 0 or can.size == 0:
        return MannWhitneyResult(
            passed=False,
            classification="Nodata",
            estimate=None,
            ci_lower=None,
            ci_upper=None,
            allowed_band=None,
            mean_ratio=None,
            p_value=None,
            inconclusive=True,
            explanation=f"{head}: a side has no data -> Nodata (never a pass).",
            **common,
        )
    if np.array_equal(np.sort(base), np.sort(can)) or np.unique(np.concatenate((base, can))).size == 1:
        return MannWhitneyResult(
            passed=True,
            classification="Pass",
            estimate=0.0,
            ci_lower=0.0,
            ci_upper=0.0,
            allowed_band=0.0,
            mean_ratio=1.0,
            p_value=1.0,
            inconclusive=False,
            explanation=f"{head}: the two samples hold identical values -> Pass.",
            **common,
        )
    lower, upper, estimate = wilcoxon_shift_interval(can, base, confidence)
    band = tolerance * abs(estimate)
    base_mean = float(base.mean())
    ratio = float(can.mean()) / base_mean if base_mean != 0 else None
    p_value = float(stats.mannwhitneyu(can, base, alternative="two-sided", method="asymptotic").pvalue)
    classification: Classification = "Pass"
    high_ok = ratio is None or ratio >= allowed_increase
    low_ok = ratio is None or ratio <= allowed_decrease
    if direction in ("increase", "either") and lower > band and high_ok:
        classification = "High"
    elif direction in ("decrease", "either") and upper < -band and low_ok:
        classification = "Low"
    inconclusive = classification == "Pass" and (upper > band or lower < -band)
    note = ""
    if inconclusive:
        note = (
            f" The interval reaches beyond the allowed band, so the data do not rule out a shift larger"
            f" than {fmt(band)}: Pass by Kayenta's rule, but inconclusive."
        )
    explanation = (
        f"{head}: shift estimate (Hodges-Lehmann) {fmt(estimate)}, {confidence:.0%} interval"
        f" [{fmt(lower)}, {fmt(upper)}], allowed band +/-{fmt(band)} (tolerance {fmt(tolerance)} x"
        f" |estimate|), mean ratio {fmt(ratio)} (allowed {fmt(allowed_decrease)}..{fmt(allowed_increase)}),"
        f" p={fmt(p_value)}, direction {direction} -> {classification}.{note}"
    )
    return MannWhitneyResult(
        passed=classification == "Pass",
        classification=classification,
        estimate=estimate,
        ci_lower=lower,
        ci_upper=upper,
        allowed_band=band,
        mean_ratio=ratio,
        p_value=p_value,
        inconclusive=inconclusive,
        explanation=explanation,
        **common,
    )


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise VerificationError(f"{name}: must be a non-negative whole number, got {value!r}")
    return int(value)


def two_proportion(
    baseline_failures: int,
    baseline_total: int,
    canary_failures: int,
    canary_total: int,
    *,
    max_increase: float = 0.01,
    max_decrease: float = 1.0,
    direction: Direction = "increase",
    confidence: float = 0.98,
    metric: str = "error_rate",
) -> TwoProportionResult:
    """Non-inferiority of the canary rate: Pass only when the Newcombe interval of canary - baseline
    stays within ``max_increase`` (and ``-max_decrease`` when decreases matter).

    A Mann-Whitney judge on sparse per-interval error counts sees mostly zeros and passes; here a
    handful of requests gives a wide interval, which fails as High (``conclusive=False``) with the
    approximate number of requests per side needed to decide.
    """
    if direction not in _DIRECTIONS:
        raise VerificationError(f"direction: {direction!r} is not one of {_DIRECTIONS}")
    check_probability(confidence, "confidence")
    check_positive(max_increase, "max_increase")
    check_positive(max_decrease, "max_decrease")
    bf, bt = _count(baseline_failures, "baseline_failures"), _count(baseline_total, "baseline_total")
    cf, ct = _count(canary_failures, "canary_failures"), _count(canary_total, "canary_total")
    if bf > bt or cf > ct:
        raise VerificationError("two_proportion: failures exceed totals; pass (failures, total) per side")
    common: dict[str, Any] = {
        "check": "judge.two_proportion",
        "metric": metric,
        "direction": direction,
        "n_baseline": bt,
        "n_canary": ct,
        "confidence": confidence,
        "max_increase": max_increase,
        "max_decrease": max_decrease,
    }
    head = f"judge[{metric}] two-proportion"
    if bt == 0 or ct == 0:
        return TwoProportionResult(
            passed=False,
            classification="Nodata",
            baseline_rate=None,
            canary_rate=None,
            difference=None,
            ci_lower=None,
            ci_upper=None,
            conclusive=False,
            samples_needed=None,
            explanation=f"{head}: no requests on one side (baseline {bt}, canary {ct}) -> Nodata.",
            **common,
        )
    pb, pc = bf / bt, cf / ct
    lo, hi = newcombe_interval(bf, bt, cf, ct, confidence)
    check_up = direction in ("increase", "either")
    check_down = direction in ("decrease", "either")
    classification: Classification = "Pass"
    conclusive = True
    if check_up and hi > max_increase:
        classification, conclusive = "High", lo > max_increase
    elif check_down and lo < -max_decrease:
        classification, conclusive = "Low", hi < -max_decrease
    needed = None
    if classification != "Pass" and not conclusive:
        margin = max_increase if classification == "High" else max_decrease
        gap = margin - abs(pc - pb)
        z = z_two_sided(confidence)
        pooled = max((bf + cf) / (bt + ct), 1.0 / (bt + ct))
        if gap > 0:
            needed = math.ceil(z * z * 2 * pooled * (1 - pooled) / (gap * gap))
    need_txt = f"; about {needed} requests per side would be needed to decide" if needed else ""
    if classification != "Pass" and not conclusive and needed is None:
        need_txt = "; the observed change already exceeds the allowed change"
    explanation = (
        f"{head}: canary {cf}/{ct} ({fmt(pc)}) vs baseline {bf}/{bt} ({fmt(pb)}), difference {fmt(pc - pb)}"
        f" with {confidence:.0%} Newcombe interval [{fmt(lo)}, {fmt(hi)}];"
        f" allowed increase {fmt(max_increase)}"
        + (f", allowed decrease {fmt(max_decrease)}" if check_down else "")
        + f" -> {classification}"
        + ("" if classification == "Pass" or conclusive else " (interval too wide to show non-inferiority)")
        + f"{need_txt}."
    )
    return TwoProportionResult(
        passed=classification == "Pass",
        classification=classification,
        baseline_rate=pb,
        canary_rate=pc,
        difference=pc - pb,
        ci_lower=lo,
        ci_upper=hi,
        conclusive=conclusive,
        samples_needed=needed,
        explanation=explanation,
        **common,
    )


def score(
    results: Iterable[MetricJudgement],
    weights: Mapping[str, float] | None = None,
    pass_threshold: float = 95.0,
    marginal_threshold: float = 75.0,
    *,
    critical: Iterable[str] = (),
) -> JudgeScore:
    """Canary score 0-100: weighted share of metrics classified Pass, over metrics that have data.

    Pass at >= ``pass_threshold``, Marginal at >= ``marginal_threshold``, else Fail. Any critical metric
    that is not Pass (including Nodata) fails the canary outright, and so does a run where no metric
    has data.
    """
    items = list(results)
    if not items:
        raise VerificationError("score: no metric results; judge at least one metric")
    if not 0 <= marginal_threshold <= pass_threshold <= 100:
        raise VerificationError("score: need 0 <= marginal_threshold <= pass_threshold <= 100")
    names = [r.metric for r in items]
    if len(set(names)) != len(names):
        raise VerificationError("score: metric names repeat; give each judged metric a unique name")
    w = dict(weights or {})
    unknown = sorted(set(w) - set(names))
    if unknown:
        raise VerificationError(f"weights: name metrics that were not judged: {unknown}")
    crit = set(critical)
    missing_crit = sorted(crit - set(names))
    if missing_crit:
        raise VerificationError(f"critical: names metrics that were not judged: {missing_crit}")
    for name, value in w.items():
        check_positive(value, f"weights[{name}]", allow_zero=True)
    with_data = [r for r in items if r.classification != "Nodata"]
    total = sum(w.get(r.metric, 1.0) for r in with_data)
    passing = sum(w.get(r.metric, 1.0) for r in with_data if r.classification == "Pass")
    value = 100.0 * passing / total if total > 0 else 0.0
    failed_critical = [r.metric for r in items if r.metric in crit and r.classification != "Pass"]
    if failed_critical or not with_data:
        verdict: Literal["Pass", "Marginal", "Fail"] = "Fail"
    elif value >= pass_threshold:
        verdict = "Pass"
    elif value >= marginal_threshold:
        verdict = "Marginal"
    else:
        verdict = "Fail"
    listing = ", ".join(f"{r.metric}={r.classification}" for r in items)
    reason = ""
    if failed_critical:
        reason = f"; critical metric(s) not Pass: {', '.join(failed_critical)}"
    elif not with_data:
        reason = "; no metric had data"
    explanation = (
        f"judge score: {fmt(value)} over {len(with_data)} metric(s) with data ({listing}); pass at"
        f" >= {fmt(pass_threshold)}, marginal at >= {fmt(marginal_threshold)}{reason} -> {verdict}."
    )
    return JudgeScore(
        check="judge.score",
        passed=verdict == "Pass",
        explanation=explanation,
        score=value,
        classification=verdict,
        pass_threshold=pass_threshold,
        marginal_threshold=marginal_threshold,
        failed_critical=failed_critical,
        metrics={r.metric: r.classification for r in items},
    )
