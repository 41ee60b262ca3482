"""The committed stack configs are valid, prod is within policy, and their pinned digests are what the
deterministic sample build produces (a change to the sample models must update the configs with it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automation.engine import PROJECT_DIR
from components.policy import violations
from components.spec import ReleaseSpec, load_spec, resolve
from serving.sample_models import build_sample_models
from serving.sample_windows import build_sample_windows


def _spec(stack: str) -> ReleaseSpec:
    config = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    return load_spec({key.split(":", 1)[1]: value for key, value in config.items()})


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_stack_config_is_valid(stack: str) -> None:
    spec = _spec(stack)
    assert spec.environment == stack
    assert violations(spec) == []


def test_prod_is_at_least_as_strict_as_staging() -> None:
    staging, prod = _spec("staging"), _spec("prod")
    assert prod.canary.min_pairs >= staging.canary.min_pairs
    assert prod.gates == staging.gates


def test_pinned_digests_match_the_sample_build(tmp_path: Path) -> None:
    spec = _spec("staging")
    built = build_sample_models(tmp_path)
    windows = build_sample_windows(built.holdout.parent)
    model = next(m for m in built.models.values() if m.version == spec.model.version)
    assert spec.model.sha256 == model.sha256
    assert spec.data.holdout_sha256 == built.holdout_sha256
    assert resolve(spec.data.holdout, PROJECT_DIR).name == built.holdout.name
    assert resolve(spec.data.drift_reference or "", PROJECT_DIR).name == windows.reference.name
