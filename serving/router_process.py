"""Start and stop a router as a supervised, detached process (what the local target and tests use).

The config is written next to the supervisor's state (`run_dir/<name>/router.json`, readable only by
the owner since it holds the admin token), the router is started with `python -m serving.router` under
`serving.supervisor` (outlives its starter, restarted on crash), and `start_router` returns once
`/v2/health/live` answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from pydantic import BaseModel

from serving import http, supervisor
from serving.private_files import write_private
from serving.routing import RouterConfig
from serving.wait import wait_until


class RouterHandle(BaseModel):
    """A running router: where to call it and where its supervisor keeps its state."""

    name: str
    url: str
    admin_token: str
    config_path: Path
    state_path: Path
    pid_path: Path
    log_path: Path
    pid: int


def _live(url: str) -> bool:
    try:
        return http.get(f"{url}/v2/health/live", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def start_router(config: RouterConfig, run_dir: Path, *, name: str = "router", timeout: float = 30.0) -> RouterHandle:
    """Run a router for `config` under the supervisor as `name`; return when it answers on its port."""
    base = Path(run_dir).resolve() / name
    base.mkdir(parents=True, exist_ok=True)
    config_path = base / "router.json"
    write_private(config_path, config.model_dump_json(indent=2))
    try:
        proc = supervisor.start_process(
            name,
            [sys.executable, "-m", "serving.router", "--config", str(config_path)],
            run_dir,
            ports={"http": config.port},
            meta={"role": "router", "model_name": config.model_name},
        )
    except supervisor.ProcessExitedDuringStartup as exc:
        raise RuntimeError(f"router {name} exited during startup: {exc}") from None
    url = f"http://127.0.0.1:{config.port}"

    def live() -> bool:
        if supervisor.status(proc.state_path).restarts:
            raise RuntimeError(f"router {name} exited during startup; see {proc.log_path}")
        return _live(url)

    try:
        wait_until(live, timeout, f"router {name} on {url}")
    except (TimeoutError, RuntimeError):
        supervisor.stop(proc.state_path)
        raise
    return RouterHandle(
        name=name,
        url=url,
        admin_token=config.admin_token,
        config_path=config_path,
        state_path=proc.state_path,
        pid_path=proc.pid_path,
        log_path=proc.log_path,
        pid=proc.pid,
    )


def stop_router(handle: RouterHandle) -> None:
    """SIGTERM the router (it flushes its inference log and pairs), then its supervisor."""
    supervisor.stop(handle.state_path)
