"""Releases with `pulumi preview` / `pulumi up` on the local target: real engine, servers, router, Prometheus.

One stack per module: v1 first, then v2 promoted through every canary step; every later test starts from v2
live and leaves it live (the ``live_v2`` fixture restores the config when a test changed it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pulumi import automation as auto

from automation.engine import PROJECT_DIR
from tests.engine.conftest import ROOMY_GATES, Project, resource

pytestmark = pytest.mark.engine
STACK = "staging"


@pytest.fixture(scope="module")
def release(project: Project) -> Iterator[auto.Stack]:
    """The stack after v1's first release and v2's promotion (asserted in the first test)."""
    stack = project.stack(STACK)
    project.configure(stack, project.config("incumbent"))
    stack.up()
    project.configure(stack, project.config("good"))
    yield stack


@pytest.fixture
def live_v2(project: Project, release: auto.Stack) -> Iterator[auto.Stack]:
    yield release
    project.configure(release, project.config("good"))


def _verified(stack: auto.Stack) -> dict:
    return stack.outputs()["verified"].value


def test_good_candidate_is_promoted_through_every_step(project: Project, release: auto.Stack) -> None:
    preview = release.preview()
    assert preview.change_summary.get("update", 0) >= 4  # gates, versions, every canary step, checkpoint

    result = release.up()
    assert result.summary.result == "succeeded"
    verified = _verified(release)
    assert verified["live"]["version"] == "v2" and verified["previous"]["version"] == "v1"
    assert project.target(STACK).routes().model_dump() == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}

    gates = resource(release, "release-gates")["outputs"]["evidence"]
    assert gates["passed"] and set(gates["gates"]) == {"evaluation", "latency", "memory", "drift"}
    assert gates["incumbent"]["version"] == "v1"
    verdicts = resource(release, "release-checkpoint")["outputs"]["verdicts"]
    assert [v["weight"] for v in verdicts] == [5, 50, 100]
    assert all(v["passed"] and v["pairs"] >= 120 for v in verdicts)
    assert [h.result for h in release.history()] == ["succeeded", "succeeded"]

    again = release.up()  # nothing changed: nothing changes (the stack re-reads its own outputs, a "read")
    assert set(again.summary.resource_changes) - {"read"} == {"same"}


@pytest.mark.parametrize(
    ("variant", "drift", "gates", "expected"),
    [
        ("worse", "current", ROOMY_GATES, "gate evaluation failed: roc_auc candidate - incumbent lower bound"),
        ("good", "shifted", ROOMY_GATES, "gate drift failed"),
        ("memory_hungry", "current", {**ROOMY_GATES, "memory": {"max_mb": 512}}, "gate memory failed: peak RSS"),
        ("slow", "current", {**ROOMY_GATES, "latency": {"p50_ms": 14, "p99_ms": 250}}, "gate latency failed"),
    ],
)
def test_failing_gate_blocks_the_preview_and_changes_nothing(
    project: Project, live_v2: auto.Stack, unchanged, variant: str, drift: str, gates: dict, expected: str
) -> None:
    assert_unchanged = unchanged(live_v2, project.target(STACK))
    project.configure(live_v2, project.config(variant, drift=drift, gates=gates))
    with pytest.raises(auto.CommandError) as excinfo:
        live_v2.preview()
    assert expected in str(excinfo.value)
    with pytest.raises(auto.CommandError):
        live_v2.up()
    assert_unchanged()
    assert _verified(live_v2)["live"]["version"] == "v2"


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("divergent", "failed on disagreement"),
        ("erroring", "failed on error_rate"),
    ],
)
def test_failing_canary_step_returns_traffic_to_the_incumbent(
    project: Project, live_v2: auto.Stack, variant: str, expected: str
) -> None:
    # Both pass the offline gates (asserted in the evidence below): the divergent model flips decisions only
    # near the threshold in some regions, the erroring one fails a share of live requests.
    project.configure(live_v2, project.config(variant))
    with pytest.raises(auto.CommandError) as excinfo:
        live_v2.up()
    message = str(excinfo.value)
    assert expected in message
    assert "pairs" in message and "all traffic is back on v2 (100%)" in message
    routes = project.target(STACK).routes()
    assert routes.primary == "v2" and routes.weights["v2"] == 100
    assert _verified(live_v2)["live"]["version"] == "v2"
    assert "gate " not in message  # it got past every gate: the canary caught it


def test_prod_threshold_looser_than_policy_is_blocked_with_and_without_the_pack(project: Project) -> None:
    stack = project.stack("prod")
    config = project.config("incumbent", environment="prod")
    config["gates"] = {**ROOMY_GATES, "evaluation": {"tolerance": 0.05}}
    project.configure(stack, config)
    breach = "mlrelease:gates.evaluation.tolerance = 0.05 is looser than prod policy (<= 0.01) by 0.04"

    with pytest.raises(auto.CommandError) as excinfo:  # without the pack: the gates provider's check
        stack.preview()
    assert f"prod policy: {breach}" in str(excinfo.value)

    with pytest.raises(auto.CommandError) as excinfo:  # with the mandatory pack
        stack.preview(policy_packs=[str(PROJECT_DIR / "policy")])
    assert "[mandatory]  prod-thresholds-within-policy" in str(excinfo.value)
    assert breach in str(excinfo.value)
    assert not project.target("prod").run_dir.exists()
