"""Router benchmark: added latency vs direct MLServer, capacity, and how fast a weight switch takes effect.

    .venv/bin/python bench/bench_router.py [--rate 300] [--phase-requests 600] [--rounds 9]

Starts two real MLServer versions (sample incumbent v1 and good candidate v2) and a router in front,
all supervised on loopback, then measures in one run:

- latency: open-loop constant-rate phases alternating direct-to-MLServer and through-the-router at the
  same rate (ABAB..., after a warm-up of each), p50/p99 per phase; reported as the median over rounds of
  each, and the router-added p50/p99 as the median over rounds of (router - direct). Short adjacent
  phases keep both sides under the same background load;
- capacity: closed loop with `--concurrency` requests in flight for `--capacity-requests`, through the
  router and directly (req/s), plus the router's own CPU time per request (psutil), whose inverse is the
  most one event-loop core can route;
- weight switch: time from sending PUT /admin/weights to the first request that is answered by the new
  version, probing with back-to-back requests; median and max over `--switches` switches.

Prints one line per measurement and a JSON summary at the end. Machine load matters: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import pandas as pd
import psutil

from serving import loadgen, supervisor
from serving.client import v2_request
from serving.modelserver import ModelServerHandle, start_model_server
from serving.router_process import RouterHandle, start_router, stop_router
from serving.routing import RouterConfig, UpstreamSpec
from serving.sample_models import FEATURES, MODEL_NAME, build_sample_models

TOKEN = "bench-admin-token-0123456789"


async def latency_rounds(
    direct: str, routed: str, bodies: list[bytes], rate: float, n: int, rounds: int
) -> dict[str, float]:
    async with loadgen.session() as s:
        for url in (direct, routed):  # warm-up: connections, caches, the allocator
            await loadgen.constant_rate(s, url, bodies, rate, min(n, 600))
        per_round = []
        for i in range(rounds):
            row = {}
            for label, url in (("direct", direct), ("router", routed)):
                results = await loadgen.constant_rate(s, url, bodies, rate, n)
                bad = [r for r in results if r.status != 200]
                if bad:
                    raise RuntimeError(f"{label}: {len(bad)} failed requests, first {bad[0]}")
                row[f"{label}_p50"] = loadgen.quantile_ms(results, 0.50)
                row[f"{label}_p99"] = loadgen.quantile_ms(results, 0.99)
            per_round.append(row)
            print(
                f"round {i + 1}: direct p50 {row['direct_p50']:.2f} p99 {row['direct_p99']:.2f} ms | "
                f"router p50 {row['router_p50']:.2f} p99 {row['router_p99']:.2f} ms",
                flush=True,
            )
    summary = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    summary["added_p50"] = statistics.median(r["router_p50"] - r["direct_p50"] for r in per_round)
    summary["added_p99"] = statistics.median(r["router_p99"] - r["direct_p99"] for r in per_round)
    return summary


async def capacity(url: str, body: bytes, concurrency: int, count: int) -> float:
    """Requests per second with `concurrency` requests always in flight."""
    async with loadgen.session() as s:
        start = time.perf_counter()
        results = await loadgen.closed_loop(s, url, [body], count, concurrency)
        elapsed = time.perf_counter() - start
    bad = [r for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} failed requests to {url}, first {bad[0]}")
    return len(results) / elapsed


async def switch_times(router: RouterHandle, body: bytes, switches: int) -> list[float]:
    """Milliseconds from sending a weight PUT to the first probe answered by the new version."""
    url = f"{router.url}/v2/models/{MODEL_NAME}/infer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    times = []
    async with loadgen.session() as s:
        for i in range(switches):
            target = "v2" if i % 2 == 0 else "v1"
            t0 = time.perf_counter()
            put = asyncio.create_task(
                s.put(f"{router.url}/admin/weights", json={"weights": {target: 100}}, headers=auth)
            )
            while True:
                async with s.post(url, data=body, headers=loadgen.JSON_HEADERS) as r:
                    await r.read()
                    if r.headers.get("x-model-version") == target:
                        times.append((time.perf_counter() - t0) * 1000)
                        break
            (await put).release()
    return times


def router_cpu_per_request(router: RouterHandle, routed: str, body: bytes, n: int) -> float:
    """Router CPU microseconds per request, over `n` requests at a moderate constant rate."""
    proc = psutil.Process(int(router.pid_path.read_text()))
    before = proc.cpu_times()
    results = loadgen.run(_constant(routed, [body], 300, n))
    after = proc.cpu_times()
    ok = sum(r.status == 200 for r in results)
    return ((after.user + after.system) - (before.user + before.system)) / ok * 1e6


async def _constant(url: str, bodies: list[bytes], rate: float, n: int) -> list[loadgen.Result]:
    async with loadgen.session() as s:
        return await loadgen.constant_rate(s, url, bodies, rate, n)


def start(work: Path, **overrides: object) -> tuple[dict[str, ModelServerHandle], RouterHandle, list[bytes]]:
    """v1 and v2 MLServers and a router in front (``overrides``: more RouterConfig fields)."""
    models = build_sample_models(work / "models")
    run_dir = work / "run"
    servers = {}
    for variant in ("incumbent", "good"):
        model = models.models[variant]
        servers[model.version] = start_model_server(model.model_dir, model.sha256, run_dir)
    config = RouterConfig(
        port=supervisor.free_port(),
        admin_token=TOKEN,
        model_name=MODEL_NAME,
        upstreams=[
            UpstreamSpec(version=h.version, url=h.url, model_name=h.model_name, pid_file=h.pid_path)
            for h in servers.values()
        ],
        weights={"v1": 100},
        incumbent="v1",
        feature_names=FEATURES,
        log_dir=work / "log",
        pairs_dir=work / "pairs",
        **overrides,
    )
    router = start_router(config, run_dir)
    rows = pd.read_parquet(models.holdout)[FEATURES].head(500)
    bodies = [orjson.dumps(v2_request(rows.iloc[i : i + 1])) for i in range(len(rows))]
    return servers, router, bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--phase-requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--capacity-requests", type=int, default=5000)
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        load_before = os.getloadavg()[0]
        servers, router, bodies = start(Path(tmp))
        try:
            direct = servers["v1"].infer_url
            routed = f"{router.url}/v2/models/{MODEL_NAME}/infer"
            latency = loadgen.run(latency_rounds(direct, routed, bodies, args.rate, args.phase_requests, args.rounds))
            print(
                f"latency @ {args.rate:g} req/s (median of {args.rounds}): direct p50 "
                f"{latency['direct_p50']:.2f} p99 {latency['direct_p99']:.2f} ms; router p50 "
                f"{latency['router_p50']:.2f} p99 {latency['router_p99']:.2f} ms; added p50 "
                f"{latency['added_p50']:.2f} p99 {latency['added_p99']:.2f} ms",
                flush=True,
            )
            cap_direct = loadgen.run(capacity(direct, bodies[0], args.concurrency, args.capacity_requests))
            cap_router = loadgen.run(capacity(routed, bodies[0], args.concurrency, args.capacity_requests))
            cpu_us = router_cpu_per_request(router, routed, bodies[0], 3000)
            print(
                f"capacity (closed loop, {args.concurrency} in flight): direct {cap_direct:.0f} req/s, "
                f"through router {cap_router:.0f} req/s (ratio {cap_router / cap_direct:.2f}); router CPU "
                f"{cpu_us:.0f} us/request -> one-core routing ceiling {1e6 / cpu_us:.0f} req/s",
                flush=True,
            )
            switches = loadgen.run(switch_times(router, bodies[0], args.switches))
            print(
                f"weight switch effective: median {statistics.median(switches):.2f} ms, max "
                f"{max(switches):.2f} ms over {len(switches)} switches",
                flush=True,
            )
            print(f"load average after: {os.getloadavg()[0]:.2f} (before: {load_before:.2f})")
            print(
                json.dumps(
                    {
                        "rate": args.rate,
                        "latency_ms": latency,
                        "capacity_rps": {"direct": cap_direct, "router": cap_router},
                        "router_cpu_us_per_request": cpu_us,
                        "switch_ms": {"median": statistics.median(switches), "max": max(switches)},
                        "cores": psutil.cpu_count(),
                        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    },
                    indent=2,
                )
            )
        finally:
            stop_router(router)
            for handle in servers.values():
                supervisor.stop(handle.state_path)


if __name__ == "__main__":
    main()
