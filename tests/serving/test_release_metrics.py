"""The release metrics: textfile contents, counters that outlive their writers, and the real node_exporter and
Alertmanager that serve them and receive their alerts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from serving import http, monitoring, supervisor
from serving.prometheus import start_prometheus
from serving.release_metrics import ReleaseMetrics
from serving.wait import wait_until


def _samples(path: Path) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def _gate_evidence(passed: bool, cache_key: str = "k1") -> dict:
    return {
        "passed": passed,
        "cache_key": cache_key,
        "started_at": "2026-12-02T10:00:00+00:00",
        "candidate": {"version": "v2", "sha256": "ab" * 32},
        "gates": {
            "latency": {
                "passed": passed,
                "observed": {"p99_ms": 80.0},
                "thresholds": {"p99_ms": 100},
                "report": {
                    "criteria": [
                        {
                            "name": "p99 latency (ms)",
                            "observed": 80.0,
                            "bound": 95.0 if passed else 130.0,
                            "comparator": "<=",
                            "threshold": 100.0,
                            "passed": passed,
                        }
                    ]
                },
            },
            "drift": {
                "passed": True,
                "observed": {"max_psi": 0.04},
                "thresholds": {"psi_threshold": 0.2},
                "report": {
                    "psi_threshold": 0.2,
                    "features": {"income": {"psi": 0.04, "p_adjusted": 0.6}, "age": {"psi": 0.01, "p_adjusted": None}},
                },
            },
        },
    }


def test_gates_write_each_gate_against_its_limit_and_drift_per_feature(tmp_path: Path) -> None:
    run = tmp_path / "staging"
    ReleaseMetrics(run).gates(_gate_evidence(passed=False))
    got = _samples(run / "textfile" / "gates.prom")
    base = {("stack", "staging"), ("candidate", "v2")}
    assert got[("mlrelease_gate_passed", frozenset({*base, ("gate", "latency")}))] == 0
    latency = frozenset({*base, ("gate", "latency"), ("measure", "p99_latency")})
    assert got[("mlrelease_gate_observed", latency)] == 130.0  # the decisive bound, not the point estimate
    assert got[("mlrelease_gate_threshold", latency)] == 100.0
    drift = frozenset({*base, ("gate", "drift"), ("measure", "max_psi")})
    assert (got[("mlrelease_gate_observed", drift)], got[("mlrelease_gate_threshold", drift)]) == (0.04, 0.2)
    income = frozenset({("stack", "staging"), ("feature", "income"), ("source", "gate")})
    assert got[("mlrelease_drift_psi", income)] == 0.04
    assert got[("mlrelease_drift_p_value_adjusted", income)] == 0.6
    assert ("mlrelease_drift_p_value_adjusted", income - {("feature", "income")} | {("feature", "age")}) not in got


def test_counters_outlive_their_writers_and_a_block_counts_once_per_evidence(tmp_path: Path) -> None:
    run = tmp_path / "staging"
    ReleaseMetrics(run).gates(_gate_evidence(passed=False, cache_key="k1"))  # the preview's check
    ReleaseMetrics(run).gates(_gate_evidence(passed=False, cache_key="k1"))  # the up's check, same evidence
    ReleaseMetrics(run).gates(_gate_evidence(passed=False, cache_key="k2"))
    ReleaseMetrics(run).checkpoint({"live": {"version": "v2", "sha256": "s2"}, "previous": {"version": "v1"}})
    ReleaseMetrics(run).checkpoint({"live": {"version": "v1"}, "restored_from": "v2"})  # a restore: not a release
    before = time.time()
    ReleaseMetrics(run).rollback("watch")
    ReleaseMetrics(run).rollback("watch")
    got = _samples(run / "textfile" / "counters.prom")
    last = got[("mlrelease_rollback_last_timestamp_seconds", frozenset({("stack", "staging"), ("trigger", "watch")}))]
    assert before <= last <= time.time()
    assert not any(k[0] == "mlrelease_rollback_last_timestamp_seconds" and ("trigger", "drill") in k[1] for k in got)
    assert got[("mlrelease_releases_total", frozenset({("stack", "staging"), ("outcome", "blocked")}))] == 2
    assert got[("mlrelease_releases_total", frozenset({("stack", "staging"), ("outcome", "promoted")}))] == 1
    assert got[("mlrelease_rollbacks_total", frozenset({("stack", "staging"), ("trigger", "watch")}))] == 2
    info = _samples(run / "textfile" / "release.prom")
    assert (
        info[
            (
                "mlrelease_release_info",
                frozenset({("stack", "staging"), ("role", "live"), ("version", "v1"), ("sha256", "")}),
            )
        ]
        == 1
    )


def test_watch_marks_the_breached_signal_and_the_phase(tmp_path: Path) -> None:
    run = tmp_path / "prod"
    signals = [
        {"signal": "error_rate", "state": "breached", "observed": 0.2, "threshold": 0.05, "samples": 400},
        {"signal": "latency", "state": "insufficient", "observed": None, "threshold": 250.0, "samples": 3},
    ]
    ReleaseMetrics(run).watch("fired", signals, 1.0)
    got = _samples(run / "textfile" / "watch.prom")
    error = frozenset({("stack", "prod"), ("signal", "error_rate")})
    latency = frozenset({("stack", "prod"), ("signal", "latency")})
    assert (got[("mlrelease_watch_signal_value", error)], got[("mlrelease_watch_signal_limit", error)]) == (0.2, 0.05)
    assert got[("mlrelease_watch_signal_breached", error)] == 1
    assert got[("mlrelease_watch_signal_breached", latency)] == 0
    assert ("mlrelease_watch_signal_value", latency) not in got  # no value is not a value of 0
    assert got[("mlrelease_watch_phase", frozenset({("stack", "prod"), ("phase", "fired")}))] == 1
    assert got[("mlrelease_watch_phase", frozenset({("stack", "prod"), ("phase", "watching")}))] == 0


def test_an_unwritable_metrics_directory_never_fails_the_caller(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "staging"
    run.mkdir()
    (run / "textfile").write_text("a file where the directory should be")
    ReleaseMetrics(run).rollback("operator")
    ReleaseMetrics(run).drill({"fault": "errors", "outcome": "failed"})
    assert "could not be written" in capsys.readouterr().err


class _Webhook:
    """A real Alertmanager webhook receiver on 127.0.0.1, in a thread: what a pager would receive."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.port = supervisor.free_port()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.received.append({**(await request.json()), "_at": time.time()})
            return web.Response(text="ok")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/alerts", receive)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for body in self.received for a in body["alerts"] if a["status"] == "firing"}

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    receiver = _Webhook()
    yield receiver
    receiver.close()


def test_a_watch_breach_reaches_alertmanager_and_the_webhook_within_an_evaluation(
    run_dir: Path, webhook: _Webhook
) -> None:
    stack_run = run_dir  # its name is the stack's, and the fixture stops what runs in it
    prometheus = start_prometheus(stack_run, [])
    monitoring.set_webhooks(stack_run, [f"http://127.0.0.1:{webhook.port}/alerts"])
    metrics = ReleaseMetrics(stack_run)
    healthy = {"signal": "error_rate", "state": "healthy", "observed": 0.0, "threshold": 0.05, "samples": 400}
    metrics.watch("watching", [healthy], time.time())

    def scraped(expr: str) -> bool:
        result = http.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        return bool(result["data"]["result"])

    wait_until(lambda: scraped("mlrelease_watch_signal_breached == 0"), 30, "the healthy watch metrics to be scraped")
    assert not monitoring.firing_alerts(stack_run)
    breached_at = time.time()
    metrics.watch("fired", [{**healthy, "state": "breached", "observed": 0.31}], time.time())

    def in_alertmanager() -> bool:
        return any(
            a["labels"]["alertname"] == "MlreleaseWatchErrorRateBreached" for a in monitoring.firing_alerts(stack_run)
        )

    wait_until(in_alertmanager, 30, "MlreleaseWatchErrorRateBreached in Alertmanager")
    seconds = time.time() - breached_at
    # One scrape (1 s) to read the file, one evaluation (1 s) to fire, the send; generous for a loaded 2-core runner.
    assert seconds < 10, f"the alert took {seconds:.1f}s to reach Alertmanager"
    wait_until(lambda: "MlreleaseWatchErrorRateBreached" in webhook.alertnames(), 30, "the webhook to receive it")
    alert = next(a for body in webhook.received for a in body["alerts"])
    assert alert["labels"]["stack"] == run_dir.name and alert["labels"]["severity"] == "page"
