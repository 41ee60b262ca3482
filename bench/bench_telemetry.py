"""The one pane of glass: scrape time of the release metrics at size, and how fast a breach becomes an alert.

Prints one line per measurement (median, min, max, n). Results are recorded in BENCHMARKS.md. Usage:

    .venv/bin/python bench/bench_telemetry.py [--runs 5] [--versions 10] [--features 60]

- scrape: ``GET /metrics`` of the stack's real node_exporter, whose textfile collector serves the release metrics
  of ``--versions`` candidates' gates, drift of ``--features`` features from the gate and the live check, the
  canary, the watcher, the drill and the counters. The baseline is the same node_exporter's scrape with an empty
  textfile directory, measured in the same run (the ratio is what the release metrics add);
- render: writing all those files with ``serving.release_metrics`` (what a gate check or step pays);
- alert: a watch breach written to its file until Alertmanager holds the alert (scrape 1 s + evaluation 1 s);
- page: ``mlrelease dashboard`` in headless Chromium, navigation until every panel is drawn, against the page's
  own ``/api/panels`` (every panel's PromQL), measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from automation.engine import PROJECT_DIR, VENV_DIR, engine_env
from components.targets import factory
from serving import http, monitoring, supervisor
from serving.prometheus import start_prometheus
from serving.release_metrics import ReleaseMetrics
from serving.wait import wait_until


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def line(name: str, seconds: list[float], baseline: float | None = None) -> None:
    med = statistics.median(seconds)
    ratio = f"  ratio {med / baseline:.2f}x" if baseline else ""
    print(
        f"{name:<58} median {med * 1000:8.2f} ms  min {min(seconds) * 1000:8.2f}  max {max(seconds) * 1000:8.2f}"
        f"  n={len(seconds)}{ratio}"
    )


def write_all(metrics: ReleaseMetrics, versions: int, features: int) -> None:
    names = [f"f{i:02d}" for i in range(features)]
    drift = {
        "psi_threshold": 0.2,
        "features": {n: {"psi": 0.01 * (i % 20), "p_adjusted": 0.5} for i, n in enumerate(names)},
    }
    drift_gate = {"passed": True, "observed": {"max_psi": 0.19}, "thresholds": {"psi_threshold": 0.2}, "report": drift}
    for v in range(versions):
        metrics.gates(
            {
                "passed": True,
                "cache_key": f"k{v}",
                "started_at": time.time(),
                "candidate": {"version": f"v{v}"},
                "gates": {
                    "latency": {
                        "passed": True,
                        "report": {
                            "criteria": [
                                {
                                    "name": f"p{q} latency",
                                    "observed": 20.0,
                                    "bound": 25.0,
                                    "comparator": "<=",
                                    "threshold": 100.0,
                                }
                                for q in (50, 99)
                            ]
                        },
                    },
                    "memory": {
                        "passed": True,
                        "report": {
                            "criteria": [
                                {
                                    "name": "peak",
                                    "observed": 300.0,
                                    "bound": None,
                                    "uses_bound": False,
                                    "comparator": "<=",
                                    "threshold": 640.0,
                                }
                            ]
                        },
                    },
                    "evaluation": {
                        "passed": True,
                        "observed": {"candidate": 0.8, "difference_lower": -0.001},
                        "report": {"metric": "roc_auc", "tolerance": 0.01, "floor": 0.7},
                    },
                }
                | ({"drift": drift_gate} if v == versions - 1 else {}),
            }
        )
        # A stack keeps one gates file (its last candidate's); the other versions' are kept beside it here, without
        # the drift per feature, which is the stack's input drift, not the version's (it would repeat series).
        if v < versions - 1:
            shutil.copy(metrics.dir / "gates.prom", metrics.dir / f"gates-v{v}.prom")
    metrics.live_drift(drift)
    metrics.canary(
        {
            "step": 2,
            "weight": 50,
            "candidate": "v9",
            "incumbent": "v8",
            "pairs": 400,
            "passed": True,
            "ended_at": 1.0,
            "checks": [
                {"name": c, "passed": True, "observed": 0.01, "threshold": 0.05}
                for c in ("disagreement", "prediction_comparison", "error_rate", "latency")
            ],
        }
    )
    metrics.watch(
        "watching",
        [
            {"signal": s, "state": "healthy", "observed": 0.01, "threshold": 0.05, "samples": 300}
            for s in ("divergence", "error_rate", "latency", "telemetry")
        ],
        time.time(),
    )
    metrics.drill(
        {
            "fault": "error",
            "outcome": "recovered",
            "detection_seconds": 2.0,
            "recovery_seconds": 3.1,
            "budget_seconds": 120,
            "started_at": time.time(),
        }
    )
    metrics.checkpoint(
        {"live": {"version": "v9", "sha256": "a" * 64}, "previous": {"version": "v8", "sha256": "b" * 64}}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--features", type=int, default=60)
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", project / "Pulumi.yaml")  # the dashboard reads the project's name
    run_dir = factory.run_dir(project, "bench")
    try:
        node = monitoring.ensure_node_exporter(run_dir)
        scrape = lambda: http.get(f"{node.url}/metrics", timeout=10).raise_for_status()  # noqa: E731
        scrape()
        empty = timed(scrape, args.runs * 4)
        baseline = statistics.median(empty)
        line("scrape node_exporter, no release metrics (baseline)", empty)
        metrics = ReleaseMetrics(run_dir)
        render = timed(lambda: write_all(metrics, args.versions, args.features), args.runs)
        line(f"write release metrics ({args.versions} versions x {args.features} features)", render)
        body = http.get(f"{node.url}/metrics", timeout=10).text
        series = sum(1 for row in body.splitlines() if row.startswith("mlrelease_"))
        full = timed(scrape, args.runs * 4)
        line(f"scrape node_exporter with them ({series} mlrelease series)", full, baseline)

        prometheus = start_prometheus(run_dir, [])
        delays = []
        for i in range(args.runs):
            healthy = {"signal": "error_rate", "state": "healthy", "observed": 0.0, "threshold": 0.05, "samples": 1}
            metrics.watch("watching", [healthy], time.time())
            wait_until(lambda: not _firing(run_dir), 60, "the previous alert to resolve")
            started = time.perf_counter()
            metrics.watch("fired", [{**healthy, "state": "breached", "observed": 0.3 + i}], time.time())
            wait_until(lambda: _firing(run_dir), 60, "the breach alert in Alertmanager")
            delays.append(time.perf_counter() - started)
        line(f"watch breach written -> alert in Alertmanager (eval {prometheus.scrape_interval})", delays)
        page_load(project, args.runs)
    finally:
        for state in run_dir.glob(f"*/{supervisor.STATE_FILE}"):
            supervisor.stop(state)
        shutil.rmtree(project, ignore_errors=True)


def page_load(project: Path, runs: int) -> None:
    """The page in headless Chromium: navigation until every panel is drawn, against its own API's answer."""
    from playwright.sync_api import sync_playwright

    port = supervisor.free_port()
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "dashboard", "--stack", "bench", "--port", str(port)]
    server = subprocess.Popen([*argv, "--project-dir", str(project)], env=engine_env())
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: _answers(url), 30, "the dashboard")
        api = timed(lambda: http.get(url + "api/panels", timeout=30).raise_for_status(), runs)
        line("GET /api/panels (every panel's queries; baseline)", api)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1680, "height": 1050})

                def load() -> None:
                    page.goto(url)
                    page.wait_for_function(
                        "() => { const cards = [...document.querySelectorAll('#panels > .card')];"
                        " return cards.length > 0 && cards.every(c => c.dataset.state); }",
                        timeout=60_000,
                    )

                load()  # the browser's first start and cache
                line(
                    "page load until every panel is drawn (headless chromium)",
                    timed(load, runs),
                    statistics.median(api),
                )
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return http.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _firing(run_dir: Path) -> bool:
    return any(
        a["labels"]["alertname"] == "MlreleaseWatchErrorRateBreached" and a["status"]["state"] == "active"
        for a in monitoring.firing_alerts(run_dir)
    )


if __name__ == "__main__":
    main()
