"""A real release runtime for the dashboard, without model servers: a real Prometheus (with its node_exporter,
Alertmanager and the project's rules, as ``serving.prometheus`` starts them) scraping a small real endpoint that
serves the router's metric names, the release metrics written by the real writer (``serving.release_metrics``)
into the textfile collector, and a stack history in the DIY backend's on-disk format.

MLServer processes would cost a minute of CPU on a 2-core runner and show nothing the page reads that the
router's exposition does not; the router's names and labels are the contract of serving/METRICS.md.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bench.bench_audit import SyntheticStack
from components.targets import factory
from dashboard.page import Source, make_app, start
from serving import supervisor
from serving.prometheus import PrometheusHandle, ScrapeTarget, start_prometheus
from serving.release_metrics import ReleaseMetrics

STACK = "staging"
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05)
BUCKETS += (0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10)
WEIGHTS = {"v1": 75.0, "v2": 25.0}


class SyntheticRouter:
    """The router's exposition (serving/METRICS.md names and labels) with traffic that advances on its own:
    about 40 requests/s split 75/25, under 1 % errors, 10-40 ms latency, 2 % decision disagreement on shadow pairs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mlrelease_requests", "", ["version", "status"], registry=r)
        self.errors = Counter("mlrelease_request_errors", "", ["version", "kind"], registry=r)
        self.latency = Histogram("mlrelease_request_latency_seconds", "", ["version"], buckets=BUCKETS, registry=r)
        self.weight = Gauge("mlrelease_traffic_weight", "", ["version"], registry=r)
        self.pairs = Counter("mlrelease_shadow_pairs", "", registry=r)
        self.disagreements = Counter("mlrelease_pair_disagreements", "", ["incumbent", "candidate"], registry=r)
        self.rss = Gauge("mlrelease_process_resident_bytes", "", ["version"], registry=r)
        self.cpu = Counter("mlrelease_process_cpu_seconds", "", ["version"], registry=r)
        self.stop = threading.Event()
        self.random = random.Random(13)
        self.server, _thread = start_http_server(0, addr="127.0.0.1", registry=r)
        self.address = f"127.0.0.1:{self.server.server_port}"
        self.ticker = threading.Thread(target=self._run, daemon=True)
        self.ticker.start()

    def _tick(self, n: int) -> None:
        for version, weight in WEIGHTS.items():
            self.weight.labels(version).set(weight)
            self.rss.labels(version).set(180e6 if version == "v1" else 210e6)
            self.cpu.labels(version).inc(0.01 * weight / 100)
            count = round(4 * weight / 100) or 1
            self.requests.labels(version, "200").inc(count)
            for _ in range(count):
                self.latency.labels(version).observe(self.random.uniform(0.01, 0.04))
            self.errors.labels(version, "upstream_5xx").inc(1 if n % 100 == 0 else 0)
        self.pairs.inc(5)
        self.disagreements.labels("v1", "v2").inc(1 if n % 10 == 0 else 0)

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            self._tick(n)
            n += 1

    def close(self) -> None:
        self.stop.set()
        self.ticker.join()
        self.server.shutdown()
        self.server.server_close()


HEALTHY_SIGNALS = [
    {"signal": "divergence", "observed": 0.02, "threshold": 0.05, "state": "healthy", "samples": 400},
    {"signal": "error_rate", "observed": 0.01, "threshold": 0.05, "state": "healthy", "samples": 400},
    {"signal": "latency", "observed": 38.0, "threshold": 250.0, "state": "healthy", "samples": 400},
    {"signal": "telemetry", "observed": 0.0, "threshold": 15.0, "state": "healthy", "samples": 1},
]


class Watcher:
    """Stands in for ``mlrelease watch``: writes its metrics every half second through the real writer."""

    def __init__(self, metrics: ReleaseMetrics) -> None:
        self.metrics, self.phase, self.signals = metrics, "watching", HEALTHY_SIGNALS
        self.stop = threading.Event()
        self.metrics.watch(self.phase, self.signals, time.time())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.metrics.watch(self.phase, self.signals, time.time())

    def breach(self) -> None:
        """Divergence over its limit: the watcher fires the rollback, as ``automation/watch.py`` does."""
        self.signals = [
            {**s, "observed": 0.12, "state": "breached"} if s["signal"] == "divergence" else s for s in HEALTHY_SIGNALS
        ]
        self.phase = "fired"
        self.metrics.watch(self.phase, self.signals, time.time())
        self.metrics.rollback("watch")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def write_release(metrics: ReleaseMetrics, now: float) -> None:
    """What gates, a canary step, the checkpoint and a drill of this story wrote, in the writer's input shapes."""
    criterion = {"comparator": "<=", "passed": True, "uses_bound": True, "note": ""}
    features = {name: {"psi": psi, "p_adjusted": 0.4} for name, psi in (("income", 0.04), ("age", 0.02))}
    metrics.gates(
        {
            "candidate": {"version": "v2"},
            "started_at": now - 600,
            "passed": True,
            "cache_key": "k-v2",
            "gates": {
                "evaluation": {
                    "passed": True,
                    "report": {"metric": "auc", "tolerance": 0.01, "floor": 0.7},
                    "observed": {"difference_lower": -0.003, "candidate": 0.81},
                },
                "latency": {
                    "passed": True,
                    "report": {
                        "criteria": [
                            {**criterion, "name": "p50 latency (ms)", "observed": 14, "bound": 15, "threshold": 100},
                            {**criterion, "name": "p99 latency (ms)", "observed": 31, "bound": 36, "threshold": 250},
                        ]
                    },
                },
                "memory": {
                    "passed": True,
                    "report": {
                        "criteria": [
                            {
                                **criterion,
                                "name": "peak RSS (MiB)",
                                "observed": 205,
                                "bound": None,
                                "threshold": 1024,
                                "uses_bound": False,
                            }
                        ]
                    },
                },
                "drift": {
                    "passed": True,
                    "observed": {"max_psi": 0.04},
                    "thresholds": {"psi_threshold": 0.25},
                    "report": {"features": features, "psi_threshold": 0.25},
                },
            },
        }
    )
    metrics.live_drift({"features": features, "psi_threshold": 0.25})
    metrics.checkpoint(
        {
            "live": {"version": "v1", "sha256": "a1" * 32},
            "previous": {"version": "v0", "sha256": "b0" * 32},
            "verified_at": now - 3600,
        }
    )
    checks = [("disagreement", 0.02, 0.05), ("prediction_comparison", 1.5, 20.0), ("error_rate", 0.01, 0.05)]
    metrics.canary(
        {
            "candidate": "v2",
            "incumbent": "v1",
            "step": 2,
            "weight": 25,
            "pairs": 650,
            "passed": True,
            "ended_at": now - 120,
            "checks": [{"name": n, "observed": o, "threshold": t, "passed": True} for n, o, t in checks],
        }
    )
    metrics.drill(
        {
            "fault": "error",
            "detection_seconds": 4.2,
            "recovery_seconds": 9.8,
            "budget_seconds": 300,
            "outcome": "recovered",
            "started_at": now - 5400,
        }
    )


def write_history(backend: Path, now: float) -> SyntheticStack:
    """v0 released, v1 promoted, rolled back by a drill two hours ago, promoted again an hour ago."""
    history = SyntheticStack(backend, STACK)
    history.release("v0", now - 3 * 3600, message="mlrelease promote v0 (sha256 b0b0b0b0b0b0)")
    history.release("v1", now - 2.5 * 3600, message="mlrelease promote v1 (sha256 a1a1a1a1a1a1)")
    history.rollback(now - 2 * 3600, now - 2 * 3600 + 1, message="mlrelease rollback to v0 from v1: drill")
    history.release("v1", now - 3600 - 60, message="mlrelease promote v1 (sha256 a1a1a1a1a1a1)")
    return history


@dataclass
class Runtime:
    """Everything a dashboard test reads: the run directory, its Prometheus, the backend, the writers."""

    project_dir: Path
    run_dir: Path
    prometheus: PrometheusHandle
    backend_url: str
    metrics: ReleaseMetrics
    watcher: Watcher

    def source(self) -> Source:
        return Source(stack=STACK, run_dir=self.run_dir, backend_url=self.backend_url, project="mlrelease")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A Prometheus with its companions in a run directory named as the stack, fed by the writers above."""
    base = tmp_path_factory.mktemp("dashboard")  # a project directory: Pulumi.yaml and the stack's run dir
    (base / "Pulumi.yaml").write_text("name: mlrelease\nruntime: python\n")
    run_dir = factory.run_dir(base, STACK)  # named as the stack: the writer takes the stack's name from it
    run_dir.mkdir(parents=True)
    now = time.time()
    metrics = ReleaseMetrics(run_dir)
    write_release(metrics, now)
    history = write_history(base / "state", now)
    router = SyntheticRouter()
    watcher = Watcher(metrics)
    try:
        handle = start_prometheus(run_dir, [ScrapeTarget(job="router", address=router.address)])
        yield Runtime(base, run_dir, handle, history.url, metrics, watcher)
    finally:
        for state_path in run_dir.glob(f"*/{supervisor.STATE_FILE}"):
            supervisor.stop(state_path)
        watcher.close()
        router.close()


@pytest.fixture(scope="module")
def page_url(runtime: Runtime) -> Iterator[str]:
    """The dashboard page of ``runtime`` served by its aiohttp app on a loopback port, in a thread of its own."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        ready["runner"], ready["url"] = loop.run_until_complete(start(make_app(runtime.source()), 0))
        started.set()
        loop.run_forever()
        loop.run_until_complete(ready["runner"].cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "the dashboard app did not start"
    yield ready["url"]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
