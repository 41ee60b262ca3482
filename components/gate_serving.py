"""Temporary model servers for the gates, and the measurements taken through them.

The gates must see the model exactly as it will be served: the same MLServer runtime, the same V2
encoding, the same process. So each gate run starts real servers on 127.0.0.1 (allocated ports, a run
directory of its own so nothing is shared with live servers), scores the held-out rows through V2, drives
a constant-rate load against the candidate (interleaved with the same load against the incumbent, when
there is one) while sampling the candidate's process tree's resident memory, and stops
every server it started, whatever happens (the caller runs inside a Pulumi ``check``: nothing may be left
running).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pandas as pd
import psutil

from components.gate_inputs import GateInputError, ModelRef
from serving import http, loadgen, supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError
from serving.client import v2_request
from serving.modelserver import ModelServerError, ModelServerHandle, start_model_server
from serving.v2 import OutputMismatch, OutputSpec, read_scores

SCORE_BATCH_ROWS = 500
SCORE_ATTEMPTS = 3
RSS_INTERVAL_S = 0.02
SERVER_START_TIMEOUT_S = 60.0


class ServingFailure(RuntimeError):
    """A served model did not answer usably (after retries): the candidate fails the gate, not the input."""


@contextmanager
def temporary_servers(models: dict[str, ModelRef], work_dir: Path) -> Iterator[dict[str, ModelServerHandle]]:
    """Serve each model (role -> ref) in parallel in a fresh run directory; stop them all on exit.

    The run directory is removed after a clean exit and kept after an error, so the log paths named in
    the error still exist.
    """
    run_dir = Path(work_dir).resolve() / f"gates-{uuid.uuid4().hex[:12]}"
    run_dir.mkdir(parents=True)

    def start(role: str) -> ModelServerHandle:
        ref = models[role]
        try:
            return start_model_server(
                ref.model_dir, ref.sha256, run_dir, name=f"gate-{role}", timeout=SERVER_START_TIMEOUT_S
            )
        except (ModelServerError, ModelDirError, ArtifactDigestError, TimeoutError) as exc:
            raise GateInputError(
                f"the {role} model server ({ref.name} {ref.version}) did not start: {exc}; fix the model"
                " directory or its runtime"
            ) from None

    try:
        with ThreadPoolExecutor(max_workers=len(models)) as pool:
            futures = {role: pool.submit(start, role) for role in models}
            handles = {role: future.result() for role, future in futures.items()}
        yield handles
    finally:
        stop_all(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def stop_all(run_dir: Path) -> None:
    """Stop every supervised process under ``run_dir`` (what a gate run started, nothing else)."""
    for state_path in Path(run_dir).glob(f"*/{supervisor.STATE_FILE}"):
        supervisor.stop(state_path)


def score(
    handle: ModelServerHandle, rows: pd.DataFrame, *, input_name: str, output: OutputSpec
) -> tuple[np.ndarray, int]:
    """Scores of ``rows`` as served, in batches; returns (scores, retried batches).

    A batch that fails in a way that can pass on a second try (transport error, 5xx: a model that errors on
    a share of calls is the canary's to judge, not the offline gate's) is retried, up to ``SCORE_ATTEMPTS``
    times. A deterministic answer (4xx, no such output, wrong shape) raises ServingFailure at once, with the
    key to set: asking again would give the same answer.
    """
    out: list[np.ndarray] = []
    retries = 0
    with http.client(handle.url, timeout=30.0) as client:
        for start in range(0, len(rows), SCORE_BATCH_ROWS):
            batch = rows.iloc[start : start + SCORE_BATCH_ROWS]
            body = v2_request(batch, input_name=input_name, output=output.tensor)
            where = f"{handle.version} failed to score rows {start}-{start + len(batch) - 1}"
            for attempt in range(SCORE_ATTEMPTS):
                try:
                    out.append(_try_batch(client, handle.infer_url, body, output, len(batch)))
                    break
                except OutputMismatch as exc:
                    raise ServingFailure(f"{where}: {exc}") from None
                except _Transient as exc:
                    retries += 1
                    if attempt == SCORE_ATTEMPTS - 1:
                        raise ServingFailure(f"{where} {SCORE_ATTEMPTS} times: {exc}") from None
    return np.concatenate(out), retries


class _Transient(RuntimeError):
    """A failure that may not repeat: worth another try."""


def _try_batch(client: httpx.Client, url: str, body: dict, output: OutputSpec, n_rows: int) -> np.ndarray:
    """One batch's scores; _Transient for what may pass on a retry, OutputMismatch for what cannot."""
    try:
        resp = client.post(url, json=body)
    except httpx.TransportError as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    if resp.status_code >= 500:
        raise _Transient(f"HTTP {resp.status_code}: {resp.text[:200]}")
    if resp.status_code != 200:
        raise OutputMismatch(
            f"HTTP {resp.status_code}: {resp.text[:200]}; the model server refuses the request as it is encoded:"
            " check schema.json (feature order, input tensor name) and mlrelease:model.output.tensor (the output"
            " asked for) against the model"
        )
    try:
        payload = resp.json()
    except ValueError:
        raise OutputMismatch(f"the response is not JSON: {resp.text[:200]}") from None
    return np.asarray(read_scores(payload, output, n_rows), dtype=np.float64)


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (0 for processes that are gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class _RssSampler:
    """Samples a process tree's RSS on a thread while a load runs; ``peak`` is the largest sample."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(tree_rss(self.pid))
            if self._stop.wait(RSS_INTERVAL_S):
                return

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_rss(self.pid))


@dataclass(frozen=True)
class TimedRun:
    """One server's measured constant-rate requests, in send order.

    ``by_request_ms[k]`` is the latency of the k-th request, None when it failed (failures are counted, not
    timed). ``offered_rps`` is the rate requests were actually sent at (below the configured rate only when
    the load generator itself could not keep up); ``duration_s`` runs from the first send to the last answer.
    """

    by_request_ms: list[float | None]
    first_error: str | None
    offered_rps: float | None
    duration_s: float

    @property
    def latencies_ms(self) -> list[float]:
        """Latencies of the successful (HTTP 200) requests."""
        return [ms for ms in self.by_request_ms if ms is not None]

    @property
    def errors(self) -> int:
        return sum(ms is None for ms in self.by_request_ms)


@dataclass(frozen=True)
class LoadMeasurement:
    """A warm-up, then a measured constant-rate run: the candidate's, and the incumbent's interleaved with it.

    Memory is the candidate's process tree: resident memory is per process, so the incumbent serving beside
    it does not show up in these figures.
    """

    candidate: TimedRun
    incumbent: TimedRun | None
    steady_rss: int
    peak_rss: int
    rss_samples: int

    def pairs_ms(self) -> tuple[list[float], list[float]]:
        """(candidate, incumbent) latencies of the k-th requests both answered: same row, half a period apart."""
        if self.incumbent is None:
            return [], []
        both = [
            (c, i)
            for c, i in zip(self.candidate.by_request_ms, self.incumbent.by_request_ms, strict=True)
            if c is not None and i is not None
        ]
        return [c for c, _ in both], [i for _, i in both]


def single_row_bodies(rows: pd.DataFrame, count: int, input_name: str, output: OutputSpec) -> list[bytes]:
    """One V2 request body per held-out row (the first ``count`` rows), naming the output scores are read from,
    as the router asks for it on a client's behalf."""
    subset = rows.iloc[: max(1, min(count, len(rows)))]
    return [
        json.dumps(v2_request(subset.iloc[i : i + 1], input_name=input_name, output=output.tensor)).encode()
        for i in range(len(subset))
    ]


def measure_load(
    handle: ModelServerHandle,
    bodies: Sequence[bytes],
    *,
    rate: float,
    warmup: int,
    requests: int,
    incumbent: tuple[ModelServerHandle, Sequence[bytes]] | None = None,
) -> LoadMeasurement:
    """Warm up with ``warmup`` requests, read steady RSS, then send ``requests`` at ``rate`` while sampling RSS.

    With an ``incumbent`` (its server, and the same rows as bodies naming its own output), it gets the same
    requests (same rows, same order) at the same rate from the same
    event loop, each sent half a period after the candidate's: the two runs interleave request by request,
    so both versions see the same machine at the same moments and a busy runner slows both alike. This
    costs no extra time (the runs overlap), and each version still gets ``rate`` requests per second.
    """
    targets = [(handle, bodies)] if incumbent is None else [(handle, bodies), incumbent]

    async def run(count: int, offset: int) -> list[list[loadgen.Result]]:
        async def one(session: aiohttp.ClientSession, k: int, target: ModelServerHandle, own: Sequence[bytes]):
            ordered = [own[(offset + i) % len(own)] for i in range(count)]
            await asyncio.sleep(k / (len(targets) * rate))
            return await loadgen.constant_rate(session, target.infer_url, ordered, rate, count)

        async with loadgen.session() as session:
            return list(await asyncio.gather(*(one(session, k, *t) for k, t in enumerate(targets))))

    if warmup:
        loadgen.run(run(warmup, 0))
    steady = tree_rss(handle.pid)
    with _RssSampler(handle.pid) as sampler:
        runs = loadgen.run(run(requests, warmup))
    return LoadMeasurement(
        candidate=_timed(runs[0]),
        incumbent=_timed(runs[1]) if incumbent is not None else None,
        steady_rss=steady,
        peak_rss=max([steady, *sampler.samples]),
        rss_samples=len(sampler.samples) + 1,
    )


def _timed(results: list[loadgen.Result]) -> TimedRun:
    failed = [r for r in results if r.status != 200]
    send_span = max(r.sent for r in results) - min(r.sent for r in results)
    return TimedRun(
        by_request_ms=[r.latency_s * 1000 if r.status == 200 else None for r in results],
        first_error=(failed[0].error or f"HTTP {failed[0].status}") if failed else None,
        offered_rps=(len(results) - 1) / send_span if send_span > 0 else None,
        duration_s=max(r.done for r in results) - min(r.sent for r in results),
    )
