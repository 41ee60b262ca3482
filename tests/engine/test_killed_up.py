"""A ``pulumi up`` killed mid-step: traffic is not left split, and the next ``promote`` converges.

The real engine and runtime: v1 live, then ``mlrelease promote`` of v2 killed (SIGKILL to its process group:
the CLI, the engine and the step's provider) while step 1 bakes. The step's split is leased
(``mlrelease:canary.lease_seconds``), so the router puts all traffic back on v1 by itself; the next promote
re-runs the steps the state no longer finds live and promotes v2.

It runs on both backends. On ``s3://`` the killed promote leaves its release lock object and the engine's own
lock in the bucket: the lock's lease (5 s here) ends by itself, and the next promote clears the engine lock of
the dead process, as on ``file://``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pulumi import automation as auto

from automation.engine import VENV_DIR
from automation.lock import LEASE_ENV, holder
from serving.wait import wait_until
from tests.engine.conftest import FAST_CANARY, Project, kill_engine_leftovers, mlrelease, release_resources

pytestmark = pytest.mark.engine
STACK = "killed"
LEASE_S = 5.0
# A bake long enough to kill it in: min_pairs at 80 req/s takes several seconds.
CANARY = {**FAST_CANARY, "lease_seconds": LEASE_S, "min_pairs": 600, "max_pairs": 3000}


@pytest.fixture(scope="module", params=["file", "s3"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sample) -> Iterator[Project]:
    """A copy of the program on a ``file://`` backend of its own, or on a prefix of its own in the bucket."""
    backend = None
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "s3":
            s3 = request.getfixturevalue("s3")
            url = s3.backend_url().replace("?", f"/killed-{uuid.uuid4().hex[:8]}?", 1)
            backend = {**s3.env(), "PULUMI_BACKEND_URL": url, LEASE_ENV: "5"}
            for name, value in s3.env().items():  # this process reads the lock too
                patch.setenv(name, value)
        proj = Project(tmp_path_factory.mktemp(f"killed-{request.param}"), sample, backend)
        try:
            yield proj
        finally:
            proj.teardown()


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    return project.released(STACK, canary=CANARY)


def test_a_promote_killed_mid_step_leaves_no_split_and_the_next_one_converges(
    project: Project, stack: auto.Stack
) -> None:
    target = project.target(STACK)
    assert target.routes().model_dump() == {"weights": {"v1": 100.0}, "primary": "v1"}
    model = project.models.models["good"].model_dir
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "promote", "--stack", STACK, "--model", str(model)]
    proc = subprocess.Popen(
        [*argv, "--project-dir", str(project.dir)], env=project.env, start_new_session=True, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: target.routes().weights.get("v2", 0) > 0, 300, "step 1 to move traffic to v2")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kill_engine_leftovers(project.dir)
    killed_at = time.monotonic()
    wait_until(lambda: target.routes().weights.get("v2", 0) == 0, 60, "the unrenewed split to revert")
    reverted = time.monotonic() - killed_at
    print(f"split reverted {reverted:.2f} s after the kill (lease {LEASE_S:g} s)")
    assert target.routes().primary == "v1"
    # Nothing verified v2: the stack's checkpoint still names v1, no step in state claims v2's split, and audit
    # answers v1 alone for after the revert (the killed update wrote no history record: RELIABILITY.md).
    assert stack.outputs()["verified"].value["live"]["version"] == "v1"
    claimed = [r["outputs"]["verdict"] for r in release_resources(stack) if (r.get("outputs") or {}).get("verdict")]
    assert all(v.get("candidate") != "v2" for v in claimed), f"a step in state claims v2's split: {claimed}"
    audit = mlrelease(project, "audit", "--stack", STACK, "--at", datetime.now(UTC).isoformat())
    assert audit.code == 0 and audit.json["state"] == "settled", audit
    assert {m["version"]: m["traffic_percent"] for m in audit.json["models"] if m["traffic_percent"]} == {"v1": 100}

    # The killed promote's lock: an flock the kernel dropped, or an object in the bucket whose lease ends.
    url = project.env["PULUMI_BACKEND_URL"]
    wait_until(lambda: holder(project.dir, STACK, url) is None, 60, "the killed promote's lock to free itself")
    again = mlrelease(project, "promote", "--stack", STACK, "--model", str(model))
    assert again.code == 0 and again.json["outcome"] == "promoted", again
    assert [v["weight"] for v in again.json["canary"]] == [5, 50, 100]
    assert target.routes().model_dump() == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}
    assert json.loads(stack.get_config("mlrelease:model").value)["version"] == "v2"
