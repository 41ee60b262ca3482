"""Production health of the live model version: the judgement behind the automatic rollback.

A watcher in ``automation`` reads live telemetry each window and asks this module whether the live
version must be rolled back to the warm previous version. Nobody reviews that decision before it
happens, so two rules shape every function here:

- A breach must be statistically significant. Rates (prediction divergence, error rate) breach only
  when the one-sided lower Clopper-Pearson bound of the rate exceeds the limit, i.e. when the data
  show with the stated confidence that the true rate is above it. A few unlucky requests in a quiet
  window raise the observed rate but not the bound, and must not flip traffic.
- No data is never health. Too few samples give the state ``insufficient`` (neither healthy nor
  breached), and a window without any sufficient signal for longer than the limit is itself a breach
  (``missing_telemetry_signal``): a watcher that has gone blind must not keep reporting all-clear.

The bound is Clopper-Pearson (exact) rather than the Wilson interval the gates use: a rollback acts on
the live system, so the bound must keep the false-alarm rate at or below ``1 - confidence`` at every
sample size (Wilson's coverage dips below nominal at some), at the price of being slightly conservative.

Everything is pure: numbers in, frozen pydantic verdicts out, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from verification.errors import VerificationError
from verification.inputs import as_float_array, check_positive, check_probability, check_same_length
from verification.reports import fmt

SignalName = Literal["divergence", "error_rate", "latency", "telemetry"]
SignalState = Literal["healthy", "breached", "insufficient"]


class SignalResult(BaseModel):
    """One telemetry signal's judgement over a window, with the numbers behind it.

    Stored and exported as evidence of why a rollback fired (or did not), so it is frozen and
    serialises to JSON; ``explanation`` is the sentence a release engineer reads on the dashboard.
    """

    # "strings": an infinite p99 (the +Inf histogram bucket) survives JSON as "Infinity", not as null.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    signal: SignalName
    state: SignalState
    observed: float | None
    bound: float | None
    threshold: float
    samples: int = Field(ge=0)
    explanation: str


class HealthVerdict(BaseModel):
    """The combined judgement over all signals: healthy only when every signal is healthy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    healthy: bool
    breached: list[SignalResult]
    signals: list[SignalResult]
    explanation: str


# ------------------------------------------------------------------------------------ validation


def _whole(value: float, name: str, *, minimum: int = 0) -> int:
    """A count as a plain int; bools, fractions, NaN and negatives are wiring bugs, not data."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise VerificationError(f"{name}: must be a whole number >= {minimum}, got {value!r}")
    if not math.isfinite(value) or int(value) != value or value < minimum:
        raise VerificationError(f"{name}: must be a whole number >= {minimum}, got {value!r}; round counts first")
    return int(value)


def _rate_limit(value: float, name: str) -> None:
    """A rate limit in [0, 1): a limit of 1 could never be exceeded, so the signal would be dead."""
    check_positive(value, name, allow_zero=True)
    if value >= 1.0:
        raise VerificationError(f"{name}: must be below 1 (a rate can never exceed 1), got {value}")


# ------------------------------------------------------------------------------------ statistics


def clopper_pearson_lower(events: int, trials: int, confidence: float) -> float:
    """One-sided lower Clopper-Pearson bound of a binomial rate at ``confidence``.

    The bound is the rate p at which seeing ``events`` or more has probability exactly
    ``1 - confidence``; the beta quantile is that inversion in closed form. It is 0 for no events
    (no rate above 0 is demonstrated).
    """
    check_probability(confidence, "confidence")
    if trials <= 0 or not 0 <= events <= trials:
        raise VerificationError(
            f"clopper_pearson_lower: need 0 <= events <= trials and trials > 0, got {events}/{trials}"
        )
    if events == 0:
        return 0.0
    return float(stats.beta.ppf(1.0 - confidence, events, trials - events + 1))


def _rate_signal(
    signal: SignalName,
    events: int,
    trials: int,
    *,
    limit: float,
    confidence: float,
    min_trials: int,
    what: str,
    unit: str,
) -> SignalResult:
    """Shared decision for the rate signals: insufficient, then bound > limit, then healthy.

    ``what`` names the event in the sentence ("pairs disagree", "requests failed"), ``unit`` the
    sample ("pairs", "requests").
    """
    head = f"{signal}: {events} of {trials} {what} (rate {fmt(events / trials)})" if trials else f"{signal}: no {unit}"
    if trials < min_trials:
        return SignalResult(
            signal=signal,
            state="insufficient",
            observed=events / trials if trials else None,
            bound=None,
            threshold=limit,
            samples=trials,
            explanation=(
                f"{head}, fewer than the {min_trials} {unit} needed to decide against the limit {fmt(limit)}"
                f" -> insufficient (too few samples to say either way; never counts as healthy)."
            ),
        )
    observed = events / trials  # trials >= min_trials >= 1
    bound = clopper_pearson_lower(events, trials, confidence)
    level = f"{fmt(100 * confidence)}% one-sided lower Clopper-Pearson bound {fmt(bound)}"
    if bound > limit:
        state: SignalState = "breached"
        tail = f"{level} exceeds the limit {fmt(limit)} by {fmt(bound - limit)} on {trials} {unit} -> breached."
    elif observed > limit:
        state = "healthy"
        tail = (
            f"the observed rate is above the limit {fmt(limit)} by {fmt(observed - limit)} but the {level} is not"
            f" (below it by {fmt(limit - bound)}), so on {trials} {unit} the excess is not significant -> healthy."
        )
    else:
        state = "healthy"
        tail = f"{level} is within the limit {fmt(limit)} (margin {fmt(limit - bound)}) on {trials} {unit} -> healthy."
    return SignalResult(
        signal=signal,
        state=state,
        observed=observed,
        bound=bound,
        threshold=limit,
        samples=trials,
        explanation=f"{head}; {tail}",
    )


# --------------------------------------------------------------------------------------- signals


def divergence_signal(
    live: npt.ArrayLike,
    previous: npt.ArrayLike,
    *,
    decision_threshold: float,
    max_disagreement: float,
    confidence: float,
    min_pairs: int,
) -> SignalResult:
    """Do the live and previous versions decide differently on the same inputs more than allowed?

    ``live`` and ``previous`` are the two versions' positive-class scores on the same inputs, aligned.
    A pair disagrees when the scores fall on different sides of ``decision_threshold`` (score >=
    threshold is positive), which is what a customer sees change; score drift that crosses no
    threshold does not count. Breached when the lower confidence bound of the disagreement rate
    exceeds ``max_disagreement``; insufficient below ``min_pairs`` pairs (including none at all).
    """
    if not math.isfinite(decision_threshold):
        raise VerificationError(f"decision_threshold: must be a finite number, got {decision_threshold}")
    _rate_limit(max_disagreement, "max_disagreement")
    check_probability(confidence, "confidence")
    need = _whole(min_pairs, "min_pairs", minimum=1)
    a = as_float_array(live, "live", allow_empty=True)
    b = as_float_array(previous, "previous", allow_empty=True)
    check_same_length(a, b, "live/previous")
    flips = int(np.count_nonzero((a >= decision_threshold) != (b >= decision_threshold)))
    return _rate_signal(
        "divergence",
        flips,
        int(a.shape[0]),
        limit=max_disagreement,
        confidence=confidence,
        min_trials=need,
        what=f"paired scores fall on different sides of the decision threshold {fmt(decision_threshold)}",
        unit="pairs",
    )


def error_rate_signal(
    errors: int | None,
    requests: int | None,
    *,
    max_error_rate: float,
    confidence: float,
    min_requests: int,
) -> SignalResult:
    """Is the live version's error rate significantly above ``max_error_rate``?

    ``None`` for either count means the telemetry query returned nothing: that is insufficient, never
    a zero error rate. Counts must be whole numbers (round Prometheus ``increase()`` results, which are
    extrapolated and fractional, before calling).
    """
    _rate_limit(max_error_rate, "max_error_rate")
    check_probability(confidence, "confidence")
    need = _whole(min_requests, "min_requests", minimum=1)
    if errors is None or requests is None:
        missing = " and no ".join(n for n, v in (("errors", errors), ("requests", requests)) if v is None)
        return SignalResult(
            signal="error_rate",
            state="insufficient",
            observed=None,
            bound=None,
            threshold=max_error_rate,
            samples=0,
            explanation=(
                f"error_rate: no telemetry for {missing} in this window, so the limit {fmt(max_error_rate)} cannot be"
                " checked -> insufficient (no data never counts as healthy)."
            ),
        )
    failed = _whole(errors, "errors")
    total = _whole(requests, "requests")
    if failed > total:
        raise VerificationError(f"errors: {failed} exceeds requests {total}; count both over the same window")
    return _rate_signal(
        "error_rate",
        failed,
        total,
        limit=max_error_rate,
        confidence=confidence,
        min_trials=need,
        what="requests failed",
        unit="requests",
    )


def latency_signal(p99_ms: float | None, requests: int | None, *, max_p99_ms: float, min_requests: int) -> SignalResult:
    """Is the live version's p99 latency over ``max_p99_ms``?

    ``p99_ms`` is Prometheus' ``histogram_quantile`` over the window, already an estimate interpolated
    inside a bucket with no sampling interval attached, so the decision is on the point value and is
    guarded by ``min_requests`` instead of a bound. NaN (what ``histogram_quantile`` returns for an
    empty window) is no data; +inf (the p99 lies in the ``+Inf`` bucket, above every finite bucket
    bound) is a p99 beyond any finite limit, hence a breach.
    """
    check_positive(max_p99_ms, "max_p99_ms")
    need = _whole(min_requests, "min_requests", minimum=1)
    if p99_ms is not None and p99_ms < 0:
        raise VerificationError(f"p99_ms: must be >= 0, got {p99_ms}; check the histogram query")
    if p99_ms is not None and math.isnan(p99_ms):
        p99_ms = None  # histogram_quantile over an empty window: no data, not a latency
    total = None if requests is None else _whole(requests, "requests")
    if p99_ms is None or total is None or total < need:
        if p99_ms is None or total is None:
            missing = " and no ".join(n for n, v in (("p99", p99_ms), ("request count", total)) if v is None)
            why = f"no {missing} in this window, so p99 cannot be judged against {fmt(max_p99_ms)} ms"
        else:
            why = (
                f"p99 {fmt(p99_ms)} ms on only {total} requests, fewer than the {need} needed to judge it against"
                f" {fmt(max_p99_ms)} ms"
            )
        return SignalResult(
            signal="latency",
            state="insufficient",
            observed=p99_ms,
            bound=None,
            threshold=max_p99_ms,
            samples=total or 0,
            explanation=f"latency: {why} -> insufficient (never counts as healthy).",
        )
    if p99_ms > max_p99_ms:
        state: SignalState = "breached"
        if math.isinf(p99_ms):
            tail = (
                f"(in the +Inf bucket, above every finite bucket bound) exceeds the limit {fmt(max_p99_ms)} ms"
                f" on {total} requests -> breached."
            )
        else:
            by = fmt(p99_ms - max_p99_ms)
            tail = f"exceeds the limit {fmt(max_p99_ms)} ms by {by} ms on {total} requests -> breached."
    else:
        state = "healthy"
        margin = fmt(max_p99_ms - p99_ms)
        tail = f"is within the limit {fmt(max_p99_ms)} ms (margin {margin} ms) on {total} requests -> healthy."
    return SignalResult(
        signal="latency",
        state=state,
        observed=p99_ms,
        bound=None,
        threshold=max_p99_ms,
        samples=total,
        explanation=f"latency: p99 {fmt(p99_ms)} ms {tail}",
    )


def missing_telemetry_signal(
    last_data_at: float | None, now: float, started_at: float, *, window_seconds: float
) -> SignalResult:
    """Has the watcher gone without any sufficient signal for longer than ``window_seconds``?

    Every other signal reports ``insufficient`` when data are missing, which never triggers a rollback
    on its own; this signal turns prolonged silence into a breach, so a broken exporter or a version
    that serves nothing cannot look fine forever. The clock starts at ``started_at`` (the watch began,
    giving a new version one window to produce data); a ``last_data_at`` before ``started_at`` is data
    about an earlier period and counts as none. A ``last_data_at`` slightly after ``now`` (clock skew
    between the metrics store and the watcher) counts as zero seconds without data.
    """
    for name, value in (("now", now), ("started_at", started_at)):
        if not math.isfinite(value):
            raise VerificationError(f"{name}: must be a finite timestamp in seconds, got {value}")
    if last_data_at is not None and not math.isfinite(last_data_at):
        raise VerificationError(f"last_data_at: must be a finite timestamp or None, got {last_data_at}")
    check_positive(window_seconds, "window_seconds")
    if now < started_at:
        raise VerificationError(f"now ({now}) is before started_at ({started_at}); pass timestamps from the same clock")
    since = started_at if last_data_at is None else max(last_data_at, started_at)
    silent = max(0.0, now - since)
    origin = "since the watch started" if since == started_at else "since the last sufficient data"
    if silent > window_seconds:
        return SignalResult(
            signal="telemetry",
            state="breached",
            observed=silent,
            bound=None,
            threshold=window_seconds,
            samples=0,
            explanation=(
                f"telemetry: no telemetry for {fmt(silent)} s {origin} (limit {fmt(window_seconds)} s, exceeded by"
                f" {fmt(silent - window_seconds)} s): missing telemetry never counts as healthy -> breached."
            ),
        )
    return SignalResult(
        signal="telemetry",
        state="healthy",
        observed=silent,
        bound=None,
        threshold=window_seconds,
        samples=0,
        explanation=(
            f"telemetry: {fmt(silent)} s {origin}, within the limit {fmt(window_seconds)} s"
            f" (margin {fmt(window_seconds - silent)} s) -> healthy."
        ),
    )


# --------------------------------------------------------------------------------------- verdict


def assess(signals: Sequence[SignalResult]) -> HealthVerdict:
    """Combine signal judgements: healthy only if every signal is healthy (and there is at least one).

    Breaches are listed in the order given, and the first one leads the explanation because that is
    the reason the rollback record shows. Without a breach, any insufficient signal makes the verdict
    not healthy but not a breach either: the watcher waits, and ``missing_telemetry_signal`` decides
    when waiting has lasted too long.
    """
    items = list(signals)
    breached = [s for s in items if s.state == "breached"]
    insufficient = [s for s in items if s.state == "insufficient"]
    if breached:
        rest = [s.explanation for s in breached[1:]] + [s.explanation for s in insufficient]
        explanation = "breach: " + "; ".join([breached[0].explanation, *rest])
    elif not items:
        explanation = "insufficient data: no signals were judged; no data never counts as healthy"
    elif insufficient:
        healthy_names = [s.signal for s in items if s.state == "healthy"]
        also = f"; healthy: {', '.join(healthy_names)}" if healthy_names else ""
        explanation = "insufficient data: " + "; ".join(s.explanation for s in insufficient) + also
    else:
        explanation = f"healthy: all {len(items)} signal(s) within limits; " + "; ".join(s.explanation for s in items)
    return HealthVerdict(
        healthy=bool(items) and not breached and not insufficient,
        breached=breached,
        signals=items,
        explanation=explanation,
    )
