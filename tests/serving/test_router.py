"""The router against real MLServer processes on loopback: issue 4's "Done when" list for the router.

Two sample versions (incumbent v1, good candidate v2) are served by MLServer under the supervisor for the
whole module; each test starts its own supervised router in front of them. Load is open-loop at a fixed
rate and bounded in count; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import loadgen, supervisor
from serving.client import RouterAdmin, v2_request
from serving.inference_log import read_window
from serving.modelserver import ModelServerHandle, start_model_server
from serving.router_process import RouterHandle, start_router, stop_router
from serving.routing import RouterConfig, UpstreamSpec
from serving.sample_models import FEATURES, MODEL_NAME, SampleModels
from serving.v2 import BadRequest, parse_request
from serving.wait import wait_until
from tests.full_disk import full_tmpfs

TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def servers(
    sample_models: SampleModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ModelServerHandle]]:
    run_dir = tmp_path_factory.mktemp("model-servers")
    handles: dict[str, ModelServerHandle] = {}
    try:
        for variant in ("incumbent", "good"):
            model = sample_models.models[variant]
            handles[model.version] = start_model_server(model.model_dir, model.sha256, run_dir)
        yield handles
    finally:
        for handle in handles.values():
            supervisor.stop(handle.state_path)


@pytest.fixture(scope="module")
def bodies(sample_models: SampleModels) -> list[bytes]:
    """One-row V2 requests from the held-out set."""
    rows = pd.read_parquet(sample_models.holdout)[FEATURES].head(500)
    return [orjson.dumps(v2_request(rows.iloc[i : i + 1])) for i in range(len(rows))]


@pytest.fixture
def make_router(servers: dict[str, ModelServerHandle], tmp_path: Path) -> Iterator:
    started: list[RouterHandle] = []

    def make(weights: dict[str, int], **overrides: object) -> tuple[RouterHandle, RouterAdmin, RouterConfig]:
        config = RouterConfig(
            port=supervisor.free_port(),
            admin_token=TOKEN,
            model_name=MODEL_NAME,
            upstreams=[
                UpstreamSpec(version=h.version, url=h.url, model_name=h.model_name, pid_file=h.pid_path)
                for h in servers.values()
            ],
            weights=weights,
            incumbent="v1",
            feature_names=FEATURES,
            **{
                "log_dir": tmp_path / "log",
                "pairs_dir": tmp_path / "pairs",
                "upstream_timeout_s": 30.0,  # a busy 2-core machine can stall MLServer for seconds
                **overrides,
            },
        )
        handle = start_router(config, tmp_path / "run", name=f"router-{len(started)}")
        started.append(handle)
        admin = RouterAdmin(handle.url, TOKEN)
        wait_until(lambda: all(h["ready"] for h in admin.health().values()), 20, "router sees both ready")
        return handle, admin, config

    yield make
    for handle in started:
        stop_router(handle)


def _infer_url(router: RouterHandle) -> str:
    return f"{router.url}/v2/models/{MODEL_NAME}/infer"


def _metric(router: RouterHandle, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    text = httpx.get(f"{router.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_split_90_10_within_binomial_tolerance_and_sticky_keys_stay(make_router, bodies) -> None:
    router, admin, _ = make_router({"v1": 90, "v2": 10}, log_flush_rows=1000)  # flushes by size too
    n = 5000

    async def load() -> tuple[list[loadgen.Result], list[loadgen.Result]]:
        async with loadgen.session() as s:
            random = await loadgen.closed_loop(s, _infer_url(router), bodies, n, concurrency=16)
            keyed = await loadgen.closed_loop(
                s,
                _infer_url(router),
                bodies,
                1000,
                concurrency=16,
                headers=lambda i: {"x-entity-key": f"customer-{i % 250}"},
            )
            return random, keyed

    random, keyed = loadgen.run(load())
    assert [r for r in random + keyed if r.status != 200] == []
    on_candidate = sum(r.version == "v2" for r in random)
    tolerance = 4.5 * math.sqrt(n * 0.1 * 0.9)  # two-sided p ~ 7e-6
    assert abs(on_candidate - 0.1 * n) < tolerance, on_candidate
    assert {r.version for r in random} == {"v1", "v2"}

    by_key: dict[int, set[str | None]] = {}
    for r in keyed:
        by_key.setdefault(r.index % 250, set()).add(r.version)
    assert all(len(versions) == 1 for versions in by_key.values())
    assert 0 < sum(versions == {"v2"} for versions in by_key.values()) < 60  # ~25 of 250

    # every request is in the inference log with its features, version and score
    admin.flush()
    now = datetime.now(UTC)
    log_dir = RouterConfig.model_validate_json(router.config_path.read_bytes()).log_dir
    frame = read_window(log_dir, now - timedelta(minutes=5), now + timedelta(minutes=1), FEATURES)
    assert len(frame) == n + 1000
    assert set(frame["_version"]) == {"v1", "v2"}
    assert frame["_output"].between(0, 1).all() and frame[FEATURES].notna().all().all()


def test_weight_changes_and_full_switches_under_load_lose_no_request(make_router, bodies) -> None:
    """200 req/s for 20 s through 100 weight changes and 20 full switches, every request shadowed: every one
    answered 200, and the inference log and the pair log hold one row per answered request (or per counted
    dropped shadow copy), none lost and none twice."""
    router, admin, config = make_router({"v1": 90, "v2": 10}, shadow_fraction=1.0, shadow_queue_size=5000)
    rate, seconds = 200, 20
    changes: list[tuple[float, float, dict[str, int]]] = []  # (put sent, put answered, weights)

    async def change_weights() -> None:
        async with httpx.AsyncClient(base_url=router.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            for i in range(120):
                await _until(seconds * (i + 1) / 121)
                weights = {"v1": 100} if i % 6 == 5 else {"v1": 100 - (i * 7) % 101, "v2": (i * 7) % 101}
                sent = time.perf_counter()
                response = await c.put("/admin/weights", json={"weights": weights})
                assert response.status_code == 200, response.text
                changes.append((sent, time.perf_counter(), weights))

    async def _until(offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))

    async def load() -> list[loadgen.Result]:
        async with loadgen.session() as s:
            changer = asyncio.create_task(change_weights())
            results = await loadgen.constant_rate(s, _infer_url(router), bodies, rate, rate * seconds)
            await changer
            return results

    start = time.perf_counter()
    results = loadgen.run(load())
    assert len(changes) == 120 and sum(w == {"v1": 100} for _, _, w in changes) == 20
    assert [r for r in results if r.status != 200] == []
    # A full switch holds for every request sent after it was acknowledged and answered before the next
    # change was even sent (so it was routed while the switch was the live table).
    bounds = [*changes, (math.inf, math.inf, {})]
    inside = [
        r
        for (_, answered, weights), (next_sent, _, _) in itertools.pairwise(bounds)
        if weights == {"v1": 100}
        for r in results
        if answered < r.sent and r.done < next_sent
    ]
    # (On an overloaded machine no request may fit in a window; the subset check then holds vacuously.)
    assert {r.version for r in inside} <= {"v1"}

    answered = len(results)

    def shadowed() -> float:
        names = ("mlrelease_shadow_pairs_total", "mlrelease_shadow_dropped_total", "mlrelease_shadow_skipped_total")
        return sum(_metric(router, name) for name in names)

    wait_until(lambda: shadowed() >= answered, 180, "every shadow copy paired or counted as dropped or skipped")
    admin.flush()
    now = datetime.now(UTC)
    logged = read_window(config.log_dir, now - timedelta(minutes=5), now + timedelta(minutes=1), FEATURES)
    assert len(logged) == answered and logged["_request_id"].nunique() == answered
    assert (logged["_status"] == 200).all()
    pairs = [orjson.loads(line) for f in config.pairs_dir.glob("*.jsonl") for line in f.read_bytes().splitlines()]
    ids = [p["request_id"] for p in pairs]
    assert len(ids) == len(set(ids)) and set(ids) <= set(logged["_request_id"])
    unpaired = _metric(router, "mlrelease_shadow_dropped_total") + _metric(router, "mlrelease_shadow_skipped_total")
    print(f"{answered} answered, {len(pairs)} pairs, {unpaired:g} shadow copies dropped or skipped (counted)")
    assert len(pairs) + unpaired == answered


def test_killing_the_candidate_mid_load_is_invisible_to_clients(make_router, servers, bodies) -> None:
    router, admin, _ = make_router({"v1": 50, "v2": 50})
    candidate = servers["v2"]
    killed_pid = int(candidate.pid_path.read_text())
    rate = 100

    async def load() -> list[loadgen.Result]:
        async with loadgen.session() as s:
            before = asyncio.create_task(loadgen.constant_rate(s, _infer_url(router), bodies, rate, rate * 2))
            await asyncio.to_thread(
                wait_until, lambda: _metric(router, "mlrelease_requests_total") >= 80, 10, "load under way"
            )
            os.kill(killed_pid, signal.SIGKILL)
            first = await before
            await asyncio.to_thread(
                wait_until, lambda: admin.health()["v2"]["ready"], 60, "the candidate to be restarted"
            )
            after = await loadgen.constant_rate(s, _infer_url(router), bodies, rate, rate * 2)
            return first + after

    results = loadgen.run(load())
    assert [r for r in results if r.status != 200] == []
    assert _metric(router, "mlrelease_request_errors_total", version="v2", kind="connection") >= 1
    status = supervisor.status(candidate.state_path)
    assert status.alive and status.restarts >= 1 and status.pid != killed_pid
    assert {r.version for r in results[-rate:]} == {"v1", "v2"}  # the restarted candidate answers again


def test_shadow_pairs_follow_the_fraction_and_perturbation_shows_as_disagreement(make_router, bodies) -> None:
    router, admin, config = make_router({"v1": 100}, shadow_fraction=0.3)  # candidate dark at weight 0
    n = 1000

    def settled() -> object:
        page = admin.pairs(limit=10_000)
        return page if page.pending == 0 else None

    loadgen.run(_load(router, bodies, n))
    page = wait_until(settled, 30, "shadow copies to finish")
    tolerance = 4.5 * math.sqrt(n * 0.3 * 0.7)
    assert abs(len(page.pairs) - 0.3 * n) < tolerance, len(page.pairs)
    pair = page.pairs[0]
    assert (pair["incumbent"], pair["candidate"], pair["primary"]) == ("v1", "v2", "incumbent")
    assert pair["incumbent_status"] == pair["candidate_status"] == 200
    assert len(pair["incumbent_output"]) == len(pair["candidate_output"]) == 1
    assert set(pair["inputs"]) == set(FEATURES)
    baseline = _metric(router, "mlrelease_pair_disagreements_total")
    assert baseline / len(page.pairs) < 0.1  # the good candidate mostly agrees with the incumbent

    admin.set_fault("v2", perturbation=0.6)
    loadgen.run(_load(router, bodies, n))
    later = wait_until(
        lambda: (p := admin.pairs(since=page.next, limit=10_000)).pending == 0 and p,
        30,
        "perturbed shadow copies to finish",
    )
    disagreeing = sum(p["disagreeing_rows"] > 0 for p in later.pairs)
    assert disagreeing / len(later.pairs) > 0.5
    assert (
        _metric(router, "mlrelease_pair_disagreements_total", incumbent="v1", candidate="v2") - baseline == disagreeing
    )
    assert _metric(router, "mlrelease_shadow_pairs_total") == len(page.pairs) + len(later.pairs)

    admin.flush()
    lines = [
        orjson.loads(x) for f in sorted(config.pairs_dir.glob("pairs-*.jsonl")) for x in f.read_bytes().splitlines()
    ]
    assert [p["seq"] for p in lines] == [p["seq"] for p in page.pairs + later.pairs]


def test_a_full_shadow_queue_drops_copies_and_never_delays_clients(make_router, bodies) -> None:
    router, admin, _ = make_router({"v1": 100}, shadow_fraction=1.0, shadow_queue_size=2, shadow_workers=1)
    admin.set_fault("v2", latency_ms=3000)  # every shadow copy is slow; the queue fills at once
    results = loadgen.run(_load(router, bodies, 300, rate=100))
    assert [r for r in results if r.status != 200] == []
    # Had a client waited for a shadow copy (or a queue slot) it would have taken >= 3 s.
    assert max(r.latency_s for r in results) < 3.0
    assert _metric(router, "mlrelease_shadow_dropped_total") > 250


async def _load(router: RouterHandle, bodies: list[bytes], n: int, rate: float = 200) -> list[loadgen.Result]:
    async with loadgen.session() as s:
        return await loadgen.constant_rate(s, _infer_url(router), bodies, rate, n)


def test_admin_needs_the_token(make_router) -> None:
    router, admin, _ = make_router({"v1": 100})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (
            ("GET", "/admin/weights"),
            ("PUT", "/admin/weights"),
            ("GET", "/admin/pairs"),
            ("PUT", "/admin/faults/v2"),
            ("POST", "/admin/flush"),
        ):
            response = httpx.request(method, f"{router.url}{path}", headers=headers, json={})
            assert response.status_code == 401, (method, path, headers)
            assert "token" in response.json()["error"]
    assert admin.weights() == {"v1": 100, "v2": 0}


def test_admin_weights_are_validated_and_upstreams_managed(make_router, servers) -> None:
    router, admin, _ = make_router({"v1": 100})
    for bad in ({"v1": 60, "v2": 30}, {"v1": 50, "v9": 50}, {"v1": -10, "v2": 110}):
        with pytest.raises(Exception, match="HTTP 400"):
            admin.set_weights(bad)
    assert admin.weights() == {"v1": 100, "v2": 0}
    admin.remove_upstream("v2")
    assert list(admin.upstreams()) == ["v1"]
    v2 = servers["v2"]
    assert admin.add_upstream("v2", v2.url, v2.model_name, pid_file=str(v2.pid_path))["ready"]
    assert admin.set_weights({"v2": 100}) == {"v1": 0, "v2": 100}
    with pytest.raises(Exception, match="HTTP 409"):
        admin.remove_upstream("v2")
    admin.set_incumbent("v2")
    assert admin.incumbent() == "v2"
    assert admin.set_weights({"v1": 100}, incumbent="v1") == {"v1": 100, "v2": 0}  # rollback in one step
    assert admin.incumbent() == "v1"
    with pytest.raises(Exception, match="HTTP 400"):
        admin.set_weights({"v1": 100}, incumbent="v9")
    assert admin.incumbent() == "v1"
    assert _metric(router, "mlrelease_traffic_weight", version="v1") == 100
    assert _metric(router, "mlrelease_process_resident_bytes", version="v1") > 50e6


def test_bad_input_is_a_counted_4xx_never_a_crash(make_router) -> None:
    router, admin, _ = make_router({"v1": 100})
    good_row = [[0.0] * len(FEATURES)]
    cases = [
        (f"/v2/models/{MODEL_NAME}/infer", b"{not json"),
        (f"/v2/models/{MODEL_NAME}/infer", b'{"inputs": "nope"}'),
        (f"/v2/models/{MODEL_NAME}/infer", orjson.dumps(v2_request([[0.0] * 3]))),
        (
            f"/v2/models/{MODEL_NAME}/infer",
            orjson.dumps({"inputs": [{"name": "input-0", "shape": [2, 9], "datatype": "FP64", "data": good_row}]}),
        ),
        (
            f"/v2/models/{MODEL_NAME}/infer",
            orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 9], "datatype": "FP64", "data": [["x"] * 9]}]}),
        ),
        ("/v2/models/no-such-model/infer", orjson.dumps(v2_request(good_row))),
    ]
    for path, body in cases:
        response = httpx.post(f"{router.url}{path}", content=body)
        assert 400 <= response.status_code < 500, (path, body, response.text)
        assert response.json()["error"]
    assert _metric(router, "mlrelease_request_errors_total", version="none", kind="bad_request") == len(cases)
    ok = httpx.post(_infer_url(router), json=v2_request(good_row))
    assert ok.status_code == 200 and ok.headers["x-model-version"] == "v1" and ok.headers["x-request-id"]
    assert admin.health()["v1"]["ready"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
_TENSOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input-0", "", "x" * 300]) | st.text(max_size=10),
        "shape": st.lists(st.integers(-3, 2**40), max_size=4) | _JSON,
        "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "nope"]) | _JSON,
        "data": st.lists(st.lists(st.floats() | st.text(max_size=3), max_size=12), max_size=3) | _JSON,
    }
)


def _dumps(value: object) -> bytes:
    """Python's encoder: integers past 64 bits and NaN/Infinity (not JSON) go out as a client might send them."""
    return json.dumps(value).encode()


_BODIES = st.one_of(
    st.binary(max_size=200),  # bad UTF-8 and not JSON at all
    _JSON.map(_dumps),
    st.fixed_dictionaries({"inputs": st.lists(_TENSOR, max_size=3) | _JSON}).map(_dumps),
    st.integers(1100, 5000).map(lambda depth: b"[" * depth + b"]" * depth),  # deeper than any parser allows
)


def test_fuzzed_v2_payloads_get_a_4xx_and_the_router_stays_up(make_router) -> None:
    """Wrong shapes, types, deep JSON, bad UTF-8 and oversized bodies: every one a 4xx, never a 5xx or a crash."""
    router, admin, _ = make_router({"v1": 100})
    url, valid = _infer_url(router), orjson.dumps(v2_request([[0.0] * len(FEATURES)]))
    answers: list[int] = []
    with httpx.Client(timeout=30.0) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=_BODIES)
        def fuzz(body: bytes) -> None:
            try:  # the rare generated body that is a valid request may be answered
                parse_request(body, FEATURES)
                allowed = {200}
            except BadRequest:
                allowed = set()
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            answers.append(response.status_code)
            assert response.status_code in allowed or 400 <= response.status_code < 500, (
                body[:200],
                response.status_code,
                response.text[:200],
            )

        fuzz()
        huge = client.post(url, content=b" " * (65 * 1024 * 1024), headers={"Content-Type": "application/json"})
        assert huge.status_code == 413, huge.status_code
        assert client.post(url, content=valid).status_code == 200
    assert len(answers) >= 200 and admin.health()["v1"]["ready"]


def test_a_leased_split_nobody_renews_goes_back_to_the_incumbent(make_router) -> None:
    router, admin, _ = make_router({"v1": 100})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for bad in (0, -1, 4000, "5", True):
        refused = httpx.put(
            f"{router.url}/admin/weights", json={"weights": {"v1": 50, "v2": 50}, "lease_s": bad}, headers=auth
        )
        assert refused.status_code == 400 and "lease_s" in refused.json()["error"], bad
    assert admin.weights() == {"v1": 100, "v2": 0}
    set_at = time.monotonic()
    admin.set_weights({"v1": 50, "v2": 50}, lease_s=1.0)
    wait_until(lambda: admin.weights() == {"v1": 100, "v2": 0}, 10, "the unrenewed split to revert")
    assert time.monotonic() - set_at >= 1.0
    assert admin.incumbent() == "v1" and _metric(router, "mlrelease_split_lease_expired_total") == 1
    admin.set_weights({"v1": 50, "v2": 50}, lease_s=600)
    admin.set_weights({"v1": 70, "v2": 30})  # set again without a lease: it holds, nothing pending
    view = httpx.get(f"{router.url}/admin/weights", headers=auth).json()
    assert view["weights"] == {"v1": 70, "v2": 30} and view["lease_remaining_s"] is None


def test_injected_errors_reach_clients_and_are_counted(make_router) -> None:
    router, admin, _ = make_router({"v1": 100})
    admin.set_fault("v1", error_rate=1.0)
    response = httpx.post(_infer_url(router), json=v2_request([[0.0] * len(FEATURES)]))
    assert response.status_code == 500 and "injected" in response.json()["error"]
    assert response.headers["x-model-version"] == "v1"
    assert _metric(router, "mlrelease_request_errors_total", version="v1", kind="injected") == 1
    admin.clear_fault("v1")
    assert admin.faults() == {}
    assert httpx.post(_infer_url(router), json=v2_request([[0.0] * len(FEATURES)])).status_code == 200


def test_stopping_the_router_flushes_its_inference_log(make_router, bodies) -> None:
    router, _, config = make_router({"v1": 100}, log_flush_rows=100_000, flush_seconds=3600)
    results = loadgen.run(_load(router, bodies, 50, rate=100))
    assert [r.status for r in results] == [200] * 50
    stop_router(router)
    now = datetime.now(UTC)
    assert len(read_window(config.log_dir, now - timedelta(minutes=5), now, FEATURES)) == 50


def test_a_full_log_disk_drops_counted_rows_and_the_router_keeps_serving(make_router, bodies, tmp_path) -> None:
    with full_tmpfs(tmp_path / "full") as full:
        router, admin, _ = make_router(
            {"v1": 100}, log_dir=full / "log", pairs_dir=full / "pairs", shadow_fraction=1.0, log_flush_rows=50
        )
        with httpx.Client(timeout=30.0) as client:
            answers = [client.post(_infer_url(router), content=body).status_code for body in bodies[:300]]
        assert answers == [200] * 300
        wait_until(lambda: _metric(router, "mlrelease_shadow_pairs_total") >= 300, 60, "every request paired")
        admin.flush()
        assert _metric(router, "mlrelease_log_dropped_rows_total", log="inference") == 300
        assert _metric(router, "mlrelease_log_dropped_rows_total", log="pairs") == 300
        assert len(admin.pairs(limit=1000).pairs) == 300  # the canary still reads them from memory
        assert not list((full / "log").rglob("*.parquet")) and not list((full / "log").rglob(".*.tmp"))
        assert client_ok(router, bodies[0]) and admin.health()["v1"]["ready"]


def client_ok(router: RouterHandle, body: bytes) -> bool:
    return httpx.post(_infer_url(router), content=body).status_code == 200
