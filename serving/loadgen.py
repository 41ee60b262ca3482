"""Open-loop, constant-rate V2 load: what tests, benchmarks and the latency gate drive servers with.

Open loop means request i is sent at `start + i / rate` whether or not earlier ones have answered, so a
slow server shows up as latency (as real clients would see it) instead of silently lowering the rate
(coordinated omission). Bounded in count; every result records when it was sent, how long it took, its
status and the `x-model-version` that answered.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import uvloop

JSON_HEADERS = {"Content-Type": "application/json"}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Result:
    """One request: `sent` and `done` are time.perf_counter() values."""

    index: int
    sent: float
    done: float
    status: int
    version: str | None
    error: str | None

    @property
    def latency_s(self) -> float:
        return self.done - self.sent


async def constant_rate(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    rate: float,
    count: int,
    *,
    headers: Callable[[int], dict[str, str]] | None = None,
) -> list[Result]:
    """Send `count` POSTs to `url` at `rate` per second (bodies cycled); return results in send order.

    Transport failures are results with status 0 and the error text, never exceptions.
    """
    results: list[Result | None] = [None] * count

    async def one(i: int) -> None:
        results[i] = await _send(session, url, bodies[i % len(bodies)], i, headers)

    start = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return [r for r in results if r is not None]


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    count: int,
    concurrency: int,
    *,
    headers: Callable[[int], dict[str, str]] | None = None,
) -> list[Result]:
    """Send `count` POSTs with `concurrency` always in flight (as fast as the server allows), in index order.

    For when the number of requests matters and the rate does not (routing statistics, capacity): the
    load adapts to the server, so a busy machine slows it down instead of timing requests out.
    """
    results: list[Result | None] = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i, next_index = next_index, next_index + 1
            results[i] = await _send(session, url, bodies[i % len(bodies)], i, headers)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, i: int, headers: Callable[[int], dict[str, str]] | None
) -> Result:
    extra = headers(i) if headers is not None else {}
    sent = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={**JSON_HEADERS, **extra}) as r:
            await r.read()
            return Result(i, sent, time.perf_counter(), r.status, r.headers.get("x-model-version"), None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(i, sent, time.perf_counter(), 0, None, f"{type(exc).__name__}: {exc}")


def session(
    timeout: float = 30.0, *, headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A pooled client session without a connection cap (open-loop load needs concurrent requests).

    ``headers`` and ``ssl_context`` are for a router reached through a proxy that authenticates (the Kubernetes
    API server's service proxy: its bearer token and CA).
    """
    connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context if ssl_context is not None else True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh uvloop event loop (from synchronous tests and scripts)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def quantile_ms(results: Sequence[Result], q: float) -> float:
    """The q-quantile of latency in milliseconds (nearest rank)."""
    latencies = sorted(r.latency_s for r in results)
    if not latencies:
        return float("nan")
    rank = min(len(latencies) - 1, max(0, round(q * len(latencies)) - 1))
    return latencies[rank] * 1000
