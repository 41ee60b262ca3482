"""The local target outlives the process that created it: re-attach from state, see liveness, repair.

The runtime is created by a separate Python process that exits before the test looks at it, as a
``pulumi up`` does before the next command runs.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.targets.base import RuntimeState, Target, TargetError, VersionStats
from components.targets.local import LocalTarget
from serving import supervisor
from serving.client import InferenceClient
from serving.sample_models import FEATURES, MODEL_NAME, SampleModels
from serving.wait import wait_until

REPO = Path(__file__).resolve().parents[2]

CREATE = """
import sys
from pathlib import Path
from components.targets.base import RuntimeConfig
from components.targets.local import LocalTarget
run_dir, model_dir, sha256, model_name, features = sys.argv[1:6]
target = LocalTarget(Path(run_dir))
target.ensure_runtime(RuntimeConfig(model_name=model_name, feature_names=features.split(",")))
target.deploy("v1", Path(model_dir), sha256)
print(target.status().model_dump_json())
"""


@pytest.fixture
def created(sample_models: SampleModels, tmp_path: Path) -> Iterator[RuntimeState]:
    """A runtime created by a subprocess that has exited; destroyed afterwards."""
    model = sample_models.models["incumbent"]
    run_dir = tmp_path / ".mlrelease" / "run" / "staging"
    argv = [
        sys.executable,
        "-c",
        CREATE,
        str(run_dir),
        str(model.model_dir),
        model.sha256,
        MODEL_NAME,
        ",".join(FEATURES),
    ]
    done = subprocess.run(
        argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300
    )
    try:
        assert done.returncode == 0, done.stderr
        yield RuntimeState.model_validate_json(done.stdout.strip().splitlines()[-1])
    finally:
        LocalTarget(run_dir).destroy()


def test_reattach_after_creator_exits(created: RuntimeState, sample_models: SampleModels) -> None:
    target = LocalTarget.from_state(json.loads(created.model_dump_json()))
    assert isinstance(target, Target)
    state = target.status()
    assert state.healthy, state.problems
    assert state.router_url == created.router_url
    assert {name: p.pid for name, p in state.processes.items()} == {
        name: p.pid for name, p in created.processes.items()
    }
    # Prometheus's companions (serving/monitoring.py) are part of the runtime and re-attached with it.
    assert set(state.processes) == {"router", "prometheus", "node-exporter", "alertmanager", f"{MODEL_NAME}-v1"}
    assert stat.S_IMODE((target.run_dir / "admin-token").stat().st_mode) == 0o600
    assert target.routes().model_dump() == {"weights": {"v1": 100}, "primary": "v1"}
    assert target.deployment("v1").ready
    assert target.deployment("v9") is None

    start = time.time()
    rows = pd.read_parquet(sample_models.holdout)[FEATURES].head(5)
    with InferenceClient(state.router_url, MODEL_NAME) as client:

        def counted() -> VersionStats | None:
            # Requests keep coming while we poll: Prometheus cannot count the ones before a series' first
            # scrape (increase() needs two samples), so a single burst may never show up.
            assert {client.predict(rows.iloc[i : i + 1]).version for i in range(len(rows))} == {"v1"}
            stats = target.telemetry("v1", start)
            return stats if stats.requests is not None and stats.requests >= 10 else None

        stats = wait_until(counted, 60, "prometheus to count the requests")
    assert stats.errors == 0 and stats.error_rate == 0.0 and stats.p99_ms is not None
    never = target.telemetry("v9", start)
    assert (never.requests, never.errors, never.error_rate, never.p99_ms) == (None, None, None, None)

    # A new shadow fraction restarts the router from its persisted routes.
    changed = target.ensure_runtime(state.config.model_copy(update={"shadow_fraction": 0.5}))
    assert changed.healthy, changed.problems
    assert changed.processes["router"].pid != state.processes["router"].pid
    assert target.routes().model_dump() == {"weights": {"v1": 100}, "primary": "v1"}
    assert target.deployment("v1").ready


def test_dead_process_is_reported_repaired_and_destroyed(created: RuntimeState) -> None:
    target = LocalTarget.from_state(created)
    prometheus = supervisor.read_state(target.run_dir / "prometheus" / supervisor.STATE_FILE)
    os.kill(prometheus.supervisor_pid, signal.SIGKILL)
    os.kill(prometheus.pid, signal.SIGKILL)
    state = wait_until(
        lambda: (s := target.status()).processes["prometheus"].state == "dead" and s,
        30,
        "the killed prometheus to show as dead",
    )
    assert not state.healthy
    assert any(p.startswith("prometheus is dead") for p in state.problems)
    with pytest.raises(TargetError, match="not running: no telemetry"):
        target.telemetry("v1", time.time() - 10)

    repaired = target.ensure_runtime(state.config)
    assert repaired.healthy, repaired.problems
    assert repaired.router_url == created.router_url

    target.destroy()
    with pytest.raises(TargetError, match="no local runtime"):
        LocalTarget.from_state(created)
