"""Temporary model servers for the gates, and the measurements taken through them.

The gates must see the model exactly as it will be served: the same MLServer runtime, the same V2
encoding, the same process. So each gate run starts real servers on 127.0.0.1 (allocated ports, a run
directory of its own so nothing is shared with live servers), scores the held-out rows through V2, drives
a constant-rate load against the candidate while sampling its process tree's resident memory, and stops
every server it started, whatever happens (the caller runs inside a Pulumi ``check``: nothing may be left
running).
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil

from components.gate_inputs import GateInputError, ModelRef
from serving import loadgen, supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError
from serving.client import v2_request
from serving.modelserver import ModelServerError, ModelServerHandle, start_model_server

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


def stop_server(handle: ModelServerHandle) -> None:
    """Stop one server early (the incumbent, before the candidate's latency is measured)."""
    supervisor.stop(handle.state_path)


def score(
    handle: ModelServerHandle, rows: pd.DataFrame, *, input_name: str, output_name: str
) -> tuple[np.ndarray, int]:
    """Scores of ``rows`` as served, in batches; returns (scores, retried batches).

    A batch that fails is retried (a model that errors on a share of calls is the canary's to judge,
    not the offline gate's); one that fails ``SCORE_ATTEMPTS`` times raises ServingFailure.
    """
    out: list[np.ndarray] = []
    retries = 0
    with httpx.Client(timeout=30.0) as client:
        for start in range(0, len(rows), SCORE_BATCH_ROWS):
            batch = rows.iloc[start : start + SCORE_BATCH_ROWS]
            body = v2_request(batch, input_name=input_name)
            for attempt in range(SCORE_ATTEMPTS):
                problem = _try_batch(client, handle.infer_url, body, output_name, len(batch), out)
                if problem is None:
                    break
                retries += 1
                if attempt == SCORE_ATTEMPTS - 1:
                    raise ServingFailure(
                        f"{handle.version} failed to score rows {start}-{start + len(batch) - 1}"
                        f" {SCORE_ATTEMPTS} times: {problem}"
                    )
    return np.concatenate(out), retries


def _try_batch(
    client: httpx.Client, url: str, body: dict, output_name: str, n_rows: int, out: list[np.ndarray]
) -> str | None:
    """Send one batch; append its scores to ``out`` and return None, or return what went wrong."""
    try:
        resp = client.post(url, json=body)
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    outputs = {o["name"]: o for o in resp.json().get("outputs", [])}
    if output_name not in outputs:
        return f"no output {output_name!r} in the response (outputs: {sorted(outputs)})"
    scores = np.asarray(outputs[output_name]["data"], dtype=np.float64).reshape(-1)
    if scores.shape[0] != n_rows:
        return f"{scores.shape[0]} scores for {n_rows} rows; the model must answer one score per row"
    out.append(scores)
    return None


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
class LoadMeasurement:
    """A warm-up, then a measured constant-rate run against one server.

    ``offered_rps`` is the rate requests were actually sent at (below the configured rate only when the
    load generator itself could not keep up); ``duration_s`` runs from the first send to the last answer.
    """

    latencies_ms: list[float]
    errors: int
    first_error: str | None
    offered_rps: float | None
    duration_s: float
    steady_rss: int
    peak_rss: int
    rss_samples: int


def single_row_bodies(rows: pd.DataFrame, count: int, input_name: str) -> list[bytes]:
    """One V2 request body per held-out row (the first ``count`` rows), as clients send them."""
    subset = rows.iloc[: max(1, min(count, len(rows)))]
    return [json.dumps(v2_request(subset.iloc[i : i + 1], input_name=input_name)).encode() for i in range(len(subset))]


def measure_load(
    handle: ModelServerHandle, bodies: Sequence[bytes], *, rate: float, warmup: int, requests: int
) -> LoadMeasurement:
    """Warm up with ``warmup`` requests, read steady RSS, then send ``requests`` at ``rate`` while sampling RSS.

    Latencies are those of successful (HTTP 200) requests; failures are counted, not timed.
    """

    async def run(count: int, offset: int) -> list[loadgen.Result]:
        ordered = [bodies[(offset + i) % len(bodies)] for i in range(count)]
        async with loadgen.session() as session:
            return await loadgen.constant_rate(session, handle.infer_url, ordered, rate, count)

    if warmup:
        loadgen.run(run(warmup, 0))
    steady = tree_rss(handle.pid)
    with _RssSampler(handle.pid) as sampler:
        results = loadgen.run(run(requests, warmup))
    ok = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status != 200]
    send_span = max(r.sent for r in results) - min(r.sent for r in results)
    first_error = None
    if failed:
        first_error = failed[0].error or f"HTTP {failed[0].status}"
    return LoadMeasurement(
        latencies_ms=[r.latency_s * 1000 for r in ok],
        errors=len(failed),
        first_error=first_error,
        offered_rps=(len(results) - 1) / send_span if send_span > 0 else None,
        duration_s=max(r.done for r in results) - min(r.sent for r in results),
        steady_rss=steady,
        peak_rss=max([steady, *sampler.samples]),
        rss_samples=len(sampler.samples) + 1,
    )
