"""Faults injected during a canary step on the real local runtime, and what each leaves behind.

Each test breaks one part while a step bakes (or while the step's split is live) and asserts the outcome, the
live split afterwards as the router itself reports it, and the explanation a user reads. The figures they
print (error window of a router restart, time to halt without telemetry) are recorded in RELIABILITY.md.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pandas as pd
import psutil
import pytest

from components.canary import StepVerdict, run_step
from components.targets.base import Routes
from components.targets.local import PROMETHEUS, ROUTER, LocalTarget
from serving import supervisor
from serving.client import v2_request
from serving.sample_models import FEATURES, MODEL_NAME, SampleModels
from serving.wait import wait_until
from tests.canary.test_canary_steps import canary_spec, router_routes


class _Step:
    """``run_step`` in a thread, with an event set once the step's weights are live and it bakes."""

    def __init__(self, target: LocalTarget, candidate: str, incumbent: str, weight: float = 25) -> None:
        self.baking = threading.Event()
        self.verdict: StepVerdict | None = None

        def progress(line: str) -> None:
            print(line)
            if "baking" in line:
                self.baking.set()

        def run() -> None:
            self.verdict = run_step(
                target,
                step=1,
                weight=weight,
                candidate=candidate,
                incumbent=incumbent,
                spec=canary_spec(min_pairs=600, max_bake_seconds=60.0),
                progress=progress,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.baking.wait(30), "the step never started baking"

    def result(self) -> StepVerdict:
        self.thread.join(120)
        assert self.verdict is not None, "the step did not end within 120 s"
        return self.verdict


def test_candidate_server_killed_mid_step_fails_the_step_and_names_it(
    target: LocalTarget, deploy_candidate: Callable[[str], str], sample_models: SampleModels
) -> None:
    incumbent = sample_models.models["incumbent"].version
    candidate = deploy_candidate("good")
    server = target.deployment(candidate)
    assert server is not None and server.process.pid
    step = _Step(target, candidate, incumbent)
    os.kill(server.process.pid, signal.SIGKILL)
    verdict = step.result()
    assert verdict.failed_check == "availability", verdict.explanation
    assert f"the candidate {candidate}'s model server" in verdict.explanation
    assert f"back on {incumbent}" in verdict.explanation and verdict.reverted
    assert router_routes(target) == ({incumbent: 100, candidate: 0}, incumbent)


def test_prometheus_stopped_mid_step_halts_and_reverts(
    target: LocalTarget, deploy_candidate: Callable[[str], str], sample_models: SampleModels
) -> None:
    incumbent = sample_models.models["incumbent"].version
    candidate = deploy_candidate("good")
    step = _Step(target, candidate, incumbent)
    stopped_at = time.time()
    supervisor.stop(target.run_dir / PROMETHEUS / supervisor.STATE_FILE)
    try:
        verdict = step.result()
        print(f"halted {verdict.ended_at - stopped_at:.2f} s after Prometheus stopped")
        assert verdict.failed_check == "target" and not verdict.passed, verdict.explanation
        assert "the target failed during the step: prometheus" in verdict.explanation
        assert "a step that cannot be judged fails" in verdict.explanation
        assert f"back on {incumbent}" in verdict.explanation
        assert router_routes(target) == ({incumbent: 100, candidate: 0}, incumbent)
    finally:
        target.ensure_runtime(target.config())
    assert target.status().processes[PROMETHEUS].state == "running"


@pytest.fixture
def body(sample_models: SampleModels) -> bytes:
    rows = pd.read_parquet(sample_models.holdout)[FEATURES].head(1)
    return orjson.dumps(v2_request(rows))


class _Client:
    """Requests at a steady pace in a thread, each recorded as (sent at, answered 200)."""

    def __init__(self, url: str, body: bytes, interval: float = 0.01) -> None:
        self.seen: list[tuple[float, bool]] = []
        self._stop = threading.Event()

        def run() -> None:
            with httpx.Client(timeout=5.0) as client:
                while not self._stop.is_set():
                    sent = time.monotonic()
                    try:
                        ok = client.post(url, content=body, headers={"Content-Type": "application/json"})
                        self.seen.append((sent, ok.status_code == 200))
                    except httpx.TransportError:
                        self.seen.append((sent, False))
                    self._stop.wait(interval)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self.thread.join(30)
        return self.seen


@pytest.fixture
def step_split(target: LocalTarget, deploy_candidate: Callable[[str], str], sample_models: SampleModels) -> Iterator:
    incumbent = sample_models.models["incumbent"].version
    candidate = deploy_candidate("good")
    yield target.set_routes(Routes(weights={incumbent: 75, candidate: 25}, primary=incumbent))


def test_router_killed_comes_back_with_the_live_split(target: LocalTarget, step_split: Routes, body: bytes) -> None:
    url = f"{target.status().router_url}/v2/models/{MODEL_NAME}/infer"
    router_state = target.run_dir / ROUTER / supervisor.STATE_FILE
    killed = supervisor.read_state(router_state).pid
    assert killed is not None
    client = _Client(url, body)
    wait_until(lambda: sum(ok for _, ok in client.seen) >= 50, 30, "requests answered before the kill")
    os.kill(killed, signal.SIGKILL)
    wait_until(
        lambda: supervisor.read_state(router_state).pid not in (None, killed) and client.seen[-1][1],
        60,
        "the supervisor to restart the router",
    )
    wait_until(lambda: sum(ok for _, ok in client.seen[-50:]) == 50, 30, "50 answers in a row after the restart")
    seen = client.stop()
    failed = [sent for sent, ok in seen if not ok]
    window = (max(failed) - min(failed)) if failed else 0.0
    print(f"router SIGKILL: {len(failed)} of {len(seen)} requests failed, client-visible window {window:.3f} s")
    weights, primary = router_routes(target)
    assert (weights, primary) == ({v: int(w) for v, w in step_split.weights.items()}, step_split.primary)
    # Every failure falls inside the restart: none after the first answer that followed it.
    recovered = next(sent for sent, ok in seen if ok and failed and sent > min(failed))
    assert all(sent < recovered for sent in failed)


def test_the_runtime_listens_on_loopback_only_and_keeps_its_secrets_private(target: LocalTarget) -> None:
    listening = []
    for state in target.run_dir.glob("*/state.json"):
        pid = supervisor.read_state(state).pid
        if pid is not None and psutil.pid_exists(pid):
            for proc in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True)):
                listening += [c.laddr for c in proc.net_connections(kind="inet") if c.status == "LISTEN"]
    assert listening and all(_loopback(addr.ip) for addr in listening), listening
    secret = (target.run_dir / "admin-token").read_text().strip()
    holders = [p for p in target.run_dir.rglob("*") if p.is_file() and _holds(p, secret)]
    assert holders, "the token is expected in the admin-token file and the router config"
    loose = [str(p) for p in holders if p.stat().st_mode & 0o077]
    assert loose == [], f"files holding the admin token readable by others: {loose}"
    assert [str(p) for p in holders if p.suffix == ".log"] == [], "the admin token was written to a log"


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _holds(path: Path, secret: str) -> bool:
    try:
        return secret.encode() in path.read_bytes()
    except OSError:
        return False
