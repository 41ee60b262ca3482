"""A real Prometheus server on 127.0.0.1 that scrapes the routers, run by our supervisor.

The Debian package ``prometheus`` provides the binary (``apt-get install --no-install-recommends
prometheus``); its system service is not used (there is no systemd here, and a shared system instance
would scrape the wrong things). Each local target runs its own Prometheus: an allocated port, its own
data directory and a generated scrape config. The config is written as JSON (valid YAML, no YAML
library needed); ``set_targets`` rewrites it and reloads Prometheus through ``/-/reload`` so a router
that moved to a new port is scraped again without a restart.

Beside the caller's targets, every config scrapes Prometheus itself (job ``prometheus``) and its companions
(``serving.monitoring``): node_exporter with the host and the release metrics (job ``node``) and Alertmanager
(job ``alertmanager``), loads the recording and alerting rules of ``serving/rules/`` (evaluated at the scrape
interval, so an alert fires one interval after the value that trips it is scraped) and sends alerts to that
Alertmanager.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel, Field

from serving import http, monitoring, supervisor
from serving.release_metrics import ReleaseMetrics
from serving.wait import wait_until

DEBIAN_BINARY = "/usr/bin/prometheus"


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a config."""


class ScrapeTarget(BaseModel):
    """One endpoint to scrape, e.g. a router's ``/metrics``."""

    job: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    address: str = Field(pattern=r"^(127\.0\.0\.1|localhost):[0-9]{1,5}$", description="host:port")
    metrics_path: str = "/metrics"


class PrometheusHandle(BaseModel):
    """A running Prometheus: its API base URL and its files."""

    name: str
    url: str
    port: int
    pid: int
    config_path: Path
    data_dir: Path
    state_path: Path
    log_path: Path
    scrape_interval: str


def prometheus_binary() -> str:
    """Path of the prometheus binary, or PrometheusError telling how to install it."""
    found = shutil.which("prometheus") or (DEBIAN_BINARY if Path(DEBIAN_BINARY).exists() else None)
    if found is None:
        raise PrometheusError(
            "the prometheus binary is not installed: apt-get install -y --no-install-recommends prometheus "
            "(the project's setup does this)"
        )
    return found


class Companions(BaseModel):
    """What a Prometheus scrapes and alerts to besides the caller's targets: itself, node_exporter, Alertmanager."""

    targets: list[ScrapeTarget]
    alertmanagers: list[str]
    rule_files: list[str]


def companions(run_dir: Path, port: int) -> Companions:
    """Start (or find) the companions of the Prometheus on ``port`` in ``run_dir``."""
    try:
        node = monitoring.ensure_node_exporter(run_dir)
        alertmanager = monitoring.ensure_alertmanager(run_dir)
    except monitoring.MonitoringError as exc:
        raise PrometheusError(str(exc)) from None
    ReleaseMetrics(run_dir).publish_counters()
    return Companions(
        targets=[
            ScrapeTarget(job="prometheus", address=f"127.0.0.1:{port}"),
            ScrapeTarget(job="node", address=node.address),
            ScrapeTarget(job="alertmanager", address=alertmanager.address),
        ],
        alertmanagers=[alertmanager.address],
        rule_files=[str(monitoring.RULES_DIR / "*.yml")],
    )


def scrape_config(
    targets: list[ScrapeTarget], scrape_interval: str, jobs: Sequence[dict] = (), extra: Companions | None = None
) -> dict:
    """Prometheus config scraping ``targets`` every ``scrape_interval`` (timeout = interval).

    ``jobs`` are whole scrape configs added as they are: service discovery (e.g. a cluster's router pods
    found and scraped through the Kubernetes API server) rather than fixed addresses. ``extra`` adds the
    companions' targets, the rule files and the Alertmanager.
    """
    static: dict[tuple[str, str], list[str]] = {}
    for target in [*targets, *(extra.targets if extra else [])]:
        static.setdefault((target.job, target.metrics_path), []).append(target.address)
    config: dict = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": sorted(addresses)}]}
            for (job, path), addresses in sorted(static.items())
        ]
        + list(jobs),
    }
    if extra is not None:
        config["rule_files"] = extra.rule_files
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": extra.alertmanagers}]}]}
    return config


def _write_config(
    path: Path, targets: list[ScrapeTarget], scrape_interval: str, jobs: Sequence[dict], extra: Companions
) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(scrape_config(targets, scrape_interval, jobs, extra), indent=2) + "\n")
    tmp.replace(path)


def _ready(url: str) -> bool:
    try:
        return http.get(f"{url}/-/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _handle(proc: supervisor.ProcessHandle) -> PrometheusHandle:
    return PrometheusHandle(
        name=proc.name,
        url=f"http://127.0.0.1:{proc.ports['http']}",
        port=proc.ports["http"],
        pid=proc.pid,
        config_path=Path(proc.meta["config_path"]),
        data_dir=Path(proc.meta["data_dir"]),
        state_path=proc.state_path,
        log_path=proc.log_path,
        scrape_interval=proc.meta["scrape_interval"],
    )


def start_prometheus(
    run_dir: Path,
    targets: list[ScrapeTarget],
    *,
    name: str = "prometheus",
    scrape_interval: str = "1s",
    retention: str = "15d",
    timeout: float = 30.0,
    jobs: Sequence[dict] = (),
) -> PrometheusHandle:
    """Start (or find running) Prometheus ``name`` in ``run_dir`` scraping ``targets``; return when ready.

    If it already runs, its targets are set to ``targets`` and the running handle is returned.
    """
    existing = supervisor.running_handle(name, run_dir)
    if existing is not None:
        handle = _handle(existing)
        set_targets(handle, targets, jobs)
        return handle
    binary = prometheus_binary()
    work_dir = Path(run_dir).resolve() / name
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "prometheus.json"
    port = supervisor.free_port()
    _write_config(config_path, targets, scrape_interval, jobs, companions(run_dir, port))
    try:
        proc = supervisor.start_process(
            name,
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            run_dir,
            ports={"http": port},
            meta={"config_path": str(config_path), "data_dir": str(data_dir), "scrape_interval": scrape_interval},
        )
    except supervisor.ProcessExitedDuringStartup as exc:
        raise PrometheusError(
            f"prometheus {name} exited during startup: {_last_line(exc.log_path)} (log: {exc.log_path})"
        ) from None
    handle = _handle(proc)

    def ready() -> bool:
        if supervisor.status(proc.state_path).restarts > 0:
            supervisor.stop(proc.state_path)
            raise PrometheusError(
                f"prometheus {name} exited during startup: {_last_line(proc.log_path)} (log: {proc.log_path})"
            )
        return _ready(handle.url)

    try:
        wait_until(ready, timeout, f"prometheus {name} on {handle.url} to be ready")
    except TimeoutError as exc:
        supervisor.stop(proc.state_path)
        raise PrometheusError(f"{exc}; it was stopped (log: {proc.log_path})") from None
    return handle


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def set_targets(handle: PrometheusHandle, targets: list[ScrapeTarget], jobs: Sequence[dict] = ()) -> None:
    """Replace the scrape targets (and discovery ``jobs``) of a running Prometheus and reload its config."""
    run_dir = handle.config_path.parent.parent
    _write_config(handle.config_path, targets, handle.scrape_interval, jobs, companions(run_dir, handle.port))
    try:
        response = http.post(f"{handle.url}/-/reload", timeout=10.0)
    except httpx.TransportError:
        raise PrometheusError(
            f"prometheus {handle.name} is not answering on {handle.url}: start it again with start_prometheus"
        ) from None
    if response.status_code != 200:
        raise PrometheusError(
            f"prometheus {handle.name} refused the new config {handle.config_path}: {response.text.strip()}"
        )


def active_targets(handle: PrometheusHandle) -> list[dict]:
    """Prometheus's view of its targets (``/api/v1/targets``): scrape URL, health, last error."""
    response = http.get(f"{handle.url}/api/v1/targets", params={"state": "active"}, timeout=5.0)
    response.raise_for_status()
    return [
        {
            "url": t["scrapeUrl"],
            "health": t["health"],
            "last_error": t["lastError"],
            "job": t["labels"]["job"],
        }
        for t in response.json()["data"]["activeTargets"]
    ]
