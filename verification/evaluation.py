"""Offline evaluation gate: is the candidate at least as good as the incumbent on the same rows?

MLflow-style thresholds can only demand improvement; a release gate needs non-inferiority: the
candidate may be slightly worse than the incumbent, by at most ``tolerance``, and no worse than an
absolute floor. Both models are scored on the same held-out rows, so the difference is estimated with
a *paired* bootstrap (each resample takes the same rows for both models), which is far tighter than
comparing two independent intervals.

Every metric is written as a function of the resampled row indices over data prepared once (rank
metrics sort each model's scores once and then only count per tied-score group), so a replicate
costs O(n) instead of re-ranking resampled data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from verification.errors import VerificationError
from verification.inputs import (
    FloatArray,
    as_float_array,
    check_positive,
    check_probability,
    check_same_length,
)
from verification.reports import Report, fmt, verdict_word

MetricName = Literal["roc_auc", "gini", "ks", "log_loss", "brier", "precision", "recall", "f1", "rmse", "mae"]
_EPS = 1e-15


Rows = np.ndarray | None  # resampled row indices (with repeats), or None for the data as given


@dataclass(frozen=True)
class _Prepared:
    """Per-model data prepared once; ``evaluate(rows)`` gives the metric on those (resampled) rows."""

    evaluate: Callable[[Rows], float]


def _rank_metric(y: FloatArray, scores: FloatArray, kind: str) -> _Prepared:
    """AUC / Gini / KS from per-group positive and negative counts (one sort, then O(n) per resample)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    group_sorted = np.cumsum(np.concatenate(([True], s[1:] != s[:-1]))) - 1
    n_groups = int(group_sorted[-1]) + 1
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    key = 2 * group + y.astype(np.int64)  # even: negative in group g, odd: positive in group g

    def evaluate(rows: Rows) -> float:
        keys = key if rows is None else key[rows]
        counts = np.bincount(keys, minlength=2 * n_groups).reshape(n_groups, 2).astype(np.float64)
        neg, pos = counts[:, 0], counts[:, 1]
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return math.nan
        if kind == "ks":
            return float(np.max(np.abs(np.cumsum(pos) / total_pos - np.cumsum(neg) / total_neg)))
        neg_below = np.cumsum(neg) - neg
        auc = float(np.dot(pos, neg_below + 0.5 * neg)) / (total_pos * total_neg)
        return auc if kind == "roc_auc" else 2 * auc - 1

    return _Prepared(evaluate)


def _mean_metric(per_row: FloatArray, root: bool = False) -> _Prepared:
    def evaluate(rows: Rows) -> float:
        value = float((per_row if rows is None else per_row[rows]).mean())
        return math.sqrt(value) if root else value

    return _Prepared(evaluate)


def _threshold_metric(y: FloatArray, scores: FloatArray, kind: str, threshold: float) -> _Prepared:
    pred = scores >= threshold
    # per row: bit 0 = predicted positive, bit 1 = actual positive
    code = pred.astype(np.int64) + 2 * y.astype(np.int64)

    def evaluate(rows: Rows) -> float:
        counts = np.bincount(code if rows is None else code[rows], minlength=4)
        tp = float(counts[3])
        predicted = float(counts[1] + counts[3])
        actual = float(counts[2] + counts[3])
        precision = tp / predicted if predicted > 0 else 0.0
        recall = tp / actual if actual > 0 else math.nan
        if kind == "precision":
            return precision
        if kind == "recall":
            return recall
        return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    return _Prepared(evaluate)


HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True,
    "gini": True,
    "ks": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "log_loss": False,
    "brier": False,
    "rmse": False,
    "mae": False,
}
_CLASSIFICATION = {"roc_auc", "gini", "ks", "log_loss", "brier", "precision", "recall", "f1"}


def _prepare(metric: str, y: FloatArray, scores: FloatArray, threshold: float) -> _Prepared:
    if metric in ("roc_auc", "gini", "ks"):
        return _rank_metric(y, scores, metric)
    if metric in ("precision", "recall", "f1"):
        return _threshold_metric(y, scores, metric, threshold)
    if metric == "log_loss":
        p = np.clip(scores, _EPS, 1 - _EPS)
        return _mean_metric(-(y * np.log(p) + (1 - y) * np.log1p(-p)))
    if metric == "brier":
        return _mean_metric((scores - y) ** 2)
    if metric == "rmse":
        return _mean_metric((scores - y) ** 2, root=True)
    if metric == "mae":
        return _mean_metric(np.abs(scores - y))
    raise VerificationError(f"metric: unknown {metric!r}; choose one of {sorted(HIGHER_IS_BETTER)}")


def _labels_and_scores(y_true: Any, scores: Any, metric: str, name: str) -> tuple[FloatArray, FloatArray]:
    y = as_float_array(y_true, "y_true")
    s = as_float_array(scores, name)
    check_same_length(y, s, f"y_true/{name}")
    if metric in _CLASSIFICATION:
        if not np.isin(y, (0.0, 1.0)).all():
            raise VerificationError("y_true: binary metrics need labels 0/1; encode the positive class as 1")
        if (s < 0).any() or (s > 1).any():
            raise VerificationError(f"{name}: scores must be probabilities in [0, 1] for {metric}")
    return y, s


def metric_value(y_true: Any, scores: Any, metric: MetricName = "roc_auc", *, threshold: float = 0.5) -> float:
    """One metric on one model's scores (ROC AUC, Gini, KS, log loss, Brier, precision/recall/F1 at
    ``threshold``, RMSE, MAE)."""
    y, s = _labels_and_scores(y_true, scores, metric, "scores")
    return _prepare(metric, y, s, threshold).evaluate(None)


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half), equal to the Mann-Whitney U / (n_pos * n_neg)."""
    return metric_value(y_true, scores, "roc_auc")


def gini(y_true: Any, scores: Any) -> float:
    """Gini coefficient, 2 * AUC - 1."""
    return metric_value(y_true, scores, "gini")


def ks_statistic(y_true: Any, scores: Any) -> float:
    """Maximum distance between the score distributions of positives and negatives."""
    return metric_value(y_true, scores, "ks")


def log_loss(y_true: Any, scores: Any) -> float:
    """Mean negative log-likelihood of the labels (probabilities clipped at 1e-15)."""
    return metric_value(y_true, scores, "log_loss")


def brier(y_true: Any, scores: Any) -> float:
    """Mean squared error of predicted probabilities."""
    return metric_value(y_true, scores, "brier")


def precision_recall_f1(y_true: Any, scores: Any, threshold: float = 0.5) -> tuple[float, float, float]:
    """Precision, recall and F1 of the decision ``score >= threshold``."""
    return (
        metric_value(y_true, scores, "precision", threshold=threshold),
        metric_value(y_true, scores, "recall", threshold=threshold),
        metric_value(y_true, scores, "f1", threshold=threshold),
    )


def rmse(y_true: Any, predictions: Any) -> float:
    """Root mean squared error of a regressor."""
    return metric_value(y_true, predictions, "rmse")


def mae(y_true: Any, predictions: Any) -> float:
    """Mean absolute error of a regressor."""
    return metric_value(y_true, predictions, "mae")


class EvaluationReport(Report):
    """Evaluation gate verdict: non-inferiority to the incumbent (when there is one) and a floor."""

    metric: str
    higher_is_better: bool
    n_rows: int
    n_positive: int | None
    candidate: float
    candidate_interval: tuple[float, float]
    incumbent: float | None
    difference: float | None
    difference_interval: tuple[float, float] | None
    tolerance: float | None
    floor: float | None
    confidence: float
    n_boot: int
    non_inferior: bool | None
    above_floor: bool
    enough_data: bool
    rows_needed: int


def _min_rows(metric: str, y: FloatArray, min_per_class: int) -> tuple[bool, int, int | None]:
    """Whether there is enough data; rows needed; positives (for binary metrics)."""
    if metric not in _CLASSIFICATION:
        return y.shape[0] >= min_per_class, min_per_class, None
    pos = int(y.sum())
    neg = y.shape[0] - pos
    short = min(pos, neg)
    if short >= min_per_class:
        return True, y.shape[0], pos
    rate = max(short, 1) / y.shape[0]
    return False, math.ceil(min_per_class / rate), pos


def _bootstrap(preps: list[_Prepared], n: int, n_boot: int, seed: int) -> np.ndarray:
    """Metric values under ``n_boot`` paired resamples of the rows: shape (n_boot, len(preps)).

    Paired: every model is evaluated on the same resampled rows in each replicate.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(preps)))
    for b in range(n_boot):
        rows = rng.integers(0, n, size=n)
        for j, prep in enumerate(preps):
            out[b, j] = prep.evaluate(rows)
    return out


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def _check_common(n_boot: int, confidence: float, min_per_class: int) -> None:
    check_probability(confidence, "confidence")
    if n_boot < 100:
        raise VerificationError(f"n_boot: {n_boot} resamples give unstable intervals; use at least 100")
    if min_per_class < 1:
        raise VerificationError("min_per_class: must be >= 1")


def evaluate_non_inferiority(
    y_true: Any,
    incumbent_scores: Any,
    candidate_scores: Any,
    *,
    metric: MetricName = "roc_auc",
    tolerance: float = 0.01,
    floor: float | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    min_per_class: int = 30,
) -> EvaluationReport:
    """Pass when the candidate is non-inferior to the incumbent on the same rows and above the floor.

    Non-inferiority: for higher-is-better metrics the lower end of the paired-bootstrap interval of
    (candidate - incumbent) is >= -tolerance; for lower-is-better metrics (log loss, Brier, RMSE, MAE)
    the upper end is <= +tolerance. ``floor`` is the worst acceptable candidate value (a minimum for
    higher-is-better metrics, a maximum otherwise), compared with the point estimate. Fewer than
    ``min_per_class`` rows of the rarer class (or rows, for regressors) fails with the rows needed.
    """
    _check_common(n_boot, confidence, min_per_class)
    check_positive(tolerance, "tolerance", allow_zero=True)
    y, inc = _labels_and_scores(y_true, incumbent_scores, metric, "incumbent_scores")
    _, cand = _labels_and_scores(y, candidate_scores, metric, "candidate_scores")
    return _evaluate(
        y,
        cand,
        inc,
        metric=metric,
        tolerance=tolerance,
        floor=floor,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        threshold=threshold,
        min_per_class=min_per_class,
    )


def evaluate_absolute(
    y_true: Any,
    candidate_scores: Any,
    *,
    metric: MetricName = "roc_auc",
    floor: float,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    min_per_class: int = 30,
) -> EvaluationReport:
    """First release (no incumbent): pass when the candidate's point value is on the right side of the
    floor; the bootstrap interval is reported beside it."""
    _check_common(n_boot, confidence, min_per_class)
    y, cand = _labels_and_scores(y_true, candidate_scores, metric, "candidate_scores")
    return _evaluate(
        y,
        cand,
        None,
        metric=metric,
        tolerance=None,
        floor=floor,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        threshold=threshold,
        min_per_class=min_per_class,
    )


def _evaluate(
    y: FloatArray,
    cand: FloatArray,
    inc: FloatArray | None,
    *,
    metric: str,
    tolerance: float | None,
    floor: float | None,
    n_boot: int,
    confidence: float,
    seed: int,
    threshold: float,
    min_per_class: int,
) -> EvaluationReport:
    higher = HIGHER_IS_BETTER.get(metric)
    if higher is None:
        raise VerificationError(f"metric: unknown {metric!r}; choose one of {sorted(HIGHER_IS_BETTER)}")
    enough, rows_needed, n_pos = _min_rows(metric, y, min_per_class)
    n = y.shape[0]
    preps = [_prepare(metric, y, cand, threshold)]
    if inc is not None:
        preps.append(_prepare(metric, y, inc, threshold))
    cand_value = preps[0].evaluate(None)
    inc_value = preps[1].evaluate(None) if inc is not None else None
    boots = _bootstrap(preps, n, n_boot, seed) if enough else np.full((1, len(preps)), math.nan)
    cand_ci = _percentile_interval(boots[:, 0], confidence)
    difference = diff_ci = None
    non_inferior: bool | None = None
    if inc is not None and inc_value is not None:
        difference = cand_value - inc_value
        diff_ci = _percentile_interval(boots[:, 0] - boots[:, 1], confidence)
        assert tolerance is not None
        decisive_ok = diff_ci[0] >= -tolerance if higher else diff_ci[1] <= tolerance
        non_inferior = bool(enough and decisive_ok)
    above_floor = floor is None or (cand_value >= floor if higher else cand_value <= floor)
    passed = bool(enough and above_floor and non_inferior is not False)
    better = "higher" if higher else "lower"
    parts = [
        f"evaluation[{metric}] ({better} is better) on {n} rows"
        + (f" ({n_pos} positive)" if n_pos is not None else "")
        + f": candidate {fmt(cand_value)} ({confidence:.0%} bootstrap interval [{fmt(cand_ci[0])},"
        f" {fmt(cand_ci[1])}], {n_boot} paired resamples)"
    ]
    if not enough:
        parts.append(
            f"too few rows: need >= {min_per_class} of the rarer class, about {rows_needed} rows at this class balance"
        )
    if inc is not None and diff_ci is not None and difference is not None:
        decisive = diff_ci[0] if higher else diff_ci[1]
        limit = -tolerance if higher and tolerance is not None else tolerance
        side = ">=" if higher else "<="
        parts.append(
            f"incumbent {fmt(inc_value)}; candidate - incumbent {fmt(difference)} with interval"
            f" [{fmt(diff_ci[0])}, {fmt(diff_ci[1])}]; non-inferiority needs the"
            f" {'lower' if higher else 'upper'} end {fmt(decisive)} {side} {fmt(limit)}"
            f" -> {'ok' if non_inferior else 'FAIL'}"
        )
    if floor is not None:
        side = ">=" if higher else "<="
        parts.append(
            f"floor: candidate {fmt(cand_value)} {side} {fmt(floor)} (margin {fmt(abs(cand_value - floor))})"
            f" -> {'ok' if above_floor else 'FAIL'}"
        )
    explanation = "; ".join(parts) + f" -> {verdict_word(passed)}."
    return EvaluationReport(
        check="evaluation.non_inferiority" if inc is not None else "evaluation.absolute",
        passed=passed,
        explanation=explanation,
        metric=metric,
        higher_is_better=higher,
        n_rows=n,
        n_positive=n_pos,
        candidate=cand_value,
        candidate_interval=cand_ci,
        incumbent=inc_value,
        difference=difference,
        difference_interval=diff_ci,
        tolerance=tolerance,
        floor=floor,
        confidence=confidence,
        n_boot=n_boot,
        non_inferior=non_inferior,
        above_floor=above_floor,
        enough_data=enough,
        rows_needed=rows_needed,
    )
