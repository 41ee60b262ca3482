"""Prometheus exposition for the router: one CollectorRegistry per router, names fixed by serving/METRICS.md.

Per-request counters are resolved to their labelled children once and cached, because `labels()` takes a
lock and builds a key on every call and the router's added latency budget is a couple of milliseconds.
Weights and process memory/CPU are read at scrape time by custom collectors, so a scrape always sees the
routing table that is live now and the upstream process that is running now (a supervisor restart
changes the pid; the pid file is re-read on every scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Fine below 50 ms (where router overhead and sklearn models live), coarser up to the 500 ms of slow
# models, a few wide buckets above so timeouts still land somewhere finite.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Error kinds, the `kind` label of mlrelease_request_errors_total (documented in METRICS.md).
CONNECTION = "connection"
TIMEOUT = "timeout"
UPSTREAM_5XX = "upstream_5xx"
UPSTREAM_4XX = "upstream_4xx"
INJECTED = "injected"
UNREADY = "unready"
BAD_REQUEST = "bad_request"
SHADOW = "shadow"

NO_VERSION = "none"


class UpstreamProcess:
    """Where to find an upstream server's pid: fixed, or re-read from a pid file on every scrape."""

    def __init__(self, pid: int | None, pid_file: Path | None) -> None:
        self.pid = pid
        self.pid_file = pid_file

    def resolve(self) -> int | None:
        if self.pid_file is not None:
            try:
                return int(self.pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return self.pid


def process_tree_usage(pid: int) -> tuple[int, float] | None:
    """Resident bytes and CPU seconds (user+system) of a process and all its descendants, or None if gone.

    MLServer runs inference in worker child processes, so the parent's own RSS undercounts the server.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss, cpu = 0, 0.0
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            continue
    return rss, cpu


class _LiveCollector(Collector):
    """Weights and per-version process usage, computed when Prometheus scrapes."""

    def __init__(
        self,
        weights: Callable[[], Mapping[str, int]],
        processes: Callable[[], Mapping[str, UpstreamProcess]],
    ) -> None:
        self._weights = weights
        self._processes = processes

    def collect(self) -> Iterable[Metric]:
        weight = GaugeMetricFamily(
            "mlrelease_traffic_weight", "Traffic weight (percent) per version.", labels=["version"]
        )
        for version, value in self._weights().items():
            weight.add_metric([version], value)
        yield weight
        rss = GaugeMetricFamily(
            "mlrelease_process_resident_bytes",
            "Resident memory of the upstream server's process tree.",
            labels=["version"],
        )
        cpu = CounterMetricFamily(
            "mlrelease_process_cpu_seconds",
            "CPU seconds (user+system) of the upstream server's process tree.",
            labels=["version"],
        )
        for version, proc in self._processes().items():
            pid = proc.resolve()
            usage = process_tree_usage(pid) if pid is not None else None
            if usage is not None:
                rss.add_metric([version], usage[0])
                cpu.add_metric([version], usage[1])
        yield rss
        yield cpu


class RouterMetrics:
    """All router metrics in one registry; `render()` is the /metrics body."""

    def __init__(
        self,
        weights: Callable[[], Mapping[str, int]],
        processes: Callable[[], Mapping[str, UpstreamProcess]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "mlrelease_requests",
            "Client requests by the version that answered and the HTTP status returned.",
            ["version", "status"],
            registry=self.registry,
        )
        self._errors = Counter(
            "mlrelease_request_errors",
            "Errors by version and kind (connection, timeout, upstream_5xx, upstream_4xx, injected, "
            "unready, bad_request, shadow).",
            ["version", "kind"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "mlrelease_request_latency_seconds",
            "Time from request received to response ready in the router, per answering version.",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._pairs = Counter("mlrelease_shadow_pairs", "Shadow pairs recorded.", registry=self.registry)
        self._dropped = Counter(
            "mlrelease_shadow_dropped",
            "Shadow copies dropped because the shadow queue was full.",
            registry=self.registry,
        )
        self._skipped = Counter(
            "mlrelease_shadow_skipped",
            "Answered requests not shadowed although shadowing was on: no other version was ready"
            " (reason=peer_unready), or the split changed before the copy was sent (reason=split_changed).",
            ["reason"],
            registry=self.registry,
        )
        self._leases = Counter(
            "mlrelease_split_lease_expired",
            "Leased splits (canary steps) reverted to 100% on the incumbent because nobody renewed them.",
            registry=self.registry,
        )
        self._lost = Counter(
            "mlrelease_log_dropped_rows",
            "Inference-log rows (log=inference) or shadow pairs (log=pairs) not written, e.g. on a full disk.",
            ["log"],
            registry=self.registry,
        )
        self._disagreements = Counter(
            "mlrelease_pair_disagreements",
            "Shadow pairs whose decisions (score >= threshold) differ on at least one row.",
            ["incumbent", "candidate"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(weights, processes))
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._error_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def request(self, version: str, status: int, seconds: float) -> None:
        child = self._request_children.get((version, status))
        if child is None:
            child = self._request_children[(version, status)] = self._requests.labels(version, str(status))
        child.inc()
        hist = self._latency_children.get(version)
        if hist is None:
            hist = self._latency_children[version] = self._latency.labels(version)
        hist.observe(seconds)

    def error(self, version: str, kind: str) -> None:
        child = self._error_children.get((version, kind))
        if child is None:
            child = self._error_children[(version, kind)] = self._errors.labels(version, kind)
        child.inc()

    def pair(self, incumbent: str, candidate: str, disagrees: bool) -> None:
        self._pairs.inc()
        # Created on the first pair even when it agrees, so rate() over the pair sees an explicit zero.
        child = self._disagreements.labels(incumbent, candidate)
        if disagrees:
            child.inc()

    def lease_expired(self) -> None:
        self._leases.inc()

    def shadow_skipped(self, reason: str) -> None:
        self._skipped.labels(reason).inc()

    def log_dropped(self, log: str, rows: int) -> None:
        self._lost.labels(log).inc(rows)

    def dropped(self) -> None:
        self._dropped.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
