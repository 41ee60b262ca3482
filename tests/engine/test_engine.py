"""The real Pulumi engine (pinned CLI + language host + dynamic provider) on a temporary file:// backend."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pulumi import automation as auto

from automation.engine import VENV_DIR, engine_env
from serving.artifacts import file_sha256

pytestmark = pytest.mark.engine


def _set_model(stack: auto.Stack, model_dir: Path, sha256: str, version: str = "v1") -> None:
    model = {"name": "credit-default", "version": version, "path": str(model_dir), "sha256": sha256}
    stack.set_config("mlrelease:model", auto.ConfigValue(value=json.dumps(model)), path=False)


def _release_resources(stack: auto.Stack) -> list[dict]:
    """Everything but provider resources: Pulumi records the stack's config on the default dynamic provider,
    so that one follows config edits even when the update fails; release resources must not."""
    resources = stack.export_stack().deployment.get("resources", [])
    return [r for r in resources if not r["type"].startswith("pulumi:providers:")]


def _artifact_resources(stack: auto.Stack) -> list[dict]:
    resources = stack.export_stack().deployment.get("resources", [])
    return [r for r in resources if r["urn"].endswith("::test-artifact")]


def test_pinned_engine_is_installed() -> None:
    out = subprocess.run(
        [VENV_DIR / "bin" / "pulumi", "version"], capture_output=True, text=True, env=engine_env(), check=True
    ).stdout.strip()
    pinned = next(
        line.split()[1]
        for line in Path("tools/engine/go.mod").read_text().splitlines()
        if line.strip().startswith("github.com/pulumi/pulumi/pkg/v3 ")
    )
    assert out == pinned
    for name in ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        assert (VENV_DIR / "bin" / name).exists(), name


def test_up_records_verified_artifact_in_state_and_history(stack_factory, model_dir: Path) -> None:
    stack = stack_factory()
    sha = file_sha256(model_dir / "model.joblib")
    _set_model(stack, model_dir, sha)

    preview = stack.preview()
    assert preview.change_summary.get("create", 0) >= 2

    result = stack.up()
    assert result.summary.result == "succeeded"
    assert result.outputs["model"].value == {"name": "credit-default", "version": "v1", "sha256": sha}

    [artifact] = _artifact_resources(stack)
    assert artifact["type"] == "pulumi-python:dynamic:Resource"
    assert artifact["outputs"]["sha256"] == sha
    assert artifact["outputs"]["artifact"] == str(model_dir / "model.joblib")
    component = [
        r
        for r in stack.export_stack().deployment["resources"]
        if r["type"] == "mlrelease:index:ModelDeployment"
    ]
    assert len(component) == 1 and artifact["parent"] == component[0]["urn"]

    history = stack.history()
    assert [h.kind for h in history] == ["update"] and history[0].result == "succeeded"

    # Nothing changed: a second up changes nothing.
    again = stack.up()
    assert again.summary.resource_changes == {"same": 3}


def test_check_failure_fails_preview_and_changes_nothing(stack_factory, model_dir: Path) -> None:
    stack = stack_factory()
    sha = file_sha256(model_dir / "model.joblib")
    _set_model(stack, model_dir, sha)
    stack.up()
    before = _release_resources(stack)

    (model_dir / "model.joblib").write_bytes(b"tampered bytes")
    _set_model(stack, model_dir, sha, version="v2")
    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    message = str(excinfo.value)
    assert f"but {sha} was expected" in message
    assert "restore the original artifact" in message

    with pytest.raises(auto.CommandError):
        stack.up()
    assert _release_resources(stack) == before
    assert [h.result for h in stack.history()] == ["failed", "succeeded"]


def test_malformed_config_is_one_line_naming_the_key(stack_factory, model_dir: Path) -> None:
    stack = stack_factory()
    _set_model(stack, model_dir, "not-a-digest")
    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    assert "stack config mlrelease:model.sha256 = 'not-a-digest' is not allowed" in str(excinfo.value)
    assert "Traceback" not in str(excinfo.value)

    stack.set_config("mlrelease:modle", auto.ConfigValue(value="x"))
    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    assert "mlrelease:modle is not a known key" in str(excinfo.value)


def test_cli_up_runs_the_program_through_the_language_host(
    project: Path, backend: dict, model_dir: Path
) -> None:
    """`pulumi up` from the CLI (not the Automation API) needs the language host: run it for real."""
    env = engine_env({**os.environ, **backend})
    env["PATH"] = "/usr/bin:/bin"  # the CLI must find its language host and providers beside itself
    pulumi = str(VENV_DIR / "bin" / "pulumi")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [pulumi, *args, "--non-interactive"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run("stack", "init", "cli").returncode == 0
    model = {
        "name": "credit-default",
        "version": "v1",
        "path": str(model_dir),
        "sha256": file_sha256(model_dir / "model.joblib"),
    }
    (project / "Pulumi.cli.yaml").write_text(json.dumps({"config": {"mlrelease:model": model}}))
    up = run("up", "--yes", "--skip-preview")
    assert up.returncode == 0, up.stdout + up.stderr
    out = run("stack", "output", "model", "--json")
    assert json.loads(out.stdout)["version"] == "v1"
