"""A release is a one-key diff of the commented stack file, and a refused check is its one sentence.

One stack whose ``Pulumi.<stack>.yaml`` is the documented ``Pulumi.staging.yaml`` — every comment — naming this
run's sample models and data, driven by the real ``mlrelease`` command, engine and servers, in order: v1 first
release, v2 promoted, a gate-blocked candidate, a rollback to v1, then ``pulumi preview`` by hand with a tampered
artifact.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi import automation as auto

from automation.engine import PROJECT_DIR, VENV_DIR, engine_env
from automation.stack import EngineProgress
from automation.stack_file import StackFile
from tests.automation.test_stack_file import changes
from tests.engine.conftest import CliResult, Project, mlrelease

pytestmark = pytest.mark.engine
STACK = "diff"


def merged(base: Any, override: Any) -> Any:
    """``override``'s leaves over ``base``: the sample's paths, digests and test speeds in the documented file."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in override.items()}}
    return override


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    return project.stack(STACK)


@pytest.fixture(scope="module")
def reviewed(project: Project, stack: auto.Stack) -> str:
    """The stack file as a team reviews it in git, after the stack was created (which wrote its salt)."""
    path = stack_file(project)
    path.write_text((PROJECT_DIR / "Pulumi.staging.yaml").read_text() + path.read_text())
    edited = StackFile(path)
    sample = project.config("incumbent")
    sample["model"]["path"] = str(Path(sample["model"]["path"]).resolve())  # as `mlrelease promote` records it
    for key, value in sample.items():
        edited.set(f"mlrelease:{key}", merged(edited.config().get(f"mlrelease:{key}"), value))
    edited.save()
    return path.read_text()


def stack_file(project: Project) -> Path:
    return project.dir / f"Pulumi.{STACK}.yaml"


def promote(project: Project, variant: str) -> CliResult:
    model = project.models.models[variant].model_dir
    return mlrelease(project, "promote", "--stack", STACK, "--model", str(model))


def keys(lines: list[str]) -> list[str]:
    return [line.split(":")[0].strip() for line in lines]


def remarks(text: str) -> list[str]:
    """Every comment, whole-line and end-of-line, in order."""
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


def test_a_promotion_changes_exactly_the_model_lines(project: Project, reviewed: str) -> None:
    first = promote(project, "incumbent")
    assert first.code == 0 and first.json["outcome"] == "promoted", first
    assert stack_file(project).read_text() == reviewed  # the file named v1 already: nothing was written

    good = promote(project, "good")
    assert good.code == 0 and good.json["outcome"] == "promoted", good
    released = stack_file(project).read_text()
    removed, added = changes(reviewed, released)
    assert keys(removed) == keys(added) == ["version", "path", "sha256"], (removed, added)
    assert remarks(released) == remarks(reviewed) and len(remarks(reviewed)) > 40
    sample = project.models.models["good"]
    model = yaml.safe_load(released)["config"]["mlrelease:model"]
    assert (model["version"], model["path"], model["sha256"]) == ("v2", str(sample.model_dir.resolve()), sample.sha256)


def test_a_blocked_promotion_leaves_the_file_byte_identical(project: Project, reviewed: str) -> None:
    released = stack_file(project).read_bytes()
    blocked = promote(project, "worse")
    assert blocked.code == 3 and blocked.json["outcome"] == "blocked", blocked
    assert stack_file(project).read_bytes() == released


def test_a_rollback_gives_back_the_reviewed_lines_plus_its_restore_marker(project: Project, reviewed: str) -> None:
    back = mlrelease(project, "rollback", "--stack", STACK)
    assert back.code == 0 and back.json["outcome"] == "rolled_back", back
    removed, added = changes(reviewed, stack_file(project).read_text())
    assert removed == [], removed  # v1's lines as reviewed, and no default of the recorded config spelled out
    assert added[0] == "  mlrelease:restore:"
    assert keys(added[1:]) == ["version", "sha256", "from_version", "traffic_moved_at", "reason"]


def test_preview_by_hand_with_a_tampered_artifact_prints_the_digest_sentence_not_the_spec(
    project: Project, stack: auto.Stack, reviewed: str, tmp_path: Path
) -> None:
    good = project.models.models["good"]
    tampered = tmp_path / "tampered-model"
    shutil.copytree(good.model_dir, tampered)
    with open(tampered / "model.joblib", "ab") as artifact:
        artifact.write(b"\0")
    path = stack_file(project)
    before = path.read_bytes()
    edited = StackFile(path)
    model = edited.config()["mlrelease:model"]
    edited.set("mlrelease:model", {**model, "version": "v2", "path": str(tampered), "sha256": good.sha256})
    edited.remove("mlrelease:restore")
    edited.save()
    try:
        preview = subprocess.run(
            [str(VENV_DIR / "bin" / "pulumi"), "preview", "-s", STACK, "--non-interactive"],
            cwd=project.dir,
            env=engine_env(project.env),
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = preview.stdout + preview.stderr
        assert preview.returncode != 0, output
        assert "resource 'release-gates' has a problem: candidate credit-default v2: artifact " in output, output
        assert f"but {good.sha256} was expected" in output and "restore the original artifact" in output
        assert "map[" not in output and "property spec" not in output, output

        progress = EngineProgress(lambda _line: None)  # the Automation API's view: what `mlrelease` reports
        with pytest.raises(auto.CommandError):
            stack.preview(on_event=progress, on_output=lambda _line: None)
        assert progress.failure().startswith("candidate credit-default v2: artifact "), progress.errors
        assert progress.failure().endswith("rebuild it and record the new digest"), progress.errors
    finally:
        path.write_bytes(before)
