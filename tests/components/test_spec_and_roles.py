"""Stack config validation messages, the prod policy table, and who is incumbent in a release."""

from __future__ import annotations

import pytest

from components.deployment import release_roles
from components.policy import PROD_BOUNDS, violations
from components.spec import ReleaseSpec, SpecError, load_spec

SHA = "a" * 64
BASE = {
    "model": {"name": "credit-default", "version": "v1", "path": "m", "sha256": SHA},
    "data": {"holdout": "h.parquet", "holdout_sha256": SHA},
}


def _with(**changes: object) -> dict:
    config = {**BASE, **changes}
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_with(gates={"evaluation": {"tolerance": -1}}), "mlrelease:gates.evaluation.tolerance = -1 is not allowed"),
        (_with(canary={"steps": [5, 50]}), "the last step must be 100"),
        (_with(canary={"steps": [2.5, 100]}), "steps must be whole percentages"),
        (_with(canary={"min_pairs": 500, "max_pairs": 100}), "max_pairs must be >= min_pairs"),
        (_with(gates={"drift": {"enabled": False}}), "mlrelease:gates.drift.enabled is not a known key"),
        (_with(environment="qa"), "mlrelease:environment = 'qa' is not allowed"),
        ({"model": BASE["model"]}, "mlrelease:data is missing"),
    ],
)
def test_bad_config_names_key_value_and_rule(config: dict, message: str) -> None:
    with pytest.raises(SpecError) as excinfo:
        load_spec(config)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_no_key_can_switch_a_gate_off() -> None:
    """Gates are fields with thresholds only; nothing is named like a switch."""
    for gate in ReleaseSpec.model_fields["gates"].annotation.model_fields.values():
        names = set(gate.annotation.model_fields)
        assert not names & {"enabled", "skip", "disabled", "override"}


def test_defaults_are_within_prod_policy_and_each_bound_can_fail() -> None:
    spec = load_spec(_with(environment="prod"))
    assert violations(spec) == []
    for bound in PROD_BOUNDS:
        data = spec.model_dump()
        section, *path, last = bound.key.split(".")
        node = data[section]
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        looser = bound.limit * 2 if bound.op == "max" else bound.limit / 2
        if isinstance(node, list):
            node[int(last)] = looser
        else:
            node[last] = looser
        found = violations(data)
        assert any(f"mlrelease:{bound.key} = " in line and "looser than prod policy" in line for line in found), bound
    assert violations(spec.model_copy(update={"environment": "staging"})) == []


V1 = {"name": "m", "version": "v1", "model_dir": "/m1", "sha256": "1" * 64}
V2 = {"name": "m", "version": "v2", "model_dir": "/m2", "sha256": "2" * 64}
V3 = {"name": "m", "version": "v3", "model_dir": "/m3", "sha256": "3" * 64}


def test_first_release_has_no_incumbent() -> None:
    assert release_roles(None, V1, 3600, 0) == {"incumbent": None, "warm": None}


def test_new_candidate_is_judged_against_the_verified_live_model() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0}
    assert release_roles(verified, V3, 3600, 200.0) == {"incumbent": V2, "warm": V2}


def test_unchanged_release_keeps_its_inputs_and_retires_the_warm_model_after_the_window() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0}
    assert release_roles(verified, V2, 3600, 200.0) == {"incumbent": V1, "warm": V1}
    assert release_roles(verified, V2, 3600, 3800.0) == {"incumbent": V1, "warm": None}


def test_same_version_with_other_bytes_is_a_new_candidate() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0}
    tampered = {**V2, "sha256": "f" * 64}
    assert release_roles(verified, tampered, 3600, 200.0)["incumbent"] == V2


def test_one_drift_window_without_the_other_is_an_error() -> None:
    data = {**BASE["data"], "drift_reference": "ref.parquet"}
    with pytest.raises(SpecError) as excinfo:
        load_spec({**BASE, "data": data})
    assert "mlrelease:data" in str(excinfo.value) and "set both drift_reference and drift_current" in str(excinfo.value)
