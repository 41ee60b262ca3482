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
