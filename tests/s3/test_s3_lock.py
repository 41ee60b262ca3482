"""The release lock on an s3:// backend, against the real object store: runners in separate processes share only
the bucket; one holds, the others are refused naming it; a SIGKILLed holder's lock is taken over after its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from automation.lock import LEASE_ENV, LockBusy, ReleaseLock, holder, release_lock
from automation.s3_lock import S3Lease
from automation.s3server import S3Server
from automation.stores.s3 import Bucket
from serving.wait import wait_until

PROJECT = "mlrelease"
HOLD = """
import sys, time
from automation.s3_lock import S3Lease
with S3Lease(sys.argv[1], "mlrelease", sys.argv[2], "promote v3"):
    print("held", flush=True)
    time.sleep(600)
"""


def _held(stack: str, url: str) -> dict | None:
    return holder(Path.cwd(), stack, url)  # the project directory plays no part on s3://


def _hold(url: str, stack: str, lease_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, LEASE_ENV: str(lease_s)}
    child = subprocess.Popen([sys.executable, "-c", HOLD, url, stack], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_runner_is_refused_naming_the_holder_while_heartbeats_outlive_the_lease(
    s3: S3Server, s3_env, monkeypatch
) -> None:
    url = s3.backend_url()
    child = _hold(url, "staging", lease_s=2.0)
    try:
        seen = _held("staging", url)
        assert seen is not None and seen["operation"] == "promote v3" and seen["pid"] == child.pid
        # Three leases later the holder is still alive and renewing: still refused.
        deadline = time.monotonic() + 6.0
        refusals = 0
        while time.monotonic() < deadline:
            with pytest.raises(LockBusy) as busy, S3Lease(url, PROJECT, "staging", "rollback"):
                pass
            refusals += 1
            time.sleep(0.5)
        message = str(busy.value)
        assert f"promote v3 (pid {child.pid} on " in message and "run rollback again" in message, message
        assert refusals >= 5
        assert _held("other-stack", url) is None  # one lock per stack
    finally:
        child.kill()
        child.wait()


def test_a_sigkilled_holder_is_taken_over_after_its_lease_and_not_before(s3: S3Server, s3_env, monkeypatch) -> None:
    url = s3.backend_url()
    monkeypatch.setenv(LEASE_ENV, "3")
    child = _hold(url, "prod", lease_s=3.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    # The lease has not run out: a dead holder is indistinguishable from a slow one.
    with pytest.raises(LockBusy), S3Lease(url, PROJECT, "prod", "rollback"):
        pass

    def take() -> S3Lease | None:
        try:
            return S3Lease(url, PROJECT, "prod", "rollback").__enter__()
        except LockBusy:
            return None

    lease = wait_until(take, 30, "the dead holder's lease to run out", interval=0.2)
    took = time.monotonic() - killed
    try:
        assert lease.took_over is not None and lease.took_over["pid"] == child.pid
        assert lease.took_over["age_s"] >= 3.0
        assert _held("prod", url)["pid"] == os.getpid()
    finally:
        lease.__exit__(None, None, None)
    assert _held("prod", url) is None
    print(f"lock taken over {took:.2f}s after the holder's SIGKILL (lease 3 s)")


def test_of_two_runners_racing_for_a_stale_lock_exactly_one_wins(s3: S3Server, s3_env, monkeypatch) -> None:
    url = s3.backend_url()
    monkeypatch.setenv(LEASE_ENV, "1")
    child = _hold(url, "race", lease_s=1.0)
    child.kill()
    child.wait()
    wait_until(lambda: _held("race", url) is None, 30, "the dead holder's lease to run out")
    barrier, won, refused = threading.Barrier(4), [], []

    def runner() -> None:
        lease = S3Lease(url, PROJECT, "race", "promote")
        barrier.wait()
        try:
            won.append(lease.__enter__())
        except LockBusy:
            refused.append(lease)

    threads = [threading.Thread(target=runner) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert len(won) == 1 and len(refused) == 3, (won, refused)
    finally:
        for lease in won:
            lease.__exit__(None, None, None)


def test_an_unreachable_bucket_refuses_with_one_line_and_reads_as_held(s3_env) -> None:
    url = "s3://mlrelease-state?endpoint=http://127.0.0.1:9&use_path_style=true&disable_https=true&region=us-east-1"
    with pytest.raises(LockBusy) as refused, S3Lease(url, PROJECT, "prod", "promote v2"):
        pass
    message = str(refused.value)
    assert "could not be taken" in message and "check the bucket's endpoint" in message and "\n" not in message
    assert _held("prod", url)["operation"].startswith("unknown (the lock's bucket did not answer")


def test_the_backend_url_picks_the_lock(tmp_path, s3: S3Server, s3_env) -> None:
    assert isinstance(release_lock(tmp_path, "prod", "promote", s3.backend_url()), S3Lease)
    assert isinstance(release_lock(tmp_path, "prod", "promote", (tmp_path / "state").as_uri()), ReleaseLock)
    bucket = Bucket.from_backend_url("s3://state?endpoint=127.0.0.1:9000&disable_https=true&use_path_style=true")
    assert (bucket.name, bucket.endpoint, bucket.path_style) == ("state", "http://127.0.0.1:9000", True)
    assert Bucket.from_backend_url("s3://state").endpoint is None  # AWS itself: the SDK's endpoint for the region


def test_a_malformed_lease_is_refused_in_one_line_before_any_request(monkeypatch) -> None:
    monkeypatch.setenv(LEASE_ENV, "soon")
    url = "s3://mlrelease-state?endpoint=http://127.0.0.1:9&use_path_style=true&disable_https=true"
    with pytest.raises(LockBusy, match=r"MLRELEASE_LOCK_LEASE_SECONDS='soon' is not a number of seconds"):
        S3Lease(url, PROJECT, "prod", "promote v2")
    monkeypatch.setenv(LEASE_ENV, "0.1")
    with pytest.raises(LockBusy, match=r"outside 1\.\.3600 seconds"):
        S3Lease(url, PROJECT, "prod", "promote v2")
