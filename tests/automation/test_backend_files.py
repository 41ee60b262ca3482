"""Reading a file:// backend's latest checkpoint without the engine (the engine-level agreement is checked in
tests/engine/test_cli_release.py on a real stack)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from automation.backend_files import PROJECT_NAME, backend_root, stack_outputs

VERIFIED = {"live": {"version": "v2", "sha256": "ab" * 32}, "previous": {"version": "v1", "sha256": "cd" * 32}}


def _checkpoint(outputs: dict) -> dict:
    resources = [
        {"urn": "urn:pulumi:prod::mlrelease::pulumi:providers:pulumi::default", "type": "pulumi:providers:pulumi"},
        {
            "urn": "urn:pulumi:prod::mlrelease::pulumi:pulumi:Stack::mlrelease-prod",
            "type": "pulumi:pulumi:Stack",
            "outputs": outputs,
        },
    ]
    return {"version": 3, "checkpoint": {"stack": "organization/mlrelease/prod", "latest": {"resources": resources}}}


def _stacks(tmp_path: Path) -> Path:
    directory = tmp_path / ".pulumi" / "stacks" / PROJECT_NAME
    directory.mkdir(parents=True)
    return directory


def test_the_stack_outputs_come_from_the_latest_checkpoint(tmp_path: Path) -> None:
    (_stacks(tmp_path) / "prod.json").write_text(json.dumps(_checkpoint({"verified": VERIFIED})))
    assert stack_outputs(tmp_path.as_uri(), PROJECT_NAME, "prod") == {"verified": VERIFIED}
    assert stack_outputs(tmp_path.as_uri(), PROJECT_NAME, "organization/mlrelease/prod") == {"verified": VERIFIED}


def test_a_gzipped_checkpoint_is_read(tmp_path: Path) -> None:
    with gzip.open(_stacks(tmp_path) / "prod.json.gz", "wt") as file:
        json.dump(_checkpoint({"verified": VERIFIED}), file)
    assert stack_outputs(tmp_path.as_uri(), PROJECT_NAME, "prod") == {"verified": VERIFIED}


def test_what_the_files_cannot_say_is_none(tmp_path: Path) -> None:
    stacks = _stacks(tmp_path)
    assert stack_outputs(tmp_path.as_uri(), PROJECT_NAME, "prod") is None  # never updated
    (stacks / "prod.json").write_text('{"version": 3, "checkpoint": ')  # being replaced
    assert stack_outputs(tmp_path.as_uri(), PROJECT_NAME, "prod") is None
    assert stack_outputs("s3://bucket/state", PROJECT_NAME, "prod") is None
    assert backend_root("s3://bucket/state") is None
    assert backend_root("file://~/state?no_legacy=true") == Path("~/state").expanduser()


def test_a_rollback_takes_its_version_and_target_from_the_checkpoint_alone(tmp_path: Path) -> None:
    """The rollback's first move (before any engine call): the previous version, on the target the live
    release's recorded config names; after a finished restore, the live version (a re-run moves nothing)."""
    from automation.release import _recorded_previous
    from automation.stack import StackContext
    from components.spec import load_spec
    from components.targets import factory
    from components.targets.kubernetes import KubernetesTarget
    from components.targets.local import LocalTarget

    project = tmp_path / "project"
    ctx = StackContext("prod", project_dir=project, env={"PULUMI_BACKEND_URL": tmp_path.as_uri()}, select=False)
    assert _recorded_previous(ctx) is None  # never updated: the rollback asks the engine
    stacks = _stacks(tmp_path)
    base = {
        "model": {"name": "m", "version": "v2", "path": "m", "sha256": "a" * 64},
        "data": {"holdout": "h.csv", "holdout_sha256": "b" * 64},
    }

    def checkpoint(**verified: object) -> None:
        (stacks / "prod.json").write_text(json.dumps(_checkpoint({"verified": verified})))

    local = load_spec(base).model_dump(mode="json")
    checkpoint(**VERIFIED, config=local, restored_from=None)
    version, target = _recorded_previous(ctx)  # type: ignore[misc]
    assert version == "v1" and isinstance(target, LocalTarget)
    assert target.run_dir == factory.run_dir(project, "prod")

    checkpoint(live={"version": "v1"}, previous={"version": "v0"}, config=local, restored_from="v2")
    assert _recorded_previous(ctx)[0] == "v1"  # type: ignore[index]

    kube = {"kubeconfig": "kubeconfig", "namespace": "credit", "image": "mlrelease.local/mlrelease:x"}
    on_cluster = load_spec({**base, "target": "kubernetes", "kubernetes": kube}).model_dump(mode="json")
    checkpoint(**VERIFIED, config=on_cluster, restored_from=None)
    assert isinstance(_recorded_previous(ctx)[1], KubernetesTarget)  # type: ignore[index]

    checkpoint(live=VERIFIED["live"], previous=None, config=local, restored_from=None)
    assert _recorded_previous(ctx) is None  # nothing to go back to: the engine's answer says so in full
