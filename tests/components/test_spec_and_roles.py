"""Stack config validation messages, the prod policy table, and who is incumbent in a release."""

from __future__ import annotations

import pytest

from components.deployment import release_roles
from components.policy import PROD_BOUNDS, violations
from components.spec import ReleaseSpec, RestoreSpec, SpecError, load_spec

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
        (_with(gates={"latency": {"max_ratio": 1}}), "mlrelease:gates.latency.max_ratio = 1 is not allowed"),
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


def _roles(verified, candidate, now=200.0, restore=None) -> tuple:
    roles = release_roles(verified, candidate, 3600, now, restore)
    return roles["incumbent"], roles["warm"]


def test_first_release_has_no_incumbent() -> None:
    assert release_roles(None, V1, 3600, 0) == {
        "incumbent": None,
        "warm": None,
        "standby": None,
        "previous_release": None,
        "restore": None,
    }


def test_new_candidate_is_judged_against_the_verified_live_model() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0, "previous_release": {"live": V1}}
    roles = release_roles(verified, V3, 3600, 200.0)
    assert (roles["incumbent"], roles["warm"]) == (V2, V2)
    # The stack's rollback target stays up through the attempt: a failed attempt leaves it warm.
    assert roles["standby"] == V1
    # What a rollback restores: the record of v2, one level deep (the chain does not grow).
    assert roles["previous_release"] == {"live": V2, "previous": V1, "verified_at": 100.0}


def test_unchanged_release_keeps_its_inputs_and_retires_the_warm_model_after_the_window() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0, "previous_release": {"live": V1}}
    assert _roles(verified, V2) == (V1, V1)
    assert _roles(verified, V2, now=3800.0) == (V1, None)
    assert release_roles(verified, V2, 3600, 200.0)["previous_release"] == {"live": V1}


def _restore(model: dict) -> RestoreSpec:
    return RestoreSpec(version=model["version"], sha256=model["sha256"], from_version="v2")


def test_restore_of_the_verified_previous_release_takes_all_traffic_without_a_canary() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 1.0, "previous_release": {"data_digests": {"h": "d1"}}}
    roles = release_roles(verified, V1, 3600, 200.0, _restore(V1))
    assert (roles["incumbent"], roles["warm"], roles["previous_release"]) == (None, None, None)
    assert roles["restore"]["refusal"] is None and roles["restore"]["data_digests"] == {"h": "d1"}
    # Once restored, the same config changes nothing: the restored release is the verified live one.
    restored = {"live": V1, "previous": None, "verified_at": 2.0, "data_digests": {"h": "d1"}}
    again = release_roles(restored, V1, 3600, 300.0, _restore(V1))
    assert again["restore"]["refusal"] is None and again["restore"]["data_digests"] == {"h": "d1"}


def test_restore_of_a_model_this_stack_never_verified_is_refused() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 1.0}
    refusal = release_roles(verified, V3, 3600, 200.0, _restore(V3))["restore"]["refusal"]
    assert "neither the verified live (v2) nor the verified previous (v1)" in refusal
    assert (
        "only a verified release can be restored"
        in release_roles(None, V1, 3600, 0, _restore(V1))["restore"]["refusal"]
    )


def test_restore_must_name_the_configured_model() -> None:
    restore = {"version": "v9", "sha256": "9" * 64}
    with pytest.raises(SpecError) as excinfo:
        load_spec({**BASE, "restore": restore})
    assert str(excinfo.value).startswith("stack config: restore of v9 does not match mlrelease:model")


def test_same_version_with_other_bytes_is_a_new_candidate() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0}
    tampered = {**V2, "sha256": "f" * 64}
    assert release_roles(verified, tampered, 3600, 200.0)["incumbent"] == V2


def test_one_drift_window_without_the_other_is_an_error() -> None:
    data = {**BASE["data"], "drift_reference": "ref.parquet"}
    with pytest.raises(SpecError) as excinfo:
        load_spec({**BASE, "data": data})
    assert "mlrelease:data" in str(excinfo.value) and "set both drift_reference and drift_current" in str(excinfo.value)


def test_the_standby_is_the_verified_previous_inside_its_window_and_never_the_candidate() -> None:
    verified = {"live": V2, "previous": V1, "verified_at": 100.0}
    assert release_roles(verified, V3, 3600, 3800.0)["standby"] is None  # past the window: not warm anyway
    assert release_roles(verified, V1, 3600, 200.0)["standby"] is None  # v1 again, through the gates
    assert release_roles(verified, {**V1, "sha256": "e" * 64}, 3600, 200.0)["standby"] is None  # one label
    assert release_roles(verified, V2, 3600, 200.0)["standby"] is None  # unchanged: v1 is the warm one
    assert release_roles({"live": V1, "previous": None, "verified_at": 1.0}, V2, 3600, 2.0)["standby"] is None
    assert release_roles(verified, V3, 3600, 200.0, _restore(V1))["standby"] is None
