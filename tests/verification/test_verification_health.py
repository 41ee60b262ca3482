"""Production health signals behind the automatic rollback: significant breaches only, no data is never health."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from verification import VerificationError
from verification.health import (
    HealthVerdict,
    SignalResult,
    assess,
    clopper_pearson_lower,
    divergence_signal,
    error_rate_signal,
    latency_signal,
    missing_telemetry_signal,
)

DIVERGENCE = {"decision_threshold": 0.5, "max_disagreement": 0.02, "confidence": 0.95, "min_pairs": 30}
ERRORS = {"max_error_rate": 0.01, "confidence": 0.95, "min_requests": 200}
LATENCY = {"max_p99_ms": 300.0, "min_requests": 100}


def _exact_lower(events: int, trials: int, confidence: float) -> float:
    """The one-sided exact bound as scipy's binomtest computes it (an independent route to the same number)."""
    return float(stats.binomtest(events, trials, alternative="greater").proportion_ci(confidence, "exact").low)


def _flipped_pairs(n: int, flips: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Previous scores away from 0.5; live equal to them except ``flips`` pairs mirrored across 0.5."""
    rng = np.random.default_rng(seed)
    previous = np.where(rng.random(n) < 0.5, rng.uniform(0.05, 0.45, n), rng.uniform(0.55, 0.95, n))
    live = previous + rng.normal(0, 0.01, n)  # small score noise that crosses no threshold
    idx = rng.choice(n, size=flips, replace=False)
    live[idx] = 1.0 - previous[idx]
    return live, previous


# ------------------------------------------------------------------------------------ divergence


def test_divergence_clear_breach() -> None:
    live, previous = _flipped_pairs(200, 60, seed=1)
    result = divergence_signal(live, previous, **DIVERGENCE)
    assert result.signal == "divergence"
    assert result.state == "breached"
    assert result.samples == 200
    assert result.observed == pytest.approx(0.30)
    assert result.bound == pytest.approx(_exact_lower(60, 200, 0.95), rel=1e-9)
    assert result.bound is not None and 0.02 < result.bound < 0.30
    assert result.threshold == 0.02
    text = result.explanation
    assert "60 of 200" in text and "0.02" in text and "breached" in text
    assert f"by {result.bound - 0.02:.4g}" in text


def test_divergence_above_limit_but_not_significant_is_healthy_and_says_so() -> None:
    previous = np.full(40, 0.2)
    live = previous.copy()
    live[:2] = 0.9  # 2 of 40 flip: observed 5% against a 2% limit
    result = divergence_signal(live, previous, **DIVERGENCE)
    assert result.observed == pytest.approx(0.05)
    assert result.observed > result.threshold
    assert result.bound is not None and result.bound < 0.02
    assert result.bound == pytest.approx(_exact_lower(2, 40, 0.95), rel=1e-9)
    assert result.state == "healthy"
    assert "not significant" in result.explanation
    assert "on 40 pairs" in result.explanation


def test_divergence_same_rate_on_more_pairs_breaches() -> None:
    # the 5% rate that was noise on 40 pairs is significant on 2000
    live, previous = _flipped_pairs(2000, 100, seed=2)
    result = divergence_signal(live, previous, **DIVERGENCE)
    assert result.observed == pytest.approx(0.05)
    assert result.state == "breached"


def test_divergence_no_flips_is_healthy_with_zero_bound() -> None:
    live, previous = _flipped_pairs(500, 0, seed=3)
    result = divergence_signal(live, previous, **DIVERGENCE)
    assert (result.state, result.observed, result.bound) == ("healthy", 0.0, 0.0)
    assert "margin 0.02" in result.explanation


def test_divergence_score_at_threshold_counts_as_positive() -> None:
    live = np.array([0.5] * 40)
    previous = np.array([0.4999] * 40)
    result = divergence_signal(live, previous, **DIVERGENCE)
    assert result.observed == 1.0
    assert result.state == "breached"
    same_side = divergence_signal(np.full(40, 0.5), np.full(40, 0.7), **DIVERGENCE)
    assert same_side.observed == 0.0


def test_divergence_insufficient_below_min_pairs_even_when_every_pair_flips() -> None:
    result = divergence_signal([0.9] * 29, [0.1] * 29, **DIVERGENCE)
    assert result.state == "insufficient"
    assert result.observed == 1.0
    assert result.bound is None
    assert result.samples == 29
    assert "fewer than the 30 pairs" in result.explanation


def test_divergence_empty_window_is_insufficient_not_an_error() -> None:
    result = divergence_signal([], [], **DIVERGENCE)
    assert result.state == "insufficient"
    assert (result.observed, result.bound, result.samples) == (None, None, 0)


@pytest.mark.parametrize(
    ("live", "previous", "message"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2], "lengths differ"),
        ([0.1, math.nan], [0.1, 0.2], "non-finite"),
        ([0.1, 0.2], [0.1, math.inf], "non-finite"),
        ([[0.1, 0.2]], [[0.1, 0.2]], "1-D"),
        (["a", "b"], ["c", "d"], "numeric"),
    ],
)
def test_divergence_rejects_bad_scores(live: object, previous: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        divergence_signal(live, previous, **DIVERGENCE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"max_disagreement": 1.0}, "max_disagreement"),
        ({"max_disagreement": -0.1}, "max_disagreement"),
        ({"min_pairs": 0}, "min_pairs"),
        ({"min_pairs": 2.5}, "min_pairs"),
        ({"decision_threshold": math.nan}, "decision_threshold"),
    ],
)
def test_divergence_rejects_bad_parameters(override: dict[str, float], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        divergence_signal([0.1], [0.2], **{**DIVERGENCE, **override})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ error rate


def test_error_rate_breach() -> None:
    result = error_rate_signal(50, 1000, **ERRORS)
    assert result.state == "breached"
    assert result.observed == pytest.approx(0.05)
    assert result.bound == pytest.approx(_exact_lower(50, 1000, 0.95), rel=1e-9)
    assert result.bound is not None and result.bound > 0.01
    assert "50 of 1000 requests failed" in result.explanation and "on 1000 requests" in result.explanation


def test_error_rate_healthy() -> None:
    result = error_rate_signal(5, 1000, **ERRORS)
    assert result.state == "healthy"
    assert result.observed == pytest.approx(0.005)
    assert result.bound is not None and result.bound < 0.01
    assert "within the limit" in result.explanation


@pytest.mark.parametrize(("errors", "requests"), [(None, 1000), (3, None), (None, None)])
def test_error_rate_without_telemetry_is_insufficient(errors: int | None, requests: int | None) -> None:
    result = error_rate_signal(errors, requests, **ERRORS)
    assert result.state == "insufficient"
    assert (result.observed, result.bound, result.samples) == (None, None, 0)
    assert "no telemetry" in result.explanation


def test_error_rate_below_min_requests_is_insufficient_even_if_all_fail() -> None:
    result = error_rate_signal(150, 150, **ERRORS)
    assert result.state == "insufficient"
    assert result.samples == 150 and result.observed == 1.0
    assert result.bound is None


def test_error_rate_accepts_integral_floats_and_numpy_counts() -> None:
    result = error_rate_signal(np.int64(50), 1000.0, **ERRORS)  # type: ignore[arg-type]
    assert result.state == "breached" and result.samples == 1000


@pytest.mark.parametrize(
    ("errors", "requests", "message"),
    [(11, 10, "exceeds requests"), (-1, 10, "errors"), (1.5, 10, "round counts"), (True, 10, "errors")],
)
def test_error_rate_rejects_bad_counts(errors: object, requests: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        error_rate_signal(errors, requests, **ERRORS)  # type: ignore[arg-type]


def test_error_rate_false_alarms_stay_below_alpha_at_the_limit() -> None:
    # true error rate exactly at the limit: a breach would be a false alarm, allowed at most 5% of the time
    rng = np.random.default_rng(7)
    draws = rng.binomial(2000, 0.01, size=2000)
    alarms = sum(error_rate_signal(int(k), 2000, **ERRORS).state == "breached" for k in draws)
    assert alarms / draws.size <= 0.05
    # and at three times the limit the same window detects it nearly always
    bad = rng.binomial(2000, 0.03, size=500)
    detected = sum(error_rate_signal(int(k), 2000, **ERRORS).state == "breached" for k in bad)
    assert detected / bad.size >= 0.99


def test_clopper_pearson_lower_matches_binomtest_and_is_below_the_rate() -> None:
    for events, trials in [(1, 10), (7, 50), (30, 30), (123, 4567)]:
        bound = clopper_pearson_lower(events, trials, 0.99)
        assert bound == pytest.approx(_exact_lower(events, trials, 0.99), rel=1e-9)
        assert 0.0 < bound < events / trials
    assert clopper_pearson_lower(0, 10, 0.95) == 0.0
    with pytest.raises(VerificationError):
        clopper_pearson_lower(3, 0, 0.95)


# --------------------------------------------------------------------------------------- latency


def test_latency_breach_says_by_how_much_and_on_how_many() -> None:
    result = latency_signal(450.0, 5000, **LATENCY)
    assert result.state == "breached"
    assert (result.observed, result.bound, result.threshold, result.samples) == (450.0, None, 300.0, 5000)
    assert "by 150 ms" in result.explanation and "5000 requests" in result.explanation


def test_latency_healthy() -> None:
    result = latency_signal(200.0, 5000, **LATENCY)
    assert result.state == "healthy"
    assert "margin 100 ms" in result.explanation


def test_latency_at_the_limit_is_not_a_breach() -> None:
    assert latency_signal(300.0, 5000, **LATENCY).state == "healthy"


@pytest.mark.parametrize(("p99", "requests"), [(None, 5000), (200.0, None), (math.nan, 5000), (900.0, 99)])
def test_latency_without_enough_data_is_insufficient(p99: float | None, requests: int | None) -> None:
    result = latency_signal(p99, requests, **LATENCY)
    assert result.state == "insufficient"
    assert result.bound is None


def test_latency_in_the_inf_bucket_breaches_and_survives_json() -> None:
    result = latency_signal(math.inf, 5000, **LATENCY)
    assert result.state == "breached"
    assert "+Inf bucket" in result.explanation
    assert SignalResult.model_validate_json(result.model_dump_json()) == result


def test_latency_rejects_negative_p99_and_bad_limit() -> None:
    with pytest.raises(VerificationError, match="p99_ms"):
        latency_signal(-1.0, 5000, **LATENCY)
    with pytest.raises(VerificationError, match="max_p99_ms"):
        latency_signal(100.0, 5000, max_p99_ms=0.0, min_requests=100)


# ------------------------------------------------------------------------------ missing telemetry


def test_missing_telemetry_breaches_after_the_window_when_never_seen() -> None:
    result = missing_telemetry_signal(None, now=1400.0, started_at=1000.0, window_seconds=300.0)
    assert result.signal == "telemetry"
    assert result.state == "breached"
    assert (result.observed, result.threshold, result.samples) == (400.0, 300.0, 0)
    assert "no telemetry for 400 s" in result.explanation
    assert "missing telemetry never counts as healthy" in result.explanation


def test_missing_telemetry_breaches_when_last_data_is_too_old() -> None:
    result = missing_telemetry_signal(1050.0, now=1400.0, started_at=1000.0, window_seconds=300.0)
    assert result.state == "breached" and result.observed == 350.0


def test_missing_telemetry_healthy_within_the_window() -> None:
    fresh = missing_telemetry_signal(1350.0, now=1400.0, started_at=1000.0, window_seconds=300.0)
    assert fresh.state == "healthy" and fresh.observed == 50.0
    just_started = missing_telemetry_signal(None, now=1300.0, started_at=1000.0, window_seconds=300.0)
    assert just_started.state == "healthy" and just_started.observed == 300.0  # breach only when exceeded


def test_missing_telemetry_ignores_data_from_before_the_watch_and_tolerates_skew() -> None:
    before = missing_telemetry_signal(10.0, now=1100.0, started_at=1000.0, window_seconds=300.0)
    assert before.state == "healthy" and before.observed == 100.0  # counted from started_at, not from t=10
    skewed = missing_telemetry_signal(1401.0, now=1400.0, started_at=1000.0, window_seconds=300.0)
    assert skewed.state == "healthy" and skewed.observed == 0.0


@pytest.mark.parametrize(
    ("last", "now", "started", "window", "message"),
    [
        (None, 900.0, 1000.0, 300.0, "before started_at"),
        (None, 1400.0, 1000.0, 0.0, "window_seconds"),
        (math.nan, 1400.0, 1000.0, 300.0, "last_data_at"),
        (None, math.inf, 1000.0, 300.0, "now"),
    ],
)
def test_missing_telemetry_rejects_bad_times(
    last: float | None, now: float, started: float, window: float, message: str
) -> None:
    with pytest.raises(VerificationError, match=message):
        missing_telemetry_signal(last, now, started, window_seconds=window)


# ---------------------------------------------------------------------------------------- assess


def _healthy_signals() -> list[SignalResult]:
    return [
        error_rate_signal(2, 1000, **ERRORS),
        latency_signal(120.0, 1000, **LATENCY),
        missing_telemetry_signal(990.0, 1000.0, 0.0, window_seconds=300.0),
    ]


def test_assess_all_healthy() -> None:
    verdict = assess(_healthy_signals())
    assert verdict.healthy
    assert verdict.breached == []
    assert len(verdict.signals) == 3
    assert verdict.explanation.startswith("healthy: ")


def test_assess_one_breach_is_not_healthy_and_named_first() -> None:
    breach = latency_signal(450.0, 5000, **LATENCY)
    signals = [*_healthy_signals()[:1], breach, *_healthy_signals()[2:]]
    verdict = assess(signals)
    assert not verdict.healthy
    assert verdict.breached == [breach]
    assert verdict.explanation.startswith("breach: " + breach.explanation)


def test_assess_several_breaches_keep_their_order() -> None:
    first = error_rate_signal(50, 1000, **ERRORS)
    second = missing_telemetry_signal(None, 1400.0, 1000.0, window_seconds=300.0)
    verdict = assess([latency_signal(100.0, 1000, **LATENCY), first, second])
    assert [s.signal for s in verdict.breached] == ["error_rate", "telemetry"]
    assert verdict.explanation.startswith("breach: error_rate:")
    assert second.explanation in verdict.explanation


def test_assess_all_insufficient_is_not_healthy() -> None:
    signals = [
        divergence_signal([], [], **DIVERGENCE),
        error_rate_signal(None, None, **ERRORS),
        latency_signal(None, None, **LATENCY),
    ]
    verdict = assess(signals)
    assert not verdict.healthy
    assert verdict.breached == []
    assert verdict.explanation.startswith("insufficient data: ")


def test_assess_healthy_plus_insufficient_is_not_healthy() -> None:
    verdict = assess([*_healthy_signals(), error_rate_signal(None, 10, **ERRORS)])
    assert not verdict.healthy and verdict.breached == []
    assert verdict.explanation.startswith("insufficient data: error_rate:")


def test_assess_nothing_is_not_healthy() -> None:
    verdict = assess([])
    assert not verdict.healthy
    assert verdict.explanation.startswith("insufficient data: ")


def test_results_are_frozen_strict_and_round_trip() -> None:
    result = error_rate_signal(50, 1000, **ERRORS)
    with pytest.raises(ValidationError):
        result.state = "healthy"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SignalResult(**result.model_dump(), extra="x")
    with pytest.raises(ValidationError):
        SignalResult(**{**result.model_dump(), "state": "unknown"})
    verdict = assess([result])
    assert HealthVerdict.model_validate_json(verdict.model_dump_json()) == verdict
