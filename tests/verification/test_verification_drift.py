"""Drift: PSI, KS / chi-square, Wasserstein, corrections and dataset verdicts vs scipy and hand values."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verification import VerificationError
from verification.drift import (
    DatasetDriftReport,
    adjust_p_values,
    dataset_drift,
    decile_edges,
    feature_drift,
    ks_and_wasserstein,
    ks_p_value,
    psi,
    psi_from_counts,
    psi_p_value,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=200)
small_ints = st.lists(st.integers(-5, 5), min_size=1, max_size=200)


def test_psi_hand_computed() -> None:
    ref = np.array([25, 25, 25, 25])
    cur = np.array([10, 20, 30, 40])
    r, c = ref / 100, cur / 100
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert psi_from_counts(ref, cur) == pytest.approx(expected)
    assert expected == pytest.approx(0.2282, abs=1e-4)


def test_psi_floors_empty_bins_at_1e4() -> None:
    value = psi_from_counts(np.array([50, 50, 0]), np.array([50, 40, 10]))
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert value == pytest.approx(expected)


def test_psi_uses_reference_deciles_with_open_outer_edges() -> None:
    ref = np.arange(1000, dtype=float)
    edges = decile_edges(ref, 10)
    np.testing.assert_allclose(edges, np.quantile(ref, np.arange(1, 10) / 10))
    # values far outside the reference range land in the outer bins rather than being dropped
    cur = np.concatenate([ref, np.full(1000, 1e9)])
    expected = psi_from_counts(np.full(10, 100), np.array([100] * 9 + [1100]))
    assert psi(ref, cur) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_psi_of_identical_windows_is_zero(values: list[float]) -> None:
    assert psi(np.array(values), np.array(values)) == 0.0


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_psi_is_non_negative(a: list[float], b: list[float]) -> None:
    assert psi(np.array(a), np.array(b)) >= 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcde"), min_size=1, max_size=100),
    st.lists(st.sampled_from("abcdef"), min_size=1, max_size=100),
)
def test_categorical_psi_is_symmetric(a: list[str], b: list[str]) -> None:
    assert psi(np.array(a), np.array(b)) == pytest.approx(psi(np.array(b), np.array(a)))


def test_psi_p_value_is_chi_square_scaled_by_sample_sizes() -> None:
    value = 0.05
    expected = stats.chi2.sf(value / (1 / 1000 + 1 / 2000), 9)
    assert psi_p_value(value, 1000, 2000, 10) == pytest.approx(expected)
    # the same PSI is noise for small windows and a real shift for large ones
    assert psi_p_value(0.05, 200, 200, 10) > 0.05
    assert psi_p_value(0.05, 100_000, 100_000, 10) < 1e-6


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(samples, small_ints.map(lambda v: [float(x) for x in v])),
    st.one_of(samples, small_ints.map(lambda v: [float(x) for x in v])),
)
def test_ks_and_wasserstein_match_scipy(a: list[float], b: list[float]) -> None:
    x, y = np.array(a), np.array(b)
    d, w = ks_and_wasserstein(np.sort(x), np.sort(y))
    assert d == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_ks_and_wasserstein_are_symmetric(a: list[float], b: list[float]) -> None:
    x, y = np.sort(np.array(a)), np.sort(np.array(b))
    d_xy, w_xy = ks_and_wasserstein(x, y)
    d_yx, w_yx = ks_and_wasserstein(y, x)
    assert d_xy == pytest.approx(d_yx, abs=1e-12)
    assert w_xy == pytest.approx(w_yx, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_ks_with_heavy_ties_matches_scipy(n: int, m: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for size_m in (m, n):  # unequal and equal window sizes take different Wasserstein paths
        x = rng.integers(0, levels, size=n).astype(float)
        y = rng.integers(0, levels, size=size_m).astype(float)
        d, w = ks_and_wasserstein(np.sort(x), np.sort(y))
        assert d == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-12)
        assert w == pytest.approx(stats.wasserstein_distance(x, y), abs=1e-9)


@pytest.mark.parametrize(
    ("n", "m", "rel"), [(300, 500, 1e-12), (9000, 10_000, 1e-12), (15_000, 30_000, 1e-9), (60_000, 80_000, 2e-2)]
)
def test_ks_p_value_matches_scipy(n: int, m: int, rel: float) -> None:
    rng = np.random.default_rng(n)
    x, y = np.sort(rng.normal(size=n)), np.sort(rng.normal(0.02, 1, size=m))
    d, _ = ks_and_wasserstein(x, y)
    expected = stats.ks_2samp(x, y, method="auto" if max(n, m) <= 30_000 else "asymp").pvalue
    assert ks_p_value(d, x, y) == pytest.approx(expected, rel=rel)


def test_feature_drift_flags_material_shift_and_explains_it() -> None:
    rng = np.random.default_rng(0)
    result = feature_drift(rng.normal(size=5000), rng.normal(1.0, 1, size=5000), name="income")
    assert result.drifted and not result.passed
    assert result.test == "ks" and result.p_value is not None and result.p_value < 1e-10
    assert result.psi is not None and result.psi > 0.25 and result.psi_band == "shifted"
    text = result.explain()
    for fragment in ("income", "PSI", "n_reference=5000", "threshold 0.25", "DRIFTED"):
        assert fragment in text


def test_feature_drift_same_distribution_is_stable() -> None:
    rng = np.random.default_rng(1)
    result = feature_drift(rng.normal(size=5000), rng.normal(size=5000))
    assert not result.drifted and result.passed
    assert result.psi is not None and result.psi < 0.1


def test_significant_but_immaterial_shift_is_not_drift() -> None:
    rng = np.random.default_rng(2)
    result = feature_drift(rng.normal(size=200_000), rng.normal(0.05, 1, size=200_000))
    assert result.p_value is not None and result.p_value < 1e-6  # KS sees it
    assert result.psi is not None and result.psi < 0.25
    assert not result.drifted


def test_tiny_windows_are_not_drift_but_do_not_pass_either() -> None:
    result = feature_drift(np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), np.array([0.0, 0.5, 1, 1.5, 9]))
    assert result.psi is not None and result.psi > 0.25
    assert result.p_value is not None and result.p_value > 0.05
    assert not result.drifted
    # 2 * chi2_{0.95}(9) / 0.25 = 135.3 rows are needed before a PSI of 0.25 can be significant
    assert result.rows_needed == 136 and not result.enough_data and not result.passed
    assert "need >= 136" in result.explain()


def test_drift_verdict_is_monotone_in_shift() -> None:
    rng = np.random.default_rng(3)
    ref, noise = rng.normal(size=3000), rng.normal(size=3000)
    shifts = np.linspace(0, 3, 16)
    results = [feature_drift(ref, noise + s) for s in shifts]
    psis = [r.psi for r in results]
    assert all(a is not None and b is not None and a <= b + 1e-12 for a, b in itertools.pairwise(psis))
    flags = [r.drifted for r in results]
    assert flags[0] is False and flags[-1] is True
    assert flags == sorted(flags)  # once drifted, stays drifted as the shift grows


def test_categorical_drift_matches_chi2_contingency_and_reports_unseen() -> None:
    ref = np.array(["a"] * 500 + ["b"] * 300 + ["c"] * 200)
    cur = np.array(["a"] * 400 + ["b"] * 300 + ["c"] * 200 + ["z"] * 100)
    result = feature_drift(ref, cur, name="segment")
    assert result.kind == "categorical" and result.test == "chi2"
    table = np.array([[500, 300, 200, 0], [400, 300, 200, 100]])
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.unseen_categories == ["z"] and result.unseen_current_rows == 100
    assert result.drifted
    assert "unseen" in result.explain()


def test_pandas_categorical_and_integer_codes_give_the_same_counts() -> None:
    rng = np.random.default_rng(4)
    ref_codes, cur_codes = rng.integers(0, 4, size=2000), rng.integers(0, 5, size=2000)
    labels = np.array(list("abcde"))
    as_cat = feature_drift(pd.Series(pd.Categorical(labels[ref_codes])), pd.Series(pd.Categorical(labels[cur_codes])))
    as_int = feature_drift(ref_codes, cur_codes, categorical=True)
    assert as_cat.kind == as_int.kind == "categorical"
    assert as_cat.psi == pytest.approx(as_int.psi)
    assert as_cat.statistic == pytest.approx(as_int.statistic)


def test_missing_rate_change_is_drift() -> None:
    rng = np.random.default_rng(5)
    cur = rng.normal(size=4000)
    cur[:400] = np.nan
    result = feature_drift(rng.normal(size=4000), cur)
    assert result.missing_current == 400 and result.missing_reference == 0
    assert result.missing_p_value is not None and result.missing_p_value < 1e-10
    assert result.drifted
    assert "missing rate" in result.explain()


def test_current_window_all_missing_is_drift_and_reference_all_missing_is_an_error() -> None:
    result = feature_drift(np.arange(100.0), np.full(100, np.nan))
    assert result.drifted and result.psi is None
    with pytest.raises(VerificationError, match="reference window is all NaN"):
        feature_drift(np.full(100, np.nan), np.arange(100.0))


def test_constant_reference_still_sees_a_move() -> None:
    stable = feature_drift(np.zeros(1000), np.zeros(1000))
    assert stable.constant_reference and not stable.drifted and stable.psi == 0.0
    moved = feature_drift(np.zeros(1000), np.full(1000, 2.0))
    assert moved.drifted and moved.psi is not None and moved.psi > 1


@pytest.mark.parametrize(
    ("ref", "cur", "message"),
    [
        (np.array([]), np.array([1.0]), "empty"),
        (np.array([1.0, np.inf]), np.array([1.0]), "infinite"),
        (np.ones((3, 2)), np.ones(3), "1-D"),
    ],
)
def test_unusable_numeric_input_raises(ref: np.ndarray, cur: np.ndarray, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        feature_drift(ref, cur)


def test_strings_declared_numeric_raise() -> None:
    with pytest.raises(VerificationError, match="not numeric"):
        feature_drift(np.array(["a", "b"]), np.array(["a", "b"]), categorical=False)


def test_adjust_p_values_bonferroni_and_bh() -> None:
    ps = [0.01, 0.04, 0.03, 0.20]
    assert adjust_p_values(ps, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.8])
    # BH by hand: sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.0533, 0.0533, 0.20 (monotone from the top)
    assert adjust_p_values(ps, "bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    with pytest.raises(VerificationError):
        adjust_p_values(ps, "holm")  # type: ignore[arg-type]


def _frame(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    cols = {f"x{i}": rng.normal(size=n) for i in range(20)}
    cols["moved"] = rng.normal(shift, 1, size=n)
    cols["segment"] = rng.choice(np.array(["retail", "sme", "corp"]), size=n)
    return cols


def test_dataset_drift_flags_only_the_moved_feature() -> None:
    rng = np.random.default_rng(6)
    report = dataset_drift(_frame(rng, 5000, 0.0), _frame(rng, 5000, 1.5), workers=2)
    assert isinstance(report, DatasetDriftReport)
    assert report.drifted_features == ["moved"]
    assert not report.passed
    assert report.n_features == 22 and report.n_tests == 22
    assert report.features["segment"].kind == "categorical"
    assert "moved" in report.explain() and "FAIL" in report.explain()


def test_dataset_drift_bonferroni_is_more_conservative_than_bh() -> None:
    rng = np.random.default_rng(7)
    ref, cur = _frame(rng, 3000, 0.0), _frame(rng, 3000, 0.0)
    bh = dataset_drift(ref, cur, correction="bh", psi_threshold=1e-9)
    bonf = dataset_drift(ref, cur, correction="bonferroni", psi_threshold=1e-9)
    for name in ref:
        assert bonf.features[name].p_adjusted >= bh.features[name].p_adjusted - 1e-15  # type: ignore[operator]


def test_dataset_drift_accepts_dataframes_and_categorical_override() -> None:
    rng = np.random.default_rng(8)
    ref = pd.DataFrame({"age": rng.normal(40, 5, size=1000), "region": rng.integers(0, 5, size=1000)})
    cur = pd.DataFrame({"age": rng.normal(40, 5, size=1000), "region": rng.integers(0, 5, size=1000)})
    report = dataset_drift(ref, cur, categorical={"region"})
    assert report.features["region"].kind == "categorical"
    assert report.features["age"].kind == "numeric"
    assert report.passed
    restored = DatasetDriftReport.model_validate_json(report.model_dump_json())
    assert restored == report
    assert json.loads(report.model_dump_json())["features"]["age"]["test"] == "ks"


def test_dataset_drift_bad_inputs() -> None:
    with pytest.raises(VerificationError, match="different columns"):
        dataset_drift({"a": np.ones(3)}, {"b": np.ones(3)})
    with pytest.raises(VerificationError, match="do not exist"):
        dataset_drift({"a": np.ones(3)}, {"a": np.ones(3)}, categorical={"nope"})
    with pytest.raises(VerificationError, match="no columns"):
        dataset_drift({}, {})
    with pytest.raises(VerificationError, match="alpha"):
        dataset_drift({"a": np.ones(3)}, {"a": np.ones(3)}, alpha=1.5)


def test_dataset_drift_with_too_few_rows_fails_and_names_the_need() -> None:
    rng = np.random.default_rng(9)
    report = dataset_drift({"a": rng.normal(size=50)}, {"a": rng.normal(size=50)})
    assert report.drifted_features == [] and report.underpowered_features == ["a"]
    assert not report.passed
    assert "too few rows to judge" in report.explain()
