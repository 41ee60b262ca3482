"""Routing table and config validation: weights, stickiness, upstream changes (no processes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.routing import RouterConfig, RoutingTable, UpstreamSpec, validate_weights


def _table(weights: dict[str, int]) -> RoutingTable:
    upstreams = {
        v: UpstreamSpec(version=v, url=f"http://127.0.0.1:{9000 + i}", model_name="m") for i, v in enumerate(weights)
    }
    return RoutingTable(upstreams, dict(weights), "v1")


def test_weights_must_sum_to_100_and_name_known_versions() -> None:
    assert validate_weights({"v1": 100}, ["v1", "v2"]) == {"v1": 100, "v2": 0}
    with pytest.raises(ValueError, match="sum to 100"):
        validate_weights({"v1": 60, "v2": 30}, ["v1", "v2"])
    with pytest.raises(ValueError, match="unknown versions"):
        validate_weights({"v1": 50, "v3": 50}, ["v1", "v2"])
    with pytest.raises(ValueError, match="integer"):
        validate_weights({"v1": 50.5, "v2": 49.5}, ["v1", "v2"])  # type: ignore[dict-item]


def test_sticky_keys_keep_their_version_and_candidate_keys_stay_when_weight_grows() -> None:
    at_10 = _table({"v1": 90, "v2": 10})
    at_50 = at_10.with_weights({"v1": 50, "v2": 50})
    keys = [f"customer-{i}" for i in range(2000)]
    first = {k: at_10.choose(k) for k in keys}
    assert all(at_10.choose(k) == first[k] for k in keys)
    on_candidate = [k for k in keys if first[k] == "v2"]
    assert 120 < len(on_candidate) < 280  # ~10 % of 2000
    assert all(at_50.choose(k) == "v2" for k in on_candidate)


def test_zero_weight_never_chosen_and_switch_is_total() -> None:
    table = _table({"v1": 0, "v2": 100})
    assert {table.choose(None) for _ in range(500)} == {"v2"}
    assert {table.with_weights({"v1": 100}).choose(f"k{i}") for i in range(500)} == {"v1"}


def test_with_three_up_the_candidate_under_canary_takes_every_shadow_copy() -> None:
    ready = {"v1": True, "v2": True, "v3": True}
    stepping = _table({"v1": 95, "v3": 5, "v2": 0})  # v1 incumbent, v3 candidate at 5 %, v2 standby
    assert {stepping.shadow_peer("v1", ready) for _ in range(200)} == {"v3"}
    assert stepping.shadow_peer("v3", ready) == "v1" and stepping.shadow_peer("v2", ready) == "v1"
    # Nothing but the incumbent carries traffic (a failed attempt reverted): both others get copies.
    reverted = stepping.with_weights({"v1": 100})
    assert {reverted.shadow_peer("v1", ready) for _ in range(200)} == {"v2", "v3"}
    # A version that is not ready never gets one.
    assert {stepping.shadow_peer("v1", {**ready, "v3": False}) for _ in range(50)} == {"v2"}
    assert stepping.shadow_peer("v1", {"v1": True}) is None


def test_upstreams_are_added_at_zero_and_removed_only_without_traffic() -> None:
    table = _table({"v1": 100})
    table = table.with_upstream(UpstreamSpec(version="v2", url="http://127.0.0.1:9100", model_name="m"))
    assert table.weights == {"v1": 100, "v2": 0}
    with pytest.raises(ValueError, match="already"):
        table.with_upstream(table.upstreams["v2"])
    busy = table.with_weights({"v1": 50, "v2": 50})
    with pytest.raises(ValueError, match="still has traffic"):
        busy.without_upstream("v2")
    with pytest.raises(ValueError, match="incumbent"):
        table.without_upstream("v1")
    assert list(table.without_upstream("v2").upstreams) == ["v1"]


def test_config_rejects_non_loopback_upstreams_and_bad_incumbent(tmp_path) -> None:
    base = {
        "port": 8080,
        "admin_token": "x" * 16,
        "model_name": "m",
        "log_dir": tmp_path,
        "pairs_dir": tmp_path,
        "upstreams": [{"version": "v1", "url": "http://127.0.0.1:9001", "model_name": "m"}],
        "weights": {"v1": 100},
        "incumbent": "v1",
    }
    assert RouterConfig.model_validate(base).weights == {"v1": 100}
    with pytest.raises(ValidationError, match=r"127\.0\.0\.1"):
        RouterConfig.model_validate(
            {**base, "upstreams": [{"version": "v1", "url": "http://10.0.0.1:9001", "model_name": "m"}]}
        )
    with pytest.raises(ValidationError, match="incumbent"):
        RouterConfig.model_validate({**base, "incumbent": "v9"})
    with pytest.raises(ValidationError, match="reserved"):
        RouterConfig.model_validate({**base, "feature_names": ["_ts"]})


@given(
    split=st.integers(min_value=0, max_value=100),
    more=st.integers(min_value=0, max_value=100),
    keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50),
)
def test_keys_go_only_to_weighted_versions_and_growing_the_candidate_never_moves_its_keys(
    split: int, more: int, keys: list[str]
) -> None:
    table = _table({"v1": 100 - split, "v2": split})
    grown = table.with_weights({"v1": 100 - max(split, more), "v2": max(split, more)})
    for key in keys:
        chosen = table.choose(key)
        assert table.weights[chosen] > 0
        if chosen == "v2":
            assert grown.choose(key) == "v2"
