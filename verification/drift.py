"""Input drift between a reference window (e.g. the prior week) and the current window.

Fixed PSI cut-offs (0.10 / 0.25) mean different things at different sample sizes, and testing fifty
features at alpha=0.05 each flags two or three by chance. So every feature gets an effect size (PSI on
reference deciles, Jensen-Shannon, normed Wasserstein) *and* a test (KS for numeric, chi-square for
categorical, a two-proportion test for the missing rate), the p-values are corrected across the whole
dataset (Benjamini-Hochberg or Bonferroni), and a feature counts as drifted only when the change is
both significant and material. The sample-size-aware significance of the PSI value itself is reported
beside the fixed rule.

Too few rows to see a material shift at all fails the feature (``enough_data``, ``rows_needed``)
instead of passing it as "stable".

Speed: one sort per window and feature; bin counts come from ``searchsorted`` on the sorted arrays, and
KS plus Wasserstein come from a single stable merge of the two sorted runs. Features run on threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from verification.errors import VerificationError
from verification.inputs import FloatArray, check_positive, check_probability
from verification.reports import Report, fmt, verdict_word

PSI_FLOOR = 1e-4
PSI_STABLE = 0.10
PSI_SHIFTED = 0.25
_EXACT_KS_MAX_N = 10_000
_KSTWO_MAX_N = 20_000
_MAX_LISTED_CATEGORIES = 20

Correction = Literal["bh", "bonferroni"]
Kind = Literal["numeric", "categorical"]


class FeatureDrift(Report):
    """Drift evidence for one feature; ``passed`` means not drifted *and* enough rows to tell."""

    feature: str
    kind: Kind
    n_reference: int
    n_current: int
    missing_reference: int
    missing_current: int
    psi: float | None
    psi_bins: int
    psi_band: Literal["stable", "investigate", "shifted", "n/a"]
    psi_p_value: float | None
    test: Literal["ks", "chi2", "none"]
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    missing_p_value: float | None
    missing_p_adjusted: float | None
    jensen_shannon: float | None
    wasserstein_normed: float | None
    constant_reference: bool
    unseen_categories: list[str]
    unseen_current_rows: int
    rows_needed: int
    enough_data: bool
    drifted: bool


class DatasetDriftReport(Report):
    """Dataset verdict: passes when no feature drifted (after correction) and none had too few rows."""

    correction: Correction
    alpha: float
    psi_threshold: float
    max_missing_change: float
    n_features: int
    n_tests: int
    drifted_features: list[str]
    underpowered_features: list[str]
    features: dict[str, FeatureDrift]


# ---------------------------------------------------------------------------------------------- PSI


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI of two histograms over the same bins; shares floored at 1e-4 so empty bins stay finite."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise VerificationError("psi_from_counts: counts must be two 1-D arrays over the same bins")
    if ref.sum() <= 0 or cur.sum() <= 0:
        raise VerificationError("psi_from_counts: a window has no observations; supply non-empty windows")
    r = np.maximum(ref / ref.sum(), PSI_FLOOR)
    c = np.maximum(cur / cur.sum(), PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def psi_p_value(psi_value: float, n_reference: int, n_current: int, bins: int) -> float:
    """P(PSI >= observed) under no drift, using PSI ~ chi2(bins - 1) * (1/n + 1/m).

    Gives the fixed 0.10/0.25 rule its missing context: with 500 rows a PSI of 0.1 is noise, with
    a million rows a PSI of 0.01 is not.
    """
    if bins < 2:
        return 1.0
    scale = 1.0 / n_reference + 1.0 / n_current
    return float(stats.chi2.sf(psi_value / scale, bins - 1))


def rows_to_detect(psi_threshold: float, bins: int, alpha: float) -> int:
    """Rows per window (equal windows) at which a PSI equal to the threshold becomes significant.

    From PSI ~ chi2(bins - 1) * (1/n + 1/m) under no drift: with n = m, 2 * chi2_{1-alpha} / threshold.
    Below it a window cannot show material drift at all, so the check fails instead of passing.
    """
    return math.ceil(2 * float(stats.chi2.isf(alpha, bins - 1)) / psi_threshold)


def psi_band(psi_value: float) -> Literal["stable", "investigate", "shifted"]:
    """The industry rule of thumb: < 0.10 stable, 0.10-0.25 investigate, > 0.25 shifted."""
    if psi_value < PSI_STABLE:
        return "stable"
    if psi_value <= PSI_SHIFTED:
        return "investigate"
    return "shifted"


def decile_edges(sorted_reference: FloatArray, bins: int = 10) -> FloatArray:
    """Interior bin edges at reference quantiles (outer edges open); duplicate edges collapse.

    A constant reference gets edges just below and at its value, giving bins below / equal / above,
    so a current window that moves either way is still visible to PSI.
    """
    n = sorted_reference.shape[0]
    positions = (n - 1) * np.arange(1, bins) / bins
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = positions - lo
    edges = sorted_reference[lo] * (1 - frac) + sorted_reference[hi] * frac
    edges = np.unique(edges)
    if sorted_reference[0] == sorted_reference[-1]:
        value = sorted_reference[0]
        edges = np.array([np.nextafter(value, -np.inf), value])
    return edges


def _bin_counts(sorted_values: FloatArray, edges: FloatArray) -> np.ndarray:
    """Counts in bins (-inf, e1], (e1, e2], ..., (ek, inf) of an already sorted array."""
    cuts = np.searchsorted(sorted_values, edges, side="right")
    return np.diff(np.concatenate(([0], cuts, [sorted_values.shape[0]])))


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """Population Stability Index of ``current`` against ``reference``.

    Numeric arrays are binned at reference deciles (``bins`` quantile bins, outer edges open); string,
    boolean or object arrays are compared over the union of their categories. NaNs are ignored here
    (``feature_drift`` reports them separately).
    """
    ref = np.asarray(reference)
    cur = np.asarray(current)
    if ref.dtype.kind in "fiu" and cur.dtype.kind in "fiu":
        ref_s = _sorted_valid(ref.astype(np.float64, copy=False), "reference")
        cur_s = _sorted_valid(cur.astype(np.float64, copy=False), "current")
        edges = decile_edges(ref_s, bins)
        return psi_from_counts(_bin_counts(ref_s, edges), _bin_counts(cur_s, edges))
    enc = _encode_categorical(reference, current)
    return psi_from_counts(enc.reference_counts, enc.current_counts)


def _sorted_valid(values: FloatArray, name: str) -> FloatArray:
    if values.ndim != 1:
        raise VerificationError(f"{name}: expected a 1-D array, got shape {values.shape}")
    if np.isinf(values).any():
        raise VerificationError(f"{name}: contains infinite values; drop or clip them before the check")
    s = np.sort(values)
    s = s[: s.shape[0] - _trailing_nans(s)]
    if s.shape[0] == 0:
        raise VerificationError(f"{name}: has no non-NaN values; supply a window with observations")
    return s


# ------------------------------------------------------------------------------------ numeric stats


def _ks_with_ties(sorted_reference: FloatArray, sorted_current: FloatArray, r: np.ndarray, tied: np.ndarray) -> float:
    """KS statistic when values repeat: evaluate only at the ends of groups of equal values."""
    n = sorted_reference.shape[0]
    m = sorted_current.shape[0]
    k = np.arange(m)
    cur_end = np.empty(m, dtype=bool)
    np.not_equal(sorted_current[1:], sorted_current[:-1], out=cur_end[:-1])
    cur_end[-1] = True
    d = float(np.abs((k[cur_end] + 1) / m - r[cur_end] / n).max())
    below = r.copy()  # reference values strictly below current k
    if tied.any():
        starts = np.arange(n)
        starts[1:][sorted_reference[1:] == sorted_reference[:-1]] = 0
        np.maximum.accumulate(starts, out=starts)  # first index of each reference value's group
        below[tied] = starts[r[tied] - 1]
    prev = np.concatenate(([0], r[:-1]))
    idx = np.flatnonzero(below > prev)  # a reference group ends strictly between current k-1 and k
    if idx.size:
        d = max(d, float(np.abs(below[idx] / n - idx / m).max()))
    return d


def ks_and_wasserstein(sorted_reference: FloatArray, sorted_current: FloatArray) -> tuple[float, float]:
    """Two-sample KS statistic and 1-Wasserstein distance of two sorted samples.

    One stable merge (timsort on the two sorted runs) gives, for every current value, R = the number
    of reference values <= it (equal reference values sort first). The ECDF difference is then
    checked where it can peak: at the end of each group of tied current values, and at the end of
    each run of reference values that is strictly below the next current value; this is exact with
    ties, like scipy's evaluation on the pooled sample, but works on n-length rather than (n+m)-length
    arrays. Wasserstein is mean |sorted difference| for equal sizes, else the integral of |F_ref -
    F_cur| over the merged support.
    """
    n = sorted_reference.shape[0]
    m = sorted_current.shape[0]
    merged = np.concatenate((sorted_reference, sorted_current))
    order = np.argsort(merged, kind="stable")
    k = np.arange(m)
    r = np.flatnonzero(order >= n)
    r -= k  # reference values <= sorted_current[k]
    last = np.maximum(r - 1, 0)
    tied = sorted_reference[last] == sorted_current
    tied &= r > 0  # a reference value equals current k (it sorts just before it)
    if not tied.any() and not np.any(sorted_current[1:] == sorted_current[:-1]):
        # no ties: every current value and every end of a reference run is an ECDF point, and
        # n*m*(F_ref - F_cur) there is r*m - k*n (before current k) or that minus n (after it)
        gap = r * m - k * n
        d = max(int(gap.max()), n - int(gap.min())) / (n * m)
    else:
        d = _ks_with_ties(sorted_reference, sorted_current, r, tied)
    if n == m:
        w1 = float(np.abs(sorted_reference - sorted_current).mean())
    else:
        values = merged[order]
        diff = np.cumsum(order < n, dtype=np.float64)
        diff *= 1.0 / n + 1.0 / m
        diff -= np.arange(1, n + m + 1, dtype=np.float64) * (1.0 / m)
        w1 = float(np.dot(np.abs(diff[:-1]), np.diff(values)))
    return d, w1


def ks_p_value(statistic: float, sorted_reference: FloatArray, sorted_current: FloatArray) -> float:
    """Two-sided KS p-value: ``scipy.stats.ks_2samp(method="auto")`` up to large samples.

    scipy's exact finite-n Kolmogorov tail (``kstwo``) takes ~0.5 s per call at n=1e6, so above an
    effective size of 20,000 the limiting distribution with Stephens' small-sample correction is used
    (relative difference from ``kstwo`` below 1% in the tail that matters at that size).
    """
    n = sorted_reference.shape[0]
    m = sorted_current.shape[0]
    if max(n, m) <= _EXACT_KS_MAX_N:
        return float(stats.ks_2samp(sorted_reference, sorted_current).pvalue)
    en = float(np.round(n * m / (n + m)))
    if en <= _KSTWO_MAX_N:
        return float(stats.kstwo.sf(statistic, en))
    root = math.sqrt(en)
    return float(stats.kstwobign.sf(statistic * (root + 0.12 + 0.11 / root)))


# --------------------------------------------------------------------------------- categorical data


@dataclass(frozen=True)
class _Categorical:
    labels: list[str]
    reference_counts: np.ndarray
    current_counts: np.ndarray
    missing_reference: int
    missing_current: int


def _encode_categorical(reference: Any, current: Any) -> _Categorical:
    """Counts per category over the union of both windows, plus missing (None/NaN) counts."""
    ref_pd = _categorical_series(reference)
    cur_pd = _categorical_series(current)
    if ref_pd is not None and cur_pd is not None:
        return _encode_pandas_categorical(ref_pd, cur_pd)
    ref = np.asarray(reference)
    cur = np.asarray(current)
    for name, arr in (("reference", ref), ("current", cur)):
        if arr.ndim != 1:
            raise VerificationError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    n_ref = ref.shape[0]
    if ref.dtype.kind in "biu" and cur.dtype.kind in "biu":
        both = np.concatenate((ref.astype(np.int64), cur.astype(np.int64)))
        if both.size == 0:
            raise VerificationError("categorical windows are empty; supply observations")
        lo, hi = int(both.min()), int(both.max())
        if hi - lo <= 1 << 20:
            ref_counts = np.bincount(both[:n_ref] - lo, minlength=hi - lo + 1)
            cur_counts = np.bincount(both[n_ref:] - lo, minlength=hi - lo + 1)
            present = (ref_counts + cur_counts) > 0
            labels = [str(v) for v in np.arange(lo, hi + 1)[present]]
            return _Categorical(labels, ref_counts[present], cur_counts[present], 0, 0)
    import pandas as pd  # lazy: only object/string columns need hashing

    both = np.concatenate((ref.astype(object), cur.astype(object)))
    codes, uniques = pd.factorize(both, use_na_sentinel=True)
    k = len(uniques)
    ref_codes, cur_codes = codes[:n_ref], codes[n_ref:]
    ref_counts = np.bincount(ref_codes[ref_codes >= 0], minlength=k)
    cur_counts = np.bincount(cur_codes[cur_codes >= 0], minlength=k)
    return _Categorical(
        [str(u) for u in uniques],
        ref_counts,
        cur_counts,
        int((ref_codes < 0).sum()),
        int((cur_codes < 0).sum()),
    )


def _categorical_series(values: Any) -> Any:
    """Return ``values`` if it is a pandas Categorical-dtype Series, else None (without importing pandas)."""
    dtype = getattr(values, "dtype", None)
    if dtype is not None and type(dtype).__name__ == "CategoricalDtype" and hasattr(values, "cat"):
        return values
    return None


def _encode_pandas_categorical(reference: Any, current: Any) -> _Categorical:
    ref_cats = list(reference.cat.categories)
    cur_cats = list(current.cat.categories)
    labels = list(dict.fromkeys([*ref_cats, *cur_cats]))
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)

    def counts(series: Any, cats: Sequence[Any]) -> tuple[np.ndarray, int]:
        codes = series.cat.codes.to_numpy()
        per_code = np.bincount(codes[codes >= 0], minlength=len(cats))
        out = np.zeros(k, dtype=np.int64)
        out[[index[c] for c in cats]] = per_code
        return out, int((codes < 0).sum())

    ref_counts, ref_missing = counts(reference, ref_cats)
    cur_counts, cur_missing = counts(current, cur_cats)
    present = (ref_counts + cur_counts) > 0
    kept = [str(label) for label, keep in zip(labels, present, strict=True) if keep]
    return _Categorical(kept, ref_counts[present], cur_counts[present], ref_missing, cur_missing)


# ------------------------------------------------------------------------------ per-feature stats


@dataclass
class _Stats:
    """Raw, uncorrected numbers for one feature (the verdict needs the dataset-wide correction)."""

    feature: str
    kind: Kind
    n_reference: int
    n_current: int
    missing_reference: int
    missing_current: int
    psi: float | None = None
    psi_bins: int = 0
    psi_p_value: float | None = None
    test: Literal["ks", "chi2", "none"] = "none"
    statistic: float | None = None
    p_value: float | None = None
    missing_p_value: float | None = None
    jensen_shannon: float | None = None
    wasserstein_normed: float | None = None
    constant_reference: bool = False
    unseen_categories: list[str] = field(default_factory=list)
    unseen_current_rows: int = 0


def _numeric_stats(name: str, reference: Any, current: Any, bins: int) -> _Stats:
    ref = _numeric_column(reference, f"{name} (reference)")
    cur = _numeric_column(current, f"{name} (current)")
    ref_s = np.sort(ref)
    cur_s = np.sort(cur)
    ref_valid = ref_s.shape[0] - _trailing_nans(ref_s)
    cur_valid = cur_s.shape[0] - _trailing_nans(cur_s)
    out = _Stats(
        feature=name,
        kind="numeric",
        n_reference=ref.shape[0],
        n_current=cur.shape[0],
        missing_reference=ref.shape[0] - ref_valid,
        missing_current=cur.shape[0] - cur_valid,
    )
    if ref_valid == 0:
        raise VerificationError(
            f"{name}: the reference window is all NaN; choose a reference window where it is populated"
        )
    ref_s = ref_s[:ref_valid]
    cur_s = cur_s[:cur_valid]
    out.missing_p_value = _missing_p_value(out)
    out.constant_reference = bool(ref_s[0] == ref_s[-1])
    if cur_valid == 0:
        return out
    edges = decile_edges(ref_s, bins)
    ref_counts = _bin_counts(ref_s, edges)
    cur_counts = _bin_counts(cur_s, edges)
    out.psi = psi_from_counts(ref_counts, cur_counts)
    out.psi_bins = int(edges.shape[0] + 1)
    out.psi_p_value = psi_p_value(out.psi, ref_valid, cur_valid, out.psi_bins)
    out.jensen_shannon = _js(ref_counts, cur_counts)
    d, w1 = ks_and_wasserstein(ref_s, cur_s)
    out.test = "ks"
    out.statistic = d
    out.p_value = ks_p_value(d, ref_s, cur_s)
    std = float(np.std(ref_s))
    out.wasserstein_normed = w1 / std if std > 0 else (0.0 if w1 == 0 else None)
    return out


def _categorical_stats(name: str, reference: Any, current: Any) -> _Stats:
    enc = _encode_categorical(reference, current)
    n_ref = int(enc.reference_counts.sum()) + enc.missing_reference
    n_cur = int(enc.current_counts.sum()) + enc.missing_current
    if n_ref == 0 or n_cur == 0:
        which = "reference" if n_ref == 0 else "current"
        raise VerificationError(f"{name}: the {which} window is empty; supply observations for both windows")
    out = _Stats(
        feature=name,
        kind="categorical",
        n_reference=n_ref,
        n_current=n_cur,
        missing_reference=enc.missing_reference,
        missing_current=enc.missing_current,
    )
    if enc.reference_counts.sum() == 0:
        raise VerificationError(
            f"{name}: the reference window is all missing; choose a reference window where it is populated"
        )
    out.missing_p_value = _missing_p_value(out)
    out.constant_reference = int((enc.reference_counts > 0).sum()) == 1
    unseen = (enc.reference_counts == 0) & (enc.current_counts > 0)
    unseen_labels = [lab for lab, u in zip(enc.labels, unseen, strict=True) if u]
    out.unseen_categories = unseen_labels[:_MAX_LISTED_CATEGORIES]
    out.unseen_current_rows = int(enc.current_counts[unseen].sum())
    if enc.current_counts.sum() == 0:
        return out
    out.psi = psi_from_counts(enc.reference_counts, enc.current_counts)
    out.psi_bins = len(enc.labels)
    out.psi_p_value = psi_p_value(out.psi, int(enc.reference_counts.sum()), int(enc.current_counts.sum()), out.psi_bins)
    out.jensen_shannon = _js(enc.reference_counts, enc.current_counts)
    out.test = "chi2"
    if len(enc.labels) < 2:
        out.statistic, out.p_value = 0.0, 1.0
    else:
        table = np.vstack((enc.reference_counts, enc.current_counts))
        res = stats.chi2_contingency(table, correction=False)
        out.statistic, out.p_value = float(res.statistic), float(res.pvalue)
    return out


def _numeric_column(values: Any, name: str) -> FloatArray:
    to_numpy = getattr(values, "to_numpy", None)
    arr = to_numpy(dtype=np.float64, na_value=np.nan) if to_numpy is not None else np.asarray(values)
    if arr.ndim != 1:
        raise VerificationError(f"{name}: expected a 1-D column, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise VerificationError(
            f"{name}: dtype {arr.dtype} is not numeric; pass it in `categorical=` or convert it to float"
        )
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[0] == 0:
        raise VerificationError(f"{name}: the window is empty; supply at least one row")
    if np.isinf(arr).any():
        raise VerificationError(f"{name}: contains infinite values; clip or drop them upstream")
    return arr


def _trailing_nans(sorted_values: FloatArray) -> int:
    """NaNs sort to the end; count them without scanning the whole array when there are none."""
    if sorted_values.shape[0] == 0 or not np.isnan(sorted_values[-1]):
        return 0
    return int(sorted_values.shape[0] - np.searchsorted(np.isnan(sorted_values), True))


def _js(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms."""
    return float(jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum(), base=2))


def _missing_p_value(s: _Stats) -> float | None:
    """Fisher/chi-square test that the missing rate changed; None when neither window has missing values."""
    if s.missing_reference == 0 and s.missing_current == 0:
        return None
    table = np.array(
        [
            [s.missing_reference, s.n_reference - s.missing_reference],
            [s.missing_current, s.n_current - s.missing_current],
        ]
    )
    if table.min() < 5:
        return float(stats.fisher_exact(table).pvalue)
    return float(stats.chi2_contingency(table, correction=True).pvalue)


# ------------------------------------------------------------------------------------ verdicts


def adjust_p_values(p_values: Sequence[float], correction: Correction) -> list[float]:
    """Bonferroni (family-wise) or Benjamini-Hochberg (false discovery rate) adjusted p-values."""
    ps = np.asarray(p_values, dtype=np.float64)
    if ps.size == 0:
        return []
    if correction == "bonferroni":
        return [float(p) for p in np.minimum(ps * ps.size, 1.0)]
    if correction == "bh":
        return [float(p) for p in stats.false_discovery_control(ps, method="bh")]
    raise VerificationError(f"correction: unknown value {correction!r}; use 'bh' or 'bonferroni'")


def _finalize(
    s: _Stats,
    p_adj: float | None,
    missing_p_adj: float | None,
    *,
    alpha: float,
    psi_threshold: float,
    max_missing_change: float,
    n_tests: int,
    correction: Correction,
) -> FeatureDrift:
    ref_rate = s.missing_reference / s.n_reference
    cur_rate = s.missing_current / s.n_current
    missing_change = cur_rate - ref_rate
    missing_drift = missing_p_adj is not None and missing_p_adj < alpha and abs(missing_change) > max_missing_change
    all_missing_now = s.psi is None
    distribution_drift = s.psi is not None and p_adj is not None and p_adj < alpha and s.psi > psi_threshold
    drifted = bool(missing_drift or distribution_drift or all_missing_now)
    rows_needed = rows_to_detect(psi_threshold, max(s.psi_bins, 2), alpha)
    valid = min(s.n_reference - s.missing_reference, s.n_current - s.missing_current)
    enough = all_missing_now or valid >= rows_needed
    band = psi_band(s.psi) if s.psi is not None else "n/a"
    parts = [f"drift[{s.feature}] ({s.kind}): n_reference={s.n_reference}, n_current={s.n_current}"]
    if s.psi is None:
        parts.append("the current window has no non-missing values, so the feature is treated as drifted")
    else:
        test_name = "KS D" if s.test == "ks" else "chi-square"
        rel = "above" if s.psi > psi_threshold else "within"
        parts.append(
            f"PSI {fmt(s.psi)} over {s.psi_bins} bins is {rel} the threshold {fmt(psi_threshold)}"
            f" by {fmt(abs(s.psi - psi_threshold))} (rule of thumb: {band}; chance of a PSI this large"
            f" with no drift at these sample sizes p={fmt(s.psi_p_value)})"
        )
        parts.append(
            f"{test_name}={fmt(s.statistic)}, p={fmt(s.p_value)}, {correction}-adjusted over {n_tests} tests"
            f" p={fmt(p_adj)} vs alpha {fmt(alpha)}; Jensen-Shannon {fmt(s.jensen_shannon)}"
            + (f", normed Wasserstein {fmt(s.wasserstein_normed)}" if s.kind == "numeric" else "")
        )
    if s.missing_p_value is not None:
        parts.append(
            f"missing rate {ref_rate:.2%} -> {cur_rate:.2%} (change {missing_change:+.2%}, allowed"
            f" {max_missing_change:.2%}, adjusted p={fmt(missing_p_adj)})"
        )
    if s.unseen_current_rows:
        parts.append(
            f"{s.unseen_current_rows} current rows carry categories unseen in the reference"
            f" ({', '.join(s.unseen_categories)})"
        )
    if s.constant_reference:
        parts.append("the reference window is constant")
    if drifted:
        reasons = []
        if distribution_drift:
            reasons.append("distribution shift is both significant and above the PSI threshold")
        if missing_drift:
            reasons.append("missing rate changed significantly beyond the allowed change")
        if all_missing_now:
            reasons.append("feature is entirely missing in the current window")
        result = f"-> DRIFTED: {'; '.join(reasons)}."
    elif not enough:
        result = (
            f"-> FAIL: too few rows to detect a PSI of {fmt(psi_threshold)} ({valid} non-missing rows in the"
            f" smaller window, need >= {rows_needed})."
        )
    else:
        result = "-> stable: no change that is both significant and material."
    explanation = "; ".join(parts) + " " + result
    return FeatureDrift(
        check="drift.feature",
        passed=not drifted and enough,
        explanation=explanation,
        feature=s.feature,
        kind=s.kind,
        n_reference=s.n_reference,
        n_current=s.n_current,
        missing_reference=s.missing_reference,
        missing_current=s.missing_current,
        psi=s.psi,
        psi_bins=s.psi_bins,
        psi_band=band,
        psi_p_value=s.psi_p_value,
        test=s.test,
        statistic=s.statistic,
        p_value=s.p_value,
        p_adjusted=p_adj,
        missing_p_value=s.missing_p_value,
        missing_p_adjusted=missing_p_adj,
        jensen_shannon=s.jensen_shannon,
        wasserstein_normed=s.wasserstein_normed,
        constant_reference=s.constant_reference,
        unseen_categories=s.unseen_categories,
        unseen_current_rows=s.unseen_current_rows,
        rows_needed=rows_needed,
        enough_data=enough,
        drifted=drifted,
    )


def _check_params(alpha: float, psi_threshold: float, bins: int, max_missing_change: float) -> None:
    check_probability(alpha, "alpha")
    check_positive(psi_threshold, "psi_threshold")
    check_positive(max_missing_change, "max_missing_change", allow_zero=True)
    if bins < 2:
        raise VerificationError(f"bins: need at least 2 quantile bins, got {bins}")


def _is_categorical(values: Any) -> bool:
    if _categorical_series(values) is not None:
        return True
    dtype = getattr(values, "dtype", None)
    kind = (dtype if dtype is not None else np.asarray(values).dtype).kind
    return kind not in "iuf"


def _feature_stats(name: str, reference: Any, current: Any, categorical: bool, bins: int) -> _Stats:
    if categorical:
        return _categorical_stats(name, reference, current)
    return _numeric_stats(name, reference, current, bins)


def feature_drift(
    reference: Any,
    current: Any,
    *,
    name: str = "feature",
    categorical: bool | None = None,
    bins: int = 10,
    alpha: float = 0.05,
    psi_threshold: float = PSI_SHIFTED,
    max_missing_change: float = 0.01,
    correction: Correction = "bonferroni",
) -> FeatureDrift:
    """Drift of one feature; its own tests (distribution, missing rate) are corrected together.

    ``categorical`` defaults to detection from dtype: numbers are numeric, everything else
    (strings, objects, booleans, pandas categoricals) is categorical.
    """
    _check_params(alpha, psi_threshold, bins, max_missing_change)
    is_cat = _is_categorical(reference) if categorical is None else categorical
    s = _feature_stats(name, reference, current, is_cat, bins)
    return _verdicts(
        [s],
        alpha=alpha,
        psi_threshold=psi_threshold,
        max_missing_change=max_missing_change,
        correction=correction,
    )[name]


def _verdicts(
    all_stats: Sequence[_Stats],
    *,
    alpha: float,
    psi_threshold: float,
    max_missing_change: float,
    correction: Correction,
) -> dict[str, FeatureDrift]:
    """Correct every p-value of the dataset as one family, then decide each feature."""
    family: list[float] = []
    slots: list[tuple[int | None, int | None]] = []
    for s in all_stats:
        dist = missing = None
        if s.p_value is not None:
            dist = len(family)
            family.append(s.p_value)
        if s.missing_p_value is not None:
            missing = len(family)
            family.append(s.missing_p_value)
        slots.append((dist, missing))
    adjusted = adjust_p_values(family, correction)
    out: dict[str, FeatureDrift] = {}
    for s, (dist, missing) in zip(all_stats, slots, strict=True):
        out[s.feature] = _finalize(
            s,
            adjusted[dist] if dist is not None else None,
            adjusted[missing] if missing is not None else None,
            alpha=alpha,
            psi_threshold=psi_threshold,
            max_missing_change=max_missing_change,
            n_tests=len(family),
            correction=correction,
        )
    return out


def _columns(data: Any, name: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        cols = dict(data)
    elif hasattr(data, "columns") and hasattr(data, "__getitem__"):
        cols = {str(c): data[c] for c in data.columns}
    else:
        raise VerificationError(f"{name}: expected a mapping of column -> array or a pandas DataFrame")
    if not cols:
        raise VerificationError(f"{name}: has no columns; pass at least one feature")
    return cols


def dataset_drift(
    reference: Mapping[str, Any] | Any,
    current: Mapping[str, Any] | Any,
    *,
    correction: Correction = "bh",
    alpha: float = 0.05,
    psi_threshold: float = PSI_SHIFTED,
    categorical: set[str] | None = None,
    bins: int = 10,
    max_missing_change: float = 0.01,
    workers: int | None = None,
) -> DatasetDriftReport:
    """Drift of every feature of ``current`` against ``reference`` with one multiple-testing correction.

    A feature drifts when its distribution test is significant after correction *and* its PSI exceeds
    ``psi_threshold`` (so a million-row window does not flag negligible shifts and a small window
    does not flag noise), when its missing rate changes significantly by more than
    ``max_missing_change``, or when it is entirely missing in the current window. The dataset passes
    when no feature drifted. ``categorical`` names columns to treat as categorical in addition to
    those detected from dtype. Features are computed on ``workers`` threads (default: CPU count);
    numpy releases the GIL in the sorts that dominate the cost.
    """
    _check_params(alpha, psi_threshold, bins, max_missing_change)
    if correction not in ("bh", "bonferroni"):
        raise VerificationError(f"correction: unknown value {correction!r}; use 'bh' or 'bonferroni'")
    ref_cols = _columns(reference, "reference")
    cur_cols = _columns(current, "current")
    if set(ref_cols) != set(cur_cols):
        only_ref = sorted(set(ref_cols) - set(cur_cols))
        only_cur = sorted(set(cur_cols) - set(ref_cols))
        raise VerificationError(
            f"reference and current have different columns (only in reference: {only_ref}, only in current:"
            f" {only_cur}); compare the same feature set"
        )
    unknown = sorted((categorical or set()) - set(ref_cols))
    if unknown:
        raise VerificationError(f"categorical: names columns that do not exist: {unknown}")
    names = list(ref_cols)
    cat = {n: (n in (categorical or set())) or _is_categorical(ref_cols[n]) for n in names}

    def one(name: str) -> _Stats:
        return _feature_stats(name, ref_cols[name], cur_cols[name], cat[name], bins)

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(names)))
    if n_workers == 1:
        all_stats = [one(n) for n in names]
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            all_stats = list(pool.map(one, names))
    features = _verdicts(
        all_stats,
        alpha=alpha,
        psi_threshold=psi_threshold,
        max_missing_change=max_missing_change,
        correction=correction,
    )
    drifted = [n for n, f in features.items() if f.drifted]
    underpowered = [n for n, f in features.items() if not f.enough_data]
    n_tests = sum((s.p_value is not None) + (s.missing_p_value is not None) for s in all_stats)
    passed = not drifted and not underpowered
    worst = sorted(features.values(), key=lambda f: -(f.psi if f.psi is not None else math.inf))[:3]
    worst_txt = ", ".join(f"{f.feature} PSI {fmt(f.psi)} (adj. p={fmt(f.p_adjusted)})" for f in worst)
    explanation = (
        f"drift[dataset]: {len(names)} features ({sum(cat.values())} categorical), {n_tests} tests corrected"
        f" with {correction} at alpha {fmt(alpha)}; a feature drifts when significant and PSI >"
        f" {fmt(psi_threshold)}, or when its missing rate moves by more than {max_missing_change:.2%};"
        f" largest PSI: {worst_txt}; drifted: {len(drifted)}"
        + (f" ({', '.join(drifted[:_MAX_LISTED_CATEGORIES])})" if drifted else "")
        + (
            f"; too few rows to judge: {', '.join(underpowered[:_MAX_LISTED_CATEGORIES])}"
            f" (need >= {max(features[n].rows_needed for n in underpowered)} per window)"
            if underpowered
            else ""
        )
        + f" -> {verdict_word(passed)}."
    )
    return DatasetDriftReport(
        check="drift.dataset",
        passed=passed,
        explanation=explanation,
        correction=correction,
        alpha=alpha,
        psi_threshold=psi_threshold,
        max_missing_change=max_missing_change,
        n_features=len(names),
        n_tests=n_tests,
        drifted_features=drifted,
        underpowered_features=underpowered,
        features=features,
    )
