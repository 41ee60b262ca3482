"""A real Prometheus scrapes a real router in front of two real MLServers; the telemetry reader's answers
match what the clients saw, injected faults show up in the right version, and missing data is never
read as zero."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pandas as pd
import psutil
import pytest

from serving import supervisor
from serving.client import RouterAdmin, v2_request
from serving.modelserver import ModelServerHandle
from serving.prometheus import (
    PrometheusError,
    PrometheusHandle,
    ScrapeTarget,
    active_targets,
    companions,
    scrape_config,
    set_targets,
    start_prometheus,
)
from serving.router_process import start_router
from serving.routing import RouterConfig, UpstreamSpec
from serving.sample_models import FEATURES, MODEL_NAME, SampleModels
from serving.telemetry import Telemetry, TelemetryError, TelemetryMissing
from serving.wait import wait_until

TOKEN = "telemetry-test-token-0123456789"
FAULTY = {"error_rate": 0.25, "latency_ms": 30.0, "perturbation": 0.6}
WINDOW = 120.0


@dataclass
class Observed:
    prometheus: PrometheusHandle
    telemetry: Telemetry
    seen: Counter  # (version, status) -> count, as the clients saw them
    router_url: str
    run_dir: Path


def _load(url: str, bodies: list[bytes], seconds: float, seen: Counter, lock: threading.Lock) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        i = 0
        while time.monotonic() < deadline:
            body = bodies[i % len(bodies)]
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            with lock:
                seen[(response.headers.get("x-model-version", "none"), response.status_code)] += 1
            i += 1


@pytest.fixture(scope="module")
def observed(
    sample_models: SampleModels,
    incumbent_server: ModelServerHandle,
    candidate_server: ModelServerHandle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    run_dir = tmp_path_factory.mktemp("telemetry-run")
    work = tmp_path_factory.mktemp("telemetry-data")
    config = RouterConfig(
        port=supervisor.free_port(),
        admin_token=TOKEN,
        model_name=MODEL_NAME,
        upstreams=[
            UpstreamSpec(version=h.version, url=h.url, model_name=h.model_name, pid_file=h.pid_path)
            for h in (incumbent_server, candidate_server)
        ],
        weights={"v1": 50, "v2": 50},
        incumbent="v1",
        feature_names=FEATURES,
        shadow_fraction=1.0,
        log_dir=work / "log",
        pairs_dir=work / "pairs",
    )
    try:
        router = start_router(config, run_dir)
        target = ScrapeTarget(job="router", address=f"127.0.0.1:{config.port}")
        prometheus = start_prometheus(run_dir, [target])
        with RouterAdmin(router.url, TOKEN) as admin:
            wait_until(lambda: all(h["ready"] for h in admin.health().values()), 20, "router sees both ready")
            admin.set_fault("v2", **FAULTY)
        telemetry = Telemetry(prometheus.url, job="router")
        wait_until(
            lambda: [t["health"] for t in active_targets(prometheus) if t["job"] == "router"] == ["up"],
            30,
            "the first router scrape",
        )
        rows = pd.read_parquet(sample_models.holdout)[FEATURES].head(200)
        bodies = [orjson.dumps(v2_request(rows.iloc[i : i + 1])) for i in range(len(rows))]
        seen: Counter = Counter()
        lock = threading.Lock()
        url = f"{router.url}/v2/models/{MODEL_NAME}/infer"
        threads = [threading.Thread(target=_load, args=(url, bodies, 6.0, seen, lock)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = sum(seen.values())

        def scraped_all() -> bool:
            try:
                return telemetry.query('sum(mlrelease_requests_total{job="router"})') == total
            except TelemetryMissing:
                return False

        wait_until(scraped_all, 20, f"prometheus to scrape all {total} requests")
        yield Observed(prometheus, telemetry, seen, router.url, run_dir)
        telemetry.close()
    finally:
        for state_path in run_dir.glob("*/state.json"):
            supervisor.stop(state_path)


def test_request_counts_match_what_clients_saw(observed: Observed) -> None:
    tel = observed.telemetry
    for version in ("v1", "v2"):
        seen = sum(n for (v, _), n in observed.seen.items() if v == version)
        assert seen > 50
        exact = tel.query(f'sum(mlrelease_requests_total{{job="router",version="{version}"}})')
        assert exact == seen
        # increase() extrapolates inside the window; it must be close, not exact.
        assert tel.request_count(version, WINDOW) == pytest.approx(seen, rel=0.25)


def test_error_rate_shows_the_injected_faults_and_a_real_zero(observed: Observed) -> None:
    tel = observed.telemetry
    seen_v2 = sum(n for (v, _), n in observed.seen.items() if v == "v2")
    seen_v2_500 = observed.seen[("v2", 500)]
    assert tel.error_rate("v2", WINDOW) == pytest.approx(seen_v2_500 / seen_v2, abs=0.05)
    assert tel.error_rate("v2", WINDOW) == pytest.approx(FAULTY["error_rate"], abs=0.1)
    assert tel.error_rate("v1", WINDOW) == 0.0


def test_latency_quantiles_separate_the_slow_version(observed: Observed) -> None:
    tel = observed.telemetry
    assert tel.p50("v2", WINDOW) >= FAULTY["latency_ms"] / 1000 * 0.9
    assert tel.p99("v2", WINDOW) >= tel.p50("v2", WINDOW)
    assert tel.p50("v1", WINDOW) < FAULTY["latency_ms"] / 1000


def test_disagreement_rate_sees_the_perturbed_candidate(observed: Observed) -> None:
    assert 0.2 < observed.telemetry.disagreement_rate(WINDOW) <= 1.0
    assert observed.telemetry.shadow_dropped(WINDOW) == 0.0


def test_process_memory_and_cpu_per_version(observed: Observed, incumbent_server: ModelServerHandle) -> None:
    tel = observed.telemetry
    rss = psutil.Process(incumbent_server.pid).memory_info().rss
    assert tel.resident_bytes("v1", WINDOW) == pytest.approx(rss, rel=0.3)
    assert tel.cpu_cores("v1", WINDOW) >= 0.0
    assert tel.traffic_weight("v2") == 50


def test_missing_data_is_never_zero(observed: Observed) -> None:
    tel = observed.telemetry
    for question in (tel.request_count, tel.error_rate, tel.p99, tel.resident_bytes):
        with pytest.raises(TelemetryMissing):
            question("v9", WINDOW)
    long_ago = time.time() - 3600
    with pytest.raises(TelemetryMissing):
        tel.error_rate("v1", 10, end=long_ago)
    snapshot = tel.snapshot("v9", WINDOW)
    assert snapshot.requests is None and snapshot.error_rate is None and snapshot.p99_s is None
    with Telemetry(observed.prometheus.url, job="another-router") as other, pytest.raises(TelemetryMissing):
        other.request_count("v1", WINDOW)


def test_unreachable_prometheus_is_an_error_not_missing_data() -> None:
    with Telemetry(f"http://127.0.0.1:{supervisor.free_port()}") as tel, pytest.raises(TelemetryError):
        tel.request_count("v1", 60)


def test_set_targets_reloads_the_config(observed: Observed, tmp_path: Path) -> None:
    prometheus = observed.prometheus
    port = observed.router_url.rsplit(":", 1)[1]
    extra = ScrapeTarget(job="nothing-here", address=f"127.0.0.1:{supervisor.free_port()}")
    router = ScrapeTarget(job="router", address=f"127.0.0.1:{port}")
    set_targets(prometheus, [router, extra])
    config = json.loads(prometheus.config_path.read_text())
    assert config == scrape_config([router, extra], "1s", extra=companions(observed.run_dir, prometheus.port))

    def ours() -> set[str]:  # the companions (itself, node, alertmanager) are always scraped besides
        return {t["job"] for t in active_targets(prometheus)} - {"prometheus", "node", "alertmanager"}

    wait_until(lambda: ours() == {"router", "nothing-here"}, 20, "prometheus to pick up the new target")
    set_targets(prometheus, [router])
    wait_until(lambda: ours() == {"router"}, 20, "prometheus to drop it again")


def test_start_is_idempotent(observed: Observed) -> None:
    port = observed.router_url.rsplit(":", 1)[1]
    again = start_prometheus(observed.run_dir, [ScrapeTarget(job="router", address=f"127.0.0.1:{port}")])
    assert again == observed.prometheus


@pytest.mark.parametrize("name", ["prometheus", "node-exporter", "alertmanager"])
def test_prometheus_and_its_companions_listen_on_loopback_only(observed: Observed, name: str) -> None:
    pid = supervisor.status(observed.run_dir / name / supervisor.STATE_FILE).pid
    listening = {c.laddr for c in psutil.Process(pid).net_connections() if c.status == psutil.CONN_LISTEN}
    assert listening, f"{name} listens on nothing"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, f"{name} listens on {listening}"


def test_bad_config_fails_startup_clearly(run_dir: Path) -> None:
    with pytest.raises(PrometheusError, match=r"exited during startup: .*not a valid duration"):
        start_prometheus(run_dir, [], scrape_interval="bogus", timeout=60)
    assert supervisor.status(run_dir / "prometheus" / "state.json").state == "stopped"
