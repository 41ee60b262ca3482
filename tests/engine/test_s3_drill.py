"""``watch``, ``drill`` and ``status`` on an ``s3://`` backend, through the real CLI and engine.

The file:// twins are tests/engine/test_cli_drill.py. Here the stack's state, checkpoints and release lock are in
the bucket: while another runner's lease is held, the watcher pauses and a rollback exits 1 naming that runner;
once it is released, a drill breaks v2 and the watcher rolls back to v1 by itself, reading the checkpoint from the
bucket; ``status`` and ``audit`` then answer from the bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pulumi import automation as auto

from automation.lock import release_lock
from automation.s3server import S3Server
from components.spec import load_spec
from tests.engine.conftest import Project, mlrelease

pytestmark = pytest.mark.engine
STACK = "drill-s3"
WATCH = {"missing_seconds": 6}
BUDGET = 120


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, sample, s3: S3Server) -> Iterator[Project]:
    """A copy of the program on a prefix of its own in the bucket; this process signs for the store too."""
    url = s3.backend_url().replace("?", f"/drill-{uuid.uuid4().hex[:8]}?", 1)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env().items():
            patch.setenv(name, value)
        proj = Project(tmp_path_factory.mktemp("drill-s3"), sample, {**s3.env(), "PULUMI_BACKEND_URL": url})
        try:
            yield proj
        finally:
            proj.teardown()


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    """v2 live and verified over v1, which stays warm."""
    stack = project.released(STACK, watch=WATCH)
    project.configure(stack, project.config("good", watch=WATCH))
    stack.up(on_output=lambda _line: None)
    assert project.target(STACK).routes().model_dump() == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}
    return stack


def test_on_s3_the_bucket_lease_pauses_the_watcher_and_refuses_a_rollback_naming_the_holder(
    project: Project, stack: auto.Stack
) -> None:
    """Silence is a breach (traffic is stopped), so only the lease keeps the watcher from firing."""
    url, target = project.env["PULUMI_BACKEND_URL"], project.target(STACK)
    target.stop_traffic()
    try:
        with release_lock(project.dir, STACK, "promote v9 from another runner", url):
            paused = mlrelease(project, "watch", "--stack", STACK, "--exit-after-rollback", "--max-seconds", "12")
            busy = mlrelease(project, "rollback", "--stack", STACK)
    finally:
        target.start_traffic(load_spec(project.config("good")).canary.synthetic_rps, project.models.holdout)
    assert paused.code == 0 and paused.json["phase"] == "stopped" and paused.json["fired_at"] is None, paused
    assert busy.code == 1 and "promote v9 from another runner" in busy.stderr, busy
    assert stack.outputs()["verified"].value["live"]["version"] == "v2"
    assert target.routes().primary == "v2"


def test_on_s3_a_drill_is_recovered_by_the_watcher_and_status_and_audit_read_the_bucket(
    project: Project, stack: auto.Stack
) -> None:
    result = mlrelease(project, "drill", "--stack", STACK, "--fault", "error", "--budget", str(BUDGET))
    assert result.code == 0, result
    report = result.json
    assert (report["outcome"], report["faulty_version"], report["restored_version"]) == ("recovered", "v2", "v1")
    assert 0 < report["detection_seconds"] < report["recovery_seconds"] <= BUDGET
    assert project.target(STACK).routes().model_dump() == {"weights": {"v1": 100.0}, "primary": "v1"}
    verified = stack.outputs()["verified"].value
    assert verified["live"]["version"] == "v1" and verified["restored_from"] == "v2"

    status = mlrelease(project, "status", "--stack", STACK)
    assert status.code == 0, status
    assert status.json["verified"]["live"]["version"] == "v1" and status.json["operation"] is None, status.json
    assert status.json["last_drill"].startswith("recovered error "), status.json
    audited = mlrelease(project, "audit", "--stack", STACK, "--at", datetime.now(UTC).isoformat())
    assert audited.code == 0, audited
    top = audited.json["models"][0]
    assert (top["version"], top["traffic_percent"]) == ("v1", 100.0), audited.json
