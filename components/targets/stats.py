"""A version's client-facing traffic over a window, from the Prometheus that scrapes its routers.

Shared by every target whose routers export ``serving/METRICS.md``'s metrics: the queries ``sum`` over every
series of the scrape job, so one router or many replicas give the same answer.
"""

from __future__ import annotations

import contextlib
import time

from components.targets.base import TargetError, VersionStats
from serving.telemetry import Telemetry, TelemetryError, TelemetryMissing
from serving.wait import wait_until

FRESH_SCRAPE_TIMEOUT_S = 3.0


def version_stats(
    prometheus_url: str, job: str, version: str, start: float, end: float | None = None, *, timeout: float = 5.0
) -> VersionStats:
    """Counts and latency quantiles of ``version`` over ``[start, end]``; ``None`` where there is no data.

    Waits (briefly) for a scrape at or after ``end`` so the window is complete. Counts come from
    ``increase`` and are rounded (Prometheus extrapolates to the window's edges).
    """
    end = time.time() if end is None else end
    reader = Telemetry(prometheus_url, job=job, timeout=timeout)
    try:
        _await_scrape(reader, job, end)
        window = max(end - start, 1.0)
        rng = f"{round(window * 1000)}ms"
        sel = f'version="{version}",job="{job}"'

        def count(promql: str) -> float | None:
            try:
                return reader.query(promql, end)
            except TelemetryMissing:
                return None

        answered = count(f"sum(increase(mlrelease_requests_total{{{sel}}}[{rng}]))")
        dropped = count(f'sum(increase(mlrelease_request_errors_total{{{sel},kind="connection"}}[{rng}]))')
        requests = None if answered is None and dropped is None else round((answered or 0) + (dropped or 0))
        errors = None
        if requests is not None:
            errors = round(
                count(f'sum(increase(mlrelease_request_errors_total{{{sel},kind!~"shadow|unready"}}[{rng}]))') or 0
            )
        quantiles = {}
        for q in (0.5, 0.99):
            try:
                quantiles[q] = reader.latency_quantile(version, q, window, end) * 1000
            except TelemetryMissing:
                quantiles[q] = None
    except TelemetryError as exc:
        raise TargetError(str(exc)) from None
    finally:
        reader.close()
    return VersionStats(
        version=version,
        start=start,
        end=end,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else None,
        p50_ms=quantiles[0.5],
        p99_ms=quantiles[0.99],
    )


def _await_scrape(reader: Telemetry, job: str, end: float) -> None:
    def scraped() -> bool:
        try:
            return reader.query(f'max(timestamp(up{{job="{job}"}}))') >= end
        except TelemetryMissing:
            return False

    if time.time() - end < FRESH_SCRAPE_TIMEOUT_S:
        # Not scraped in time: the counts say what Prometheus has, missing data stays None.
        with contextlib.suppress(TimeoutError):
            wait_until(scraped, FRESH_SCRAPE_TIMEOUT_S, "a scrape after the window", interval=0.05)
