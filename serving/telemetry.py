"""Answers to the canary's and the watcher's questions, per version over a window, from Prometheus.

Every answer comes from PromQL over the router's metrics (names in serving/METRICS.md) and is a number
only when Prometheus has data for it. No series, no traffic in the window (0/0), or a quantile of an empty
histogram raise ``TelemetryMissing``: a gate or a watcher must never read "no data" as "healthy". A real
zero is returned as 0.0, e.g. requests were served and none failed (the error counter of a version that
never failed does not exist yet, so the error numerator falls back to 0 only when requests exist).

A window ends at ``end`` (unix seconds, default now) and spans ``window`` seconds before it; queries are
instant queries at ``end`` with ``increase``/``rate`` over ``[window]``. With a 1 s scrape interval a window
needs at least 2 s to hold two samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import httpx
from pydantic import BaseModel

from serving import http

# Errors the client saw or that count against the version; `shadow` copies and `unready` re-routes are
# reported separately by the router (see METRICS.md).
_CLIENT_ERROR_KINDS = 'kind!~"shadow|unready"'


class TelemetryMissing(LookupError):
    """Prometheus has no data to answer this question for this window."""


class TelemetryError(RuntimeError):
    """Prometheus could not be queried (down, or the query was refused)."""


class VersionTelemetry(BaseModel):
    """One version over one window; ``None`` means no data, never zero."""

    version: str
    window_s: float
    requests: float | None
    error_rate: float | None
    p50_s: float | None
    p99_s: float | None
    resident_bytes: float | None
    cpu_cores: float | None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _range(window: float) -> str:
    if window <= 0:
        raise ValueError(f"window must be positive seconds, got {window}")
    return f"{max(1, round(window * 1000))}ms"


class Telemetry:
    """A reader over one Prometheus (``url``), optionally restricted to one scrape ``job``."""

    def __init__(self, url: str, *, job: str | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.job = job
        self._client = http.client(self.url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sel(self, **labels: str) -> str:
        matchers = [f'{key}="{_label(value)}"' for key, value in labels.items()]
        if self.job is not None:
            matchers.append(f'job="{_label(self.job)}"')
        return ",".join(matchers)

    def query(self, promql: str, end: float | None = None) -> float:
        """The single value of an instant query; TelemetryMissing if empty or NaN."""
        params = {"query": promql}
        if end is not None:
            params["time"] = f"{end:.3f}"
        try:
            response = self._client.get("/api/v1/query", params=params)
        except httpx.TransportError as exc:
            raise TelemetryError(f"prometheus at {self.url} is unreachable: {exc}") from None
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if is_json else {}
        if response.status_code != 200 or body.get("status") != "success":
            raise TelemetryError(f"prometheus refused {promql!r}: {body.get('error', response.text.strip())}")
        result = body["data"]["result"]
        if not result:
            raise TelemetryMissing(f"no data for {promql}")
        if len(result) > 1:
            raise TelemetryError(f"{promql!r} returned {len(result)} series, expected one")
        value = float(result[0]["value"][1])
        if math.isnan(value):
            raise TelemetryMissing(f"no samples in the window for {promql}")
        return value

    def request_count(self, version: str, window: float, end: float | None = None) -> float:
        """Client requests answered by ``version`` in the window (any status)."""
        sel = self._sel(version=version)
        return self.query(f"sum(increase(mlrelease_requests_total{{{sel}}}[{_range(window)}]))", end)

    def error_rate(self, version: str, window: float, end: float | None = None) -> float:
        """Errors counted against ``version`` per attempt on it, in [0, 1].

        Attempts are the requests it answered plus its connection errors (those requests were retried on
        the incumbent and answered there), so a candidate that drops connections shows a rate near 1.
        """
        w = _range(window)
        sel = self._sel(version=version)
        errors = f"sum(increase(mlrelease_request_errors_total{{{sel},{_CLIENT_ERROR_KINDS}}}[{w}]))"
        answered = f"sum(increase(mlrelease_requests_total{{{sel}}}[{w}]))"
        dropped = f'sum(increase(mlrelease_request_errors_total{{{sel},kind="connection"}}[{w}]))'
        attempts = f"(({answered} or vector(0)) + ({dropped} or vector(0)))"
        rate = self.query(f"({errors} or vector(0)) / {attempts}", end)
        return min(rate, 1.0)

    def latency_quantile(self, version: str, q: float, window: float, end: float | None = None) -> float:
        """The ``q`` quantile (0..1) of router-side latency of ``version``, seconds, from the histogram."""
        sel = self._sel(version=version)
        return self.query(
            f"histogram_quantile({q}, sum by (le) "
            f"(increase(mlrelease_request_latency_seconds_bucket{{{sel}}}[{_range(window)}])))",
            end,
        )

    def p99(self, version: str, window: float, end: float | None = None) -> float:
        return self.latency_quantile(version, 0.99, window, end)

    def p50(self, version: str, window: float, end: float | None = None) -> float:
        return self.latency_quantile(version, 0.50, window, end)

    def disagreement_rate(self, window: float, end: float | None = None) -> float:
        """Share of shadow pairs in the window whose decisions differ (all incumbent/candidate couples)."""
        w = _range(window)
        job = self._sel()
        pairs = f"sum(increase(mlrelease_shadow_pairs_total{{{job}}}[{w}]))"
        disagreements = f"sum(increase(mlrelease_pair_disagreements_total{{{job}}}[{w}]))"
        return self.query(f"({disagreements} or vector(0)) / {pairs}", end)

    def shadow_dropped(self, window: float, end: float | None = None) -> float:
        """Shadow copies dropped in the window because the queue was full."""
        sel = self._sel()
        return self.query(f"sum(increase(mlrelease_shadow_dropped_total{{{sel}}}[{_range(window)}]))", end)

    def resident_bytes(self, version: str, window: float, end: float | None = None) -> float:
        """Peak resident memory of ``version``'s server process tree over the window."""
        sel = self._sel(version=version)
        w = _range(window)
        return self.query(f"max(max_over_time(mlrelease_process_resident_bytes{{{sel}}}[{w}]))", end)

    def cpu_cores(self, version: str, window: float, end: float | None = None) -> float:
        """Average CPU cores used by ``version``'s server process tree over the window."""
        sel = self._sel(version=version)
        return self.query(f"sum(rate(mlrelease_process_cpu_seconds_total{{{sel}}}[{_range(window)}]))", end)

    def traffic_weight(self, version: str) -> float:
        """The weight (percent) the router reported for ``version`` at its last scrape."""
        return self.query(f"max(mlrelease_traffic_weight{{{self._sel(version=version)}}})")

    def snapshot(self, version: str, window: float, end: float | None = None) -> VersionTelemetry:
        """Everything about ``version`` over the window; missing answers are None."""

        def maybe(fn: Callable[..., float], *args: object) -> float | None:
            try:
                return fn(*args)
            except TelemetryMissing:
                return None

        return VersionTelemetry(
            version=version,
            window_s=window,
            requests=maybe(self.request_count, version, window, end),
            error_rate=maybe(self.error_rate, version, window, end),
            p50_s=maybe(self.p50, version, window, end),
            p99_s=maybe(self.p99, version, window, end),
            resident_bytes=maybe(self.resident_bytes, version, window, end),
            cpu_cores=maybe(self.cpu_cores, version, window, end),
        )
