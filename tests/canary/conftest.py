"""Fixtures for canary tests: sample models built once, and one real local runtime per module.

The runtime (Prometheus, router, the incumbent's MLServer, synthetic traffic) is shared by a module's tests
because starting it costs seconds on a shared 2-core machine; each test deploys its own candidate and the
``candidate`` fixture puts traffic back on the incumbent and removes the candidate afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from components.canary import first_release
from components.targets.base import Routes, RuntimeConfig
from components.targets.local import LocalTarget
from serving.sample_models import FEATURES, MODEL_NAME, SampleModels, build_sample_models

TRAFFIC_RPS = 60.0


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> SampleModels:
    """Every sample variant, its held-out data and schema, built once per session."""
    return build_sample_models(tmp_path_factory.mktemp("sample-models"))


@pytest.fixture(scope="module")
def target(sample_models: SampleModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    """A running local runtime with the incumbent live at 100 % and synthetic traffic flowing."""
    local = LocalTarget(tmp_path_factory.mktemp("project") / "run")
    try:
        local.ensure_runtime(RuntimeConfig(model_name=MODEL_NAME, feature_names=FEATURES, shadow_fraction=1.0))
        incumbent = sample_models.models["incumbent"]
        local.deploy(incumbent.version, incumbent.model_dir, incumbent.sha256)
        first_release(local, incumbent.version)
        local.start_traffic(TRAFFIC_RPS, sample_models.holdout)
        yield local
    finally:
        local.destroy()


@pytest.fixture
def deploy_candidate(target: LocalTarget, sample_models: SampleModels) -> Iterator[Callable[[str], str]]:
    """Deploy a candidate variant at weight 0; afterwards the incumbent is primary at 100 % again."""
    deployed: list[str] = []

    def deploy(variant: str) -> str:
        model = sample_models.models[variant]
        target.deploy(model.version, model.model_dir, model.sha256)
        deployed.append(model.version)
        return model.version

    yield deploy
    incumbent = sample_models.models["incumbent"].version
    target.set_routes(Routes(weights={incumbent: 100}, primary=incumbent))
    for version in deployed:
        target.remove(version)


@pytest.fixture
def paused_traffic(target: LocalTarget, sample_models: SampleModels) -> Iterator[None]:
    """No synthetic traffic for the test; it flows again afterwards."""
    target.stop_traffic()
    yield
    target.start_traffic(TRAFFIC_RPS, sample_models.holdout)
