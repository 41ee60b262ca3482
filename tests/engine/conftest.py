"""Fixtures for tests that run the real Pulumi engine on a temporary ``file://`` backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from automation.engine import PROJECT_DIR, VENV_DIR, select_stack
from serving.artifacts import file_sha256


@pytest.fixture(scope="session", autouse=True)
def _engine_installed() -> None:
    """Fail (never skip) when the engine is missing: CI must always run these tests."""
    missing = [
        name
        for name in ("pulumi", "pulumi-language-python", "pulumi-resource-pulumi-python")
        if not (VENV_DIR / "bin" / name).exists()
    ]
    if missing:
        pytest.fail(f"engine binaries missing from .venv/bin: {missing}; run 'make setup'")


@pytest.fixture
def backend(tmp_path: Path) -> dict[str, str]:
    """A fresh local backend for one test: nothing leaks between tests or into the project's state."""
    state = tmp_path / "state"
    state.mkdir()
    return {"PULUMI_BACKEND_URL": state.as_uri(), "PULUMI_CONFIG_PASSPHRASE": "test"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the mlrelease program in a temp dir, so stack config files never land in the repo."""
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(PROJECT_DIR / "__main__.py", work / "__main__.py")
    (work / "Pulumi.yaml").write_text(
        f"name: mlrelease\nruntime:\n  name: python\n  options:\n    virtualenv: {VENV_DIR}\n"
    )
    return work


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A minimal MLServer model directory: the digest check needs the settings and the artifact bytes."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "model.joblib").write_bytes(b"not a real model, but real bytes with a real digest")
    (path / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "credit-default",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            }
        )
    )
    return path


@pytest.fixture
def stack_factory(project: Path, backend: dict[str, str]):
    """Create a stack of the copied program on the temp backend."""

    def make(name: str = "test"):
        return select_stack(name, work_dir=project, env=_merged_env(backend))

    return make


def _merged_env(overrides: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **overrides}


def digest(path: Path) -> str:
    return file_sha256(path / "model.joblib")
