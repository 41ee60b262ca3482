"""Faults injected while ``mlrelease promote`` bakes a canary step, with the real engine, runtime and backend.

``tests/canary/test_faults.py`` drives one step without the engine, where the step's verdict is the whole
story. Here the same faults hit a real release, so each test also asserts what only a release leaves behind:
the CLI's outcome and exit code, the live split as the router reports it, the stack state (no canary step left
in state claiming a split that is not live) and what ``mlrelease audit`` answers for the moment of the fault
and for after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from pulumi import automation as auto

from automation.engine import VENV_DIR
from components.targets.local import PROMETHEUS, LocalTarget
from serving import supervisor
from serving.wait import wait_until
from tests.engine.conftest import FAST_CANARY, CliResult, Project, mlrelease, release_resources

pytestmark = pytest.mark.engine
STACK = "faults"
# A bake long enough to inject a fault in: min_pairs at 80 req/s takes several seconds.
CANARY = {**FAST_CANARY, "min_pairs": 600, "max_pairs": 3000}


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    return project.released(STACK, canary=CANARY)


def _promote_with_fault(project: Project, fault: Callable[[LocalTarget], None]) -> tuple[CliResult, float]:
    """``mlrelease promote`` of v2 with ``fault`` injected once step 1 moved traffic; its result, the fault time."""
    target = project.target(STACK)
    model = project.models.models["good"].model_dir
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "promote", "--stack", STACK, "--model", str(model)]
    proc = subprocess.Popen(
        [*argv, "--project-dir", str(project.dir), "--json"],
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: target.routes().weights.get("v2", 0) > 0, 300, "step 1 to move traffic to v2")
        at = time.time()
        fault(target)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    return CliResult(subprocess.CompletedProcess(proc.args, proc.returncode, out, err)), at


def _audit(project: Project, ts: float) -> tuple[str, dict[str, float]]:
    result = mlrelease(project, "audit", "--stack", STACK, "--at", datetime.fromtimestamp(ts, UTC).isoformat())
    assert result.code == 0, result
    return result.json["state"], {m["version"]: m["traffic_percent"] for m in result.json["models"]}


def _assert_left_on_v1(project: Project, stack: auto.Stack, result: CliResult, fault_at: float) -> None:
    """What a failed step must leave: v1 serving everything, state naming v1, audit telling both moments."""
    assert result.code == 4 and result.json["outcome"] == "rolled_back", result
    assert project.target(STACK).routes().model_dump() == {"weights": {"v1": 100.0, "v2": 0.0}, "primary": "v1"}
    assert stack.outputs()["verified"].value["live"]["version"] == "v1"
    claimed = [
        r["outputs"]["verdict"]
        for r in release_resources(stack)
        if isinstance((r.get("outputs") or {}).get("verdict"), dict)
    ]
    assert all(v.get("candidate") != "v2" for v in claimed), f"a step in state claims v2's split: {claimed}"
    # The failing step's weight at the fault, reconstructed; after the update, v1 alone.
    assert _audit(project, fault_at) == ("update_in_progress", {"v2": 5.0, "v1": 95.0})
    assert _audit(project, time.time()) == ("settled", {"v1": 100.0, "v2": 0.0})


def test_the_candidates_server_killed_mid_step_rolls_back_and_names_it(project: Project, stack: auto.Stack) -> None:
    killed: list[int] = []

    def kill_candidate(target: LocalTarget) -> None:
        server = target.deployment("v2")
        assert server is not None and server.process.pid
        killed.append(server.process.pid)
        os.kill(server.process.pid, signal.SIGKILL)

    result, at = _promote_with_fault(project, kill_candidate)
    assert "availability" in result.json["failure"] and "v2" in result.json["failure"], result
    _assert_left_on_v1(project, stack, result, at)


@pytest.fixture
def prometheus_back(project: Project) -> Iterator[None]:
    yield
    target = project.target(STACK)
    target.ensure_runtime(target.config())
    assert target.status().processes[PROMETHEUS].state == "running"


def test_prometheus_stopped_mid_step_halts_and_reverts_never_promotes(
    project: Project, stack: auto.Stack, prometheus_back: None
) -> None:
    def stop_prometheus(target: LocalTarget) -> None:
        supervisor.stop(target.run_dir / PROMETHEUS / supervisor.STATE_FILE)

    result, at = _promote_with_fault(project, stop_prometheus)
    assert "prometheus" in result.json["failure"], result
    _assert_left_on_v1(project, stack, result, at)
