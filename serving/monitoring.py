"""Prometheus's companions on this machine: node_exporter (host + textfile metrics) and Alertmanager.

Every Prometheus that ``serving.prometheus`` starts brings these up beside it, in the same run directory and on
127.0.0.1 only, so model telemetry and infrastructure telemetry land in one Prometheus and its alerts reach a real
Alertmanager:

- ``node-exporter``: Debian's ``prometheus-node-exporter``. It serves the host's CPU, memory, disk and network,
  and, through its textfile collector, the ``<run_dir>/textfile/*.prom`` files that the short-lived release
  processes write (``serving.release_metrics``). Only the collectors the dashboard and rules read are on, so
  a scrape stays cheap and never walks hardware this machine may not expose.
- ``alertmanager``: Debian's ``prometheus-alertmanager``, its gossip port disabled (``--cluster.listen-address=``;
  the default binds 0.0.0.0:9094). It routes to webhook receivers set with ``set_webhooks``; with none it still
  holds the firing alerts, which the dashboard and ``GET /api/v2/alerts`` show.

Both are supervised like Prometheus (restarted if they die) and stopped with the runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from pydantic import BaseModel

from serving import http, supervisor
from serving.wait import wait_until

NODE_EXPORTER = "node-exporter"
ALERTMANAGER = "alertmanager"
TEXTFILE_DIR = "textfile"
RULES_DIR = Path(__file__).resolve().parent / "rules"
_NODE_COLLECTORS = ("cpu", "meminfo", "loadavg", "filesystem", "diskstats", "netdev", "pressure", "textfile", "time")


class MonitoringError(RuntimeError):
    """A companion binary is missing or did not start."""


class Companion(BaseModel):
    """A running companion: what Prometheus scrapes (and, for Alertmanager, where it sends alerts)."""

    name: str
    address: str
    url: str


def textfile_dir(run_dir: Path) -> Path:
    """Where the release metrics of the stack whose run directory is ``run_dir`` are written."""
    return Path(run_dir).resolve() / TEXTFILE_DIR


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise MonitoringError(
            f"{name} is not installed: apt-get install -y --no-install-recommends {package} (make setup does this)"
        )
    return found


def _answers(url: str) -> bool:
    try:
        return http.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _start(name: str, argv: list[str], run_dir: Path, port: int, ready_path: str) -> Companion:
    try:
        proc = supervisor.start_process(name, argv, run_dir, ports={"http": port})
    except supervisor.ProcessExitedDuringStartup as exc:
        raise MonitoringError(f"{name} exited during startup (log: {exc.log_path})") from None
    url = f"http://127.0.0.1:{proc.ports['http']}"
    try:
        wait_until(lambda: _answers(url + ready_path), 30.0, f"{name} on {url} to answer")
    except TimeoutError as exc:
        supervisor.stop(proc.state_path)
        raise MonitoringError(f"{exc}; it was stopped (log: {proc.log_path})") from None
    return Companion(name=name, address=f"127.0.0.1:{proc.ports['http']}", url=url)


def _running(name: str, run_dir: Path) -> Companion | None:
    handle = supervisor.running_handle(name, run_dir)
    if handle is None:
        return None
    port = handle.ports["http"]
    return Companion(name=name, address=f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}")


def ensure_node_exporter(run_dir: Path) -> Companion:
    """The stack's node_exporter, started if it is not running."""
    running = _running(NODE_EXPORTER, run_dir)
    if running is not None:
        return running
    textfiles = textfile_dir(run_dir)
    textfiles.mkdir(parents=True, exist_ok=True)
    port = supervisor.free_port()
    argv = [
        _binary("prometheus-node-exporter", "prometheus-node-exporter"),
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in _NODE_COLLECTORS),
        f"--collector.textfile.directory={textfiles}",
        "--log.level=warn",
    ]
    return _start(NODE_EXPORTER, argv, run_dir, port, "/metrics")


def _alertmanager_config(webhooks: list[str]) -> dict:
    """Route every alert to one receiver at once: a rollback's alert must not wait out a 30 s group_wait."""
    receiver: dict = {"name": "mlrelease"}
    if webhooks:
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True} for url in webhooks]
    return {
        "route": {
            "receiver": "mlrelease",
            "group_by": ["alertname", "stack", "signal"],
            "group_wait": "0s",
            "group_interval": "5s",
            "repeat_interval": "4h",
        },
        "receivers": [receiver],
    }


def _write_alertmanager_config(path: Path, webhooks: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_alertmanager_config(webhooks), indent=2) + "\n")
    tmp.replace(path)


def ensure_alertmanager(run_dir: Path) -> Companion:
    """The stack's Alertmanager, started (with no receiver yet) if it is not running."""
    running = _running(ALERTMANAGER, run_dir)
    if running is not None:
        return running
    work = Path(run_dir).resolve() / ALERTMANAGER
    (work / "data").mkdir(parents=True, exist_ok=True)
    config = work / "alertmanager.json"
    if not config.exists():
        _write_alertmanager_config(config, [])
    port = supervisor.free_port()
    argv = [
        _binary("prometheus-alertmanager", "prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return _start(ALERTMANAGER, argv, run_dir, port, "/-/ready")


def set_webhooks(run_dir: Path, urls: list[str]) -> None:
    """Send every alert of this stack's Alertmanager to ``urls`` (webhook receivers), reloading its config."""
    companion = ensure_alertmanager(run_dir)
    _write_alertmanager_config(Path(run_dir).resolve() / ALERTMANAGER / "alertmanager.json", list(urls))
    response = http.post(f"{companion.url}/-/reload", timeout=10.0)
    if response.status_code != 200:
        raise MonitoringError(f"alertmanager refused the webhook config: {response.text.strip()}")


def firing_alerts(run_dir: Path) -> list[dict]:
    """The alerts Alertmanager holds as active (``/api/v2/alerts``); MonitoringError if it is not running."""
    companion = _running(ALERTMANAGER, run_dir)
    if companion is None:
        raise MonitoringError(f"alertmanager in {run_dir} is not running: `pulumi up` or `mlrelease promote` starts it")
    response = http.get(f"{companion.url}/api/v2/alerts", params={"active": "true"}, timeout=5.0)
    response.raise_for_status()
    return response.json()
