"""Reliability benchmark: nothing lost under load while the split moves, and what switches cost in latency.

    .venv/bin/python bench/bench_reliability.py [--rate 200] [--seconds 20] [--rounds 3] [--concurrency 8]

Starts two real MLServer versions (sample v1 and v2) and a router in front with every request shadowed
(``shadow_fraction`` 1), all supervised on loopback. Each round runs, at the same open-loop rate:

- steady: the split fixed at 90/10 (the baseline);
- moving: the same load while the admin API makes 100 weight changes and 20 full switches to v1, spread over
  the phase;
- closed: ``--concurrency`` clients in flight, as fast as answers come, during another 100 + 20 changes.

After each moving phase it flushes the router and counts, by request id, the inference-log rows and the shadow
pairs against the answered requests: lost (answered, not logged), duplicated (logged twice), and pairs plus
counted dropped shadow copies against the answered requests. Prints a line per phase and a JSON summary with
medians over rounds. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_router import TOKEN, start
from serving import loadgen, supervisor
from serving.client import RouterAdmin
from serving.inference_log import read_window
from serving.router_process import stop_router
from serving.routing import RouterConfig
from serving.sample_models import FEATURES, MODEL_NAME

UNPAIRED = ("mlrelease_shadow_dropped_total", "mlrelease_shadow_skipped_total")  # counted, not lost


def _weights(i: int) -> dict[str, int]:
    """Change i of 120: every sixth a full switch to v1 (20 in all), the others moving weights (100)."""
    return {"v1": 100} if i % 6 == 5 else {"v1": 100 - (i * 7) % 101, "v2": (i * 7) % 101}


async def _changes(url: str, seconds: float) -> int:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers=auth) as client:
        for i in range(120):
            await asyncio.sleep(max(0.0, start + seconds * (i + 1) / 121 - time.perf_counter()))
            response = await client.put("/admin/weights", json={"weights": _weights(i)})
            response.raise_for_status()
    return 120


async def _phase(
    url: str, infer: str, bodies: list[bytes], rate: float, seconds: float, move: bool, concurrency: int = 0
) -> list[loadgen.Result]:
    async with loadgen.session() as session:
        changer = asyncio.create_task(_changes(url, seconds)) if move else None
        if concurrency:
            results = await loadgen.closed_loop(session, infer, bodies, int(rate * seconds), concurrency)
        else:
            results = await loadgen.constant_rate(session, infer, bodies, rate, int(rate * seconds))
        if changer is not None:
            await changer
        return results


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Ledger:
    """Counts of one router across phases, so each phase's accounting takes only its own requests."""

    def __init__(self, router_url: str, config: RouterConfig) -> None:
        self.url, self.config = router_url, config
        self.shadowed = 0.0  # pairs + dropped shadow copies accounted for so far
        self.dropped = 0.0

    def _shadowed(self) -> float:
        return sum(_metric(self.url, name) for name in (*UNPAIRED, "mlrelease_shadow_pairs_total"))

    def _unpaired(self) -> float:
        return sum(_metric(self.url, name) for name in UNPAIRED)

    def phase(self, since: datetime, answered: int) -> dict[str, int]:
        """Log rows and pairs of the requests answered since ``since``, by request id (one-row requests)."""
        deadline = time.monotonic() + 60
        while self._shadowed() < self.shadowed + answered and time.monotonic() < deadline:
            time.sleep(0.2)  # every shadow copy paired or counted as dropped (bounded: a loss shows as lost)
        RouterAdmin(self.url, TOKEN).flush()
        logged = read_window(self.config.log_dir, since, datetime.now(UTC) + timedelta(minutes=1), FEATURES)
        ids = logged["_request_id"]
        records = (
            orjson.loads(line)
            for path in self.config.pairs_dir.glob("*.jsonl")
            for line in path.read_bytes().splitlines()
        )
        pair_ids = [p["request_id"] for p in records if p["ts"] >= since.timestamp()]
        dropped = self._unpaired() - self.dropped
        self.shadowed += answered
        self.dropped += dropped
        return {
            "answered": answered,
            "log_rows": len(ids),
            "log_lost": answered - ids.nunique(),
            "log_duplicated": len(ids) - ids.nunique(),
            "pairs": len(pair_ids),
            "pairs_duplicated": len(pair_ids) - len(set(pair_ids)),
            "shadow_dropped_or_skipped": int(dropped),
            "pairs_lost": answered - len(set(pair_ids)) - int(dropped),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        servers, router, bodies = start(Path(tmp), shadow_fraction=1.0, shadow_queue_size=5000)
        config = RouterConfig.model_validate_json(router.config_path.read_bytes())
        infer = f"{router.url}/v2/models/{MODEL_NAME}/infer"
        admin, ledger = RouterAdmin(router.url, TOKEN), Ledger(router.url, config)
        rounds = []
        try:
            since = datetime.now(UTC)
            warm = loadgen.run(_phase(router.url, infer, bodies, args.rate, 3, move=False))
            ledger.phase(since, sum(r.status == 200 for r in warm))
            for n in range(args.rounds):
                row: dict[str, float] = {}
                for phase, move, concurrency in (("steady", False, 0), ("moving", True, 0), ("closed", True, 8)):
                    admin.set_weights({"v1": 90, "v2": 10})
                    since = datetime.now(UTC)
                    results = loadgen.run(
                        _phase(
                            router.url, infer, bodies, args.rate, args.seconds, move, concurrency and args.concurrency
                        )
                    )
                    failed = [r for r in results if r.status != 200]
                    ok = [r for r in results if r.status == 200]
                    counts = ledger.phase(since, len(ok))
                    row |= {
                        f"{phase}_requests": len(results),
                        f"{phase}_failed": len(failed),
                        f"{phase}_p50_ms": loadgen.quantile_ms(ok, 0.50),
                        f"{phase}_p99_ms": loadgen.quantile_ms(ok, 0.99),
                        **{f"{phase}_{k}": v for k, v in counts.items()},
                    }
                    print(
                        f"round {n + 1} {phase}: {len(results)} requests, {len(failed)} failed, p50"
                        f" {row[f'{phase}_p50_ms']:.2f} p99 {row[f'{phase}_p99_ms']:.2f} ms; {counts}",
                        flush=True,
                    )
                rounds.append(row)
        finally:
            stop_router(router)
            for handle in servers.values():
                supervisor.stop(handle.state_path)
        summary = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        summary["p99_ratio_moving_vs_steady"] = summary["moving_p99_ms"] / summary["steady_p99_ms"]
        totals = {k: sum(r[k] for r in rounds) for k in rounds[0] if k.endswith(("lost", "duplicated", "failed"))}
        print(json.dumps({"rate": args.rate, "median": summary, "totals": totals, "cores": psutil.cpu_count()}))


if __name__ == "__main__":
    main()
