"""Cluster processes that outlive the command that starts them, tracked by pid file.

``up`` returns once the cluster is ready, so its processes cannot be children supervised by it (that is what
``serving.supervisor`` does for the local target). Each one gets its own session, a log file and a pid file;
``down`` stops exactly those pids, then anything else still inside the namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil

from cluster.layout import Layout
from cluster.netns import ClusterError, inside
from serving.wait import wait_until


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_of(layout: Layout, name: str) -> int | None:
    path = layout.pids / f"{name}.pid"
    try:
        pid = int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def log_tail(layout: Layout, name: str, lines: int = 3) -> str:
    path = layout.logs / f"{name}.log"
    if not path.exists():
        return "(no log)"
    tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


def start(
    layout: Layout, name: str, cmd: list[str], *, in_netns: bool = True, env: dict[str, str] | None = None
) -> int:
    """Start ``name`` unless its recorded pid is alive; return the pid."""
    running = pid_of(layout, name)
    if running is not None:
        return running
    layout.pids.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    with open(layout.logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            inside(layout, cmd) if in_netns else cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=layout.run,
        )
    (layout.pids / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def check_running(layout: Layout, name: str) -> None:
    """Raise a ClusterError with the last log lines when ``name`` has exited."""
    if pid_of(layout, name) is None:
        raise ClusterError(f"{name} exited during startup: {log_tail(layout, name)} (log: {layout.logs}/{name}.log)")


def terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM every pid, SIGKILL those still alive after ``timeout`` seconds, and wait until all are gone."""

    def signal_all(sig: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def all_gone() -> bool:
        return not any(alive(p) for p in pids)

    signal_all(signal.SIGTERM)
    try:
        wait_until(all_gone, timeout, "cluster processes to exit after SIGTERM")
    except TimeoutError:
        signal_all(signal.SIGKILL)
        wait_until(all_gone, 10.0, "cluster processes to exit after SIGKILL")


def stop(layout: Layout, names: list[str], timeout: float = 10.0) -> None:
    pids = [pid for pid in (pid_of(layout, n) for n in names) if pid is not None]
    terminate(pids, timeout)
    for name in names:
        (layout.pids / f"{name}.pid").unlink(missing_ok=True)


def recorded(layout: Layout) -> list[str]:
    """Names with a pid file, in start order."""
    if not layout.pids.exists():
        return []
    files = sorted(layout.pids.glob("*.pid"), key=lambda p: p.stat().st_mtime)
    return [Path(p).stem for p in files]
