"""A cluster router replica applies the split object whole and reports which version of it is live.

``Router.apply_split`` is what ``serving.split_follower`` calls for every change it reads from the ConfigMap; the
Kubernetes target confirms a canary step by the ``split_version`` each replica reports. Run in-process with the
router's real aiohttp app on 127.0.0.1 (the follower's watch itself runs against a real API server in
tests/kubernetes).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from serving import loadgen
from serving.client import v2_request
from serving.router import Router
from serving.routing import RouterConfig, Split, UpstreamSpec

TOKEN = "t" * 32


def _router(tmp_path: Path) -> Router:
    return Router(
        RouterConfig(
            port=1,
            admin_token=TOKEN,
            model_name="m",
            upstreams=[],
            weights={},
            incumbent="",
            log_dir=tmp_path / "log",
            pairs_dir=tmp_path / "pairs",
        )
    )


def test_a_router_without_versions_answers_503_then_applies_a_split_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        router = _router(tmp_path)
        async with TestClient(TestServer(router.app())) as client:
            empty = await client.post("/v2/models/m/infer", json=v2_request([[1.0, 2.0]]))
            assert empty.status == 503 and "no model version is routed yet" in (await empty.json())["error"]
            upstreams = [UpstreamSpec(version=v, url=f"http://m-{v}.ns.svc:8080", model_name="m") for v in ("v1", "v2")]
            split = Split(
                upstreams=upstreams, weights={"v1": 90, "v2": 10}, incumbent="v1", faults={"v2": {"error_rate": 1}}
            )
            await router.apply_split(split, "4711")
            weights = await client.get("/admin/weights", headers={"X-Mlrelease-Token": TOKEN})
            assert await weights.json() == {
                "weights": {"v1": 90, "v2": 10},
                "incumbent": "v1",
                "split_version": "4711",
                "lease_remaining_s": None,
            }
            assert (await client.get("/admin/faults", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
            assert router.faults["v2"].error_rate == 1
            # The next split drops v2 (and its fault and health) in the same swap.
            await router.apply_split(Split(upstreams=upstreams[:1], weights={"v1": 100}, incumbent="v1"), "4712")
            assert router.split_version == "4712" and set(router.health) == {"v1"} and not router.faults
            wrong = await client.get("/admin/weights", headers={"X-Mlrelease-Token": "wrong"})
            assert wrong.status == 401

    loadgen.run(scenario())


def test_the_split_document_round_trips_through_json() -> None:
    up = UpstreamSpec(version="v1", url="http://m-v1.ns.svc:8080", model_name="m")
    split = Split(upstreams=[up], weights={"v1": 100}, incumbent="v1")
    assert Split.model_validate_json(split.model_dump_json()) == split


def test_a_leased_split_reverts_at_its_lease_and_an_expired_one_is_applied_unsplit(tmp_path: Path) -> None:
    """What a replica does with a killed step's split: the step's lease runs out, the replica reverts by
    itself; a replica that starts (or re-reads) after that applies the stale split unsplit."""

    async def scenario() -> None:
        router = _router(tmp_path)
        async with TestClient(TestServer(router.app())) as client:
            upstreams = [UpstreamSpec(version=v, url=f"http://m-{v}.ns.svc:8080", model_name="m") for v in ("v1", "v2")]
            leased = Split(upstreams=upstreams, weights={"v1": 50, "v2": 50}, incumbent="v1")
            applied_at = time.time()
            await router.apply_split(leased.model_copy(update={"lease_until": applied_at + 1.0}), "10")
            view = await (await client.get("/admin/weights", headers={"X-Mlrelease-Token": TOKEN})).json()
            assert view["weights"] == {"v1": 50, "v2": 50} and 0 < view["lease_remaining_s"] <= 1.0
            deadline = time.monotonic() + 10
            while router.table.weights["v2"] and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # polling the router's own state, with a deadline
            assert router.table.weights == {"v1": 100, "v2": 0}, "the leased split was not reverted"
            assert time.time() - applied_at >= 1.0, "reverted before its lease ran out"
            expired = router.metrics.registry.get_sample_value("mlrelease_split_lease_expired_total")
            assert expired == 1

            await router.apply_split(leased.model_copy(update={"lease_until": time.time() - 5}), "11")
            assert router.table.weights == {"v1": 100, "v2": 0} and router.split_version == "11"
            assert router.lease_until is None
            await router.apply_split(leased, "12")  # an unleased split stays as written
            assert router.table.weights == {"v1": 50, "v2": 50} and router.lease_until is None

    loadgen.run(scenario())
