"""Two runners, one ``s3://`` backend on the real object store: separate working copies of the program, one
bucket holding the state and the release lock. The engine's DIY S3 backend and ``mlrelease promote`` work on it,
and while one runner's promote holds the stack the other's is refused, naming the holder."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from automation.engine import VENV_DIR, select_stack
from automation.lock import holder
from automation.s3server import S3Server
from serving.wait import wait_until
from tests.engine.conftest import Project, mlrelease

STACK = "shared"
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
    stack = a.released(STACK)
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
