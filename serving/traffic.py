"""Synthetic traffic: held-out rows replayed through the router at a constant rate, with entity keys.

A local ``pulumi up`` has no real clients, and a canary step cannot pass without traffic (missing
telemetry never counts as healthy). The local target runs this as a supervised process,
``python -m serving.traffic --url ROUTER --model NAME --rows HOLDOUT.parquet|csv --rps R``, for as long as a
release bakes. Each row is one single-row V2 request keyed ``row-<index>``, so sticky routing keeps an
entity on one version as the weights move. Open loop (request i is due at ``start + i / rps``), with a cap
on requests in flight so a stalled router is not buried in new connections; skipped and failed requests
are counted and printed to the process log every ``--report-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from serving import loadgen
from serving.client import v2_request
from serving.tables import read_table


def request_bodies(rows_path: Path, features: list[str] | None, label: str) -> list[bytes]:
    """One V2 body per row of ``rows_path`` (feature columns in order), keyed by row index."""
    frame = read_table(rows_path)
    columns = features or [c for c in frame.columns if c != label]
    values = frame[columns].to_numpy(dtype=float)
    return [orjson.dumps(v2_request([row.tolist()], entity_key=f"row-{i}")) for i, row in enumerate(values)]


async def replay(
    url: str,
    bodies: list[bytes],
    rps: float,
    max_in_flight: int,
    report_seconds: float,
    stop: asyncio.Event,
    *,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Counter:
    """Send bodies (cycled) to ``url`` at ``rps`` until ``stop`` is set; returns counts by outcome."""
    counts: Counter = Counter()
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(http: aiohttp.ClientSession, body: bytes) -> None:
        nonlocal in_flight
        try:
            async with http.post(url, data=body, headers=loadgen.JSON_HEADERS) as resp:
                await resp.read()
                counts[str(resp.status)] += 1
        except (aiohttp.ClientError, TimeoutError):
            counts["transport_error"] += 1
        finally:
            in_flight -= 1

    loop = asyncio.get_running_loop()
    async with loadgen.session(timeout=10.0, headers=headers, ssl_context=ssl_context) as http:
        start = last_report = loop.time()
        i = 0
        while not stop.is_set():
            delay = start + i / rps - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            if in_flight >= max_in_flight:
                counts["skipped"] += 1
            else:
                in_flight += 1
                task = asyncio.create_task(one(http, bodies[i % len(bodies)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
            if loop.time() - last_report >= report_seconds:
                last_report = loop.time()
                print(f"{time.strftime('%H:%M:%S')} sent {i}: {dict(counts)}", flush=True)
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="router base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", required=True, help="model name clients call")
    parser.add_argument("--rows", type=Path, required=True, help="parquet or csv with the feature columns")
    parser.add_argument("--features", help="comma-separated feature columns (default: all but --label)")
    parser.add_argument("--label", default="default", help="column left out when --features is not given")
    parser.add_argument("--rps", type=float, required=True)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--report-seconds", type=float, default=10.0)
    parser.add_argument("--token-file", type=Path, help="bearer token of a proxy in front of the router")
    parser.add_argument("--ca-file", type=Path, help="CA of an https proxy in front of the router")
    args = parser.parse_args(argv)
    if args.rps <= 0:
        parser.error("--rps must be positive")
    features = args.features.split(",") if args.features else None
    bodies = request_bodies(args.rows, features, args.label)
    url = f"{args.url.rstrip('/')}/v2/models/{args.model}/infer"

    async def run() -> Counter:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        headers = {"Authorization": f"Bearer {args.token_file.read_text().strip()}"} if args.token_file else None
        context = ssl.create_default_context(cafile=str(args.ca_file)) if args.ca_file else None
        return await replay(
            url, bodies, args.rps, args.max_in_flight, args.report_seconds, stop, headers=headers, ssl_context=context
        )

    counts = loadgen.run(run())
    print(f"{time.strftime('%H:%M:%S')} stopped: {dict(counts)}", flush=True)


if __name__ == "__main__":
    main()
