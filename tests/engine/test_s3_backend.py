"""Two runners, one ``s3://`` backend on the real object store: separate working copies of the program, one
bucket holding the state, the release lock and a model directory. The engine's DIY S3 backend and ``mlrelease
promote`` work on it, and while one runner's promote holds the stack the other's is refused, naming the holder;
rollback, audit and audit --verify read the bucket, and a model is released from it. Then ``watch``, ``drill``
and ``status``, whose file:// twins are in tests/engine/test_cli_drill.py: while another runner's lease in the
bucket is held, the watcher pauses and a rollback exits 1 naming that runner; once it is released, a drill breaks
v2 and the watcher rolls back to v1 by itself, and ``status`` and ``audit`` answer from the bucket."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pulumi import automation as auto

from automation.engine import VENV_DIR, select_stack
from automation.lock import holder, release_lock
from automation.s3server import S3Server
from automation.stores.s3 import Bucket
from components.spec import load_spec
from serving.artifacts import read_settings
from serving.wait import wait_until
from tests.engine.conftest import Project, mlrelease

STACK = "shared"
WATCH = {"missing_seconds": 6}  # silence is a breach within the watcher's 12 s below
BUDGET = 120
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def runners(sample, s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, Project]]:
    """Runner A and runner B: two working copies of the program, both on the bucket's backend."""
    backend = {**s3.env(), "PULUMI_BACKEND_URL": s3.backend_url()}
    a = Project(tmp_path_factory.mktemp("runner-a"), sample, backend)
    b = Project(tmp_path_factory.mktemp("runner-b"), sample, backend)
    try:
        yield a, b
    finally:
        a.teardown()


def test_two_runners_share_the_bucket_and_a_second_promote_is_refused_naming_the_holder(
    runners: tuple[Project, Project], s3: S3Server, s3_env: dict[str, str]
) -> None:
    a, b = runners
    stack = a.released(STACK, watch=WATCH)
    assert stack.outputs()["verified"].value["live"]["version"] == "v1"
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="mlrelease-state", Prefix=".pulumi/")["Contents"]]
    assert any(k.startswith(f".pulumi/stacks/mlrelease/{STACK}") for k in keys), keys
    # Runner B checks out the same repository: the same stack file, its own directory.
    shutil.copy(a.dir / f"Pulumi.{STACK}.yaml", b.dir / f"Pulumi.{STACK}.yaml")
    seen_by_b = select_stack(STACK, work_dir=b.dir, env=b.env, create=False)
    assert seen_by_b.outputs()["verified"].value["live"]["version"] == "v1"

    good = str(a.models.models["good"].model_dir)
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "promote", "--stack", STACK, "--model", good, "--json"]
    first = subprocess.Popen([*argv, "--project-dir", str(a.dir)], env=a.env, stdout=subprocess.PIPE, text=True)
    try:
        url = s3.backend_url()
        held_by_a = lambda: (holder(b.dir, STACK, url) or {}).get("operation") == "promote v2"  # noqa: E731
        wait_until(held_by_a, 120, "runner A's promote to take the lock")
        second = mlrelease(b, "promote", "--stack", STACK, "--model", good)
        assert second.code == 1, second
        assert f"stack {STACK} is busy: promote v2 (pid {first.pid} on " in second.stderr, second.stderr
        assert "wait for it to finish, then run promote v2 again" in second.stderr
    finally:
        out, _ = first.communicate(timeout=900)
    assert first.returncode == 0 and json.loads(out)["outcome"] == "promoted", out
    assert holder(b.dir, STACK, s3.backend_url()) is None  # released at the end
    assert seen_by_b.outputs()["verified"].value["live"]["version"] == "v2"  # B reads what A released


def test_on_s3_rollback_moves_traffic_before_the_engine_a_model_comes_from_the_bucket_and_audit_reads_it(
    runners: tuple[Project, Project], s3: S3Server, s3_env: dict[str, str]
) -> None:
    """After the two-runner test (v2 live, v1 previous): a rollback whose first traffic move reads the bucket's
    checkpoint, a promotion of a model directory in the bucket, then ``audit`` and ``audit --verify`` from the
    bucket, and a tampered object refused at preview with the digest sentence."""
    a, _ = runners
    rolled = mlrelease(a, "rollback", "--stack", STACK)
    assert rolled.code == 0 and rolled.json["restored"]["version"] == "v1", rolled
    assert "before any engine call" in rolled.stderr, rolled.stderr  # the bucket's checkpoint, not the engine

    good = a.models.models["good"]
    url = s3.backend_url().replace("mlrelease-state?", "mlrelease-state/models/credit-default/v2/?", 1)
    bucket = Bucket.from_backend_url(url)
    for path in sorted(p for p in good.model_dir.rglob("*") if p.is_file()):
        key = bucket.key(str(path.relative_to(good.model_dir)))
        bucket.client().put_object(Bucket=bucket.name, Key=key, Body=path.read_bytes())
    promoted = mlrelease(a, "promote", "--stack", STACK, "--model", url, "--sha256", good.sha256, timeout=900)
    assert promoted.code == 0 and promoted.json["outcome"] == "promoted", promoted

    audited = mlrelease(a, "audit", "--stack", STACK, "--at", datetime.now(UTC).isoformat())
    assert audited.code == 0, audited
    top = audited.json["models"][0]
    assert (top["version"], top["traffic_percent"], top["sha256"]) == ("v2", 100.0, good.sha256), audited.json
    assert audited.json["config"]["model"]["path"] == url  # state says where the model came from
    state = select_stack(STACK, work_dir=a.dir, env=a.env, create=False)
    verified = state.outputs()["verified"].value
    [record] = [r for r in state.export_stack().deployment["resources"] if r["urn"].endswith("::release-checkpoint")]
    sealed = record["outputs"]["history_sealed"]  # the per-update objects written since the record before it
    assert sealed and all(e["file"].startswith(f"{STACK}-") and len(e["sha256"]) == 64 for e in sealed), sealed
    chain = mlrelease(a, "audit", "--stack", STACK, "--verify")
    assert chain.code == 0 and chain.json["intact"] and chain.json["head"] == verified["chain_sha256"], chain
    assert chain.json["sealed_records"] >= 3, chain

    artifact = bucket.key(read_settings(good.model_dir).parameters.uri.removeprefix("./"))
    original = bucket.client().get_object(Bucket=bucket.name, Key=artifact)["Body"].read()
    bucket.client().put_object(Bucket=bucket.name, Key=artifact, Body=original + b"tampered")
    try:
        stack = select_stack(STACK, work_dir=a.dir, env=a.env, create=False)
        with pytest.raises(auto.errors.CommandError) as refused:
            stack.preview()
        assert f"artifact {url.split('?')[0].rstrip('/')}/" in str(refused.value), refused.value
        assert f"but {good.sha256} was expected: the file changed since its digest was recorded" in str(refused.value)
    finally:
        bucket.client().put_object(Bucket=bucket.name, Key=artifact, Body=original)


def test_on_s3_the_bucket_lease_pauses_the_watcher_and_refuses_a_rollback_naming_the_holder(
    runners: tuple[Project, Project], s3_env: dict[str, str]
) -> None:
    """After the release from the bucket (v2 live, v1 warm). Silence is a breach (traffic is stopped), so only the
    lease keeps the watcher from firing."""
    project, _ = runners
    stack = select_stack(STACK, work_dir=project.dir, env=project.env, create=False)
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
    runners: tuple[Project, Project], s3_env: dict[str, str]
) -> None:
    project, _ = runners
    stack = select_stack(STACK, work_dir=project.dir, env=project.env, create=False)
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
