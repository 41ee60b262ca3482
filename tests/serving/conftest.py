"""Shared fixtures for serving/ tests: sample models built once, run directories that clean up after
themselves, and long-lived real model servers shared by the tests that only call them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import supervisor
from serving.modelserver import ModelServerHandle, start_model_server
from serving.sample_models import SampleModels, build_sample_models


def stop_all(run_dir: Path) -> None:
    """Stop every supervised process under ``run_dir`` so no test leaves a server running."""
    for state_path in Path(run_dir).glob(f"*/{supervisor.STATE_FILE}"):
        supervisor.stop(state_path)


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> SampleModels:
    """Every sample variant, its held-out data and schema, built once per session."""
    return build_sample_models(tmp_path_factory.mktemp("sample-models"))


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory for one test's processes; everything in it is stopped afterwards."""
    path = tmp_path / "run"
    path.mkdir()
    yield path
    stop_all(path)


@pytest.fixture(scope="session")
def session_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run directory for servers shared by the whole session; stopped at the end."""
    path = tmp_path_factory.mktemp("session-run")
    yield path
    stop_all(path)


@pytest.fixture(scope="session")
def incumbent_server(sample_models: SampleModels, session_run_dir: Path) -> ModelServerHandle:
    """A real MLServer serving the incumbent (v1); tests must not stop or kill it."""
    model = sample_models.models["incumbent"]
    return start_model_server(model.model_dir, model.sha256, session_run_dir)


@pytest.fixture(scope="session")
def candidate_server(sample_models: SampleModels, session_run_dir: Path) -> ModelServerHandle:
    """A real MLServer serving the good candidate (v2); tests must not stop or kill it."""
    model = sample_models.models["good"]
    return start_model_server(model.model_dir, model.sha256, session_run_dir)
