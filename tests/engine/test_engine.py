"""The real Pulumi engine: pinned CLI, language host, dynamic providers and the policy-pack launcher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pulumi import automation as auto

from automation.engine import PROJECT_DIR, VENV_DIR, engine_env
from tests.engine.conftest import Project, release_resources, resource

pytestmark = pytest.mark.engine


def test_pinned_engine_is_installed() -> None:
    out = subprocess.run(
        [VENV_DIR / "bin" / "pulumi", "version"], capture_output=True, text=True, env=engine_env(), check=True
    ).stdout.strip()
    go_mod = (PROJECT_DIR / "tools/engine/go.mod").read_text().splitlines()
    pinned = next(line.split()[1] for line in go_mod if line.strip().startswith("github.com/pulumi/pulumi/pkg/v3 "))
    assert out == pinned
    for name in (
        "pulumi-language-python",
        "pulumi-language-python-exec",
        "pulumi-resource-pulumi-python",
        "pulumi-analyzer-policy-mlrelease-python",
    ):
        assert (VENV_DIR / "bin" / name).exists(), name


def test_cli_up_runs_the_program_through_the_language_host(project: Project) -> None:
    """`pulumi up` from the CLI (not the Automation API) runs the program through the language host."""
    env = engine_env(project.env)
    env["PATH"] = "/usr/bin:/bin"  # the CLI must find its language host and providers beside itself
    pulumi = str(VENV_DIR / "bin" / "pulumi")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [pulumi, *args, "--non-interactive"], cwd=project.dir, env=env, capture_output=True, text=True, timeout=600
        )

    assert run("stack", "init", "cli").returncode == 0
    project.stacks.append("cli")
    config = {f"mlrelease:{key}": value for key, value in project.config("incumbent").items()}
    (project.dir / "Pulumi.cli.yaml").write_text(json.dumps({"config": config}))

    up = run("up", "--yes", "--skip-preview")
    assert up.returncode == 0, up.stdout + up.stderr
    verified = json.loads(run("stack", "output", "verified", "--json").stdout)
    assert verified["live"]["version"] == "v1" and verified["previous"] is None
    assert project.target("cli").routes().weights == {"v1": 100}


def test_check_failure_fails_preview_and_changes_nothing(project: Project, unchanged) -> None:
    stack = project.stack("tamper")
    project.configure(stack, project.config("incumbent"))
    result = stack.up()
    assert result.summary.result == "succeeded"
    assert [h.kind for h in stack.history()] == ["update"]
    assert resource(stack, "release-gates")["outputs"]["evidence"]["passed"] is True

    # The same version label with other bytes: the check refuses before any gate or server runs.
    tampered = project.dir / "tampered-model"
    subprocess.run(["cp", "-r", str(project.models.models["good"].model_dir), str(tampered)], check=True)
    with open(tampered / "model.joblib", "ab") as artifact:
        artifact.write(b"\0")
    config = project.config("good")
    config["model"] = {**config["model"], "path": str(tampered)}
    project.configure(stack, config)
    assert_unchanged = unchanged(stack, project.target("tamper"))

    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    message = str(excinfo.value)
    assert f"but {project.models.models['good'].sha256} was expected" in message
    assert "restore the original artifact" in message
    with pytest.raises(auto.CommandError):
        stack.up()
    assert_unchanged()
    assert [h.result for h in stack.history()] == ["failed", "succeeded"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["model"].update(sha256="not-a-digest"), "stack config mlrelease:model.sha256 = 'not-a-digest'"),
        (lambda c: c.update(modle="x"), "stack config mlrelease:modle is not a known key"),
        (lambda c: c["canary"].update(steps=[50, 25]), "stack config mlrelease:canary.steps = [50, 25] is not allowed"),
        (lambda c: c.pop("data"), "stack config mlrelease:data is missing"),
    ],
)
def test_malformed_config_is_one_line_naming_the_key(project: Project, mutate, expected: str) -> None:
    stack = project.stack("malformed")
    config = json.loads(json.dumps(project.config("incumbent")))
    mutate(config)
    project.configure(stack, config)
    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    assert expected in str(excinfo.value)
    assert "Traceback" not in str(excinfo.value)
    assert release_resources(stack) == []


def test_missing_dataset_is_one_line_and_changes_nothing(project: Project) -> None:
    stack = project.stack("nodata")
    config = project.config("incumbent")
    config["data"] = {**config["data"], "holdout": str(Path(project.models.holdout).with_name("gone.parquet"))}
    project.configure(stack, config)
    with pytest.raises(auto.CommandError) as excinfo:
        stack.preview()
    assert "gone.parquet does not exist: restore it or set mlrelease:data.holdout" in str(excinfo.value)
    assert release_resources(stack) == []
