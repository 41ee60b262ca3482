"""The release lock on the Kubernetes target: a ``coordination.k8s.io`` Lease on the cluster's real API server.

A second holder is refused naming the first while heartbeats outlive the lease; a SIGKILLed holder's lease is
refused until it expires by the API server's clock, then taken over; a released lease is gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automation.lock import LEASE_ENV, LockBusy
from components.targets.kube_api import KubeAPI
from components.targets.kube_lease import KubeLease, holder, lease_name
from serving.wait import wait_until
from tests.cluster.conftest import Cluster
from tests.kubernetes.conftest import NAMESPACE

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
HOLD = """
import sys, time
from pathlib import Path
from components.targets.kube_api import KubeAPI
from components.targets.kube_lease import KubeLease
api = KubeAPI(Path(sys.argv[1]), None, Path(sys.argv[2]))
with KubeLease(api, sys.argv[3], sys.argv[4], "promote v9"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def api(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KubeAPI:
    monkeypatch.setenv(LEASE_ENV, "3")
    return KubeAPI(cluster.kubeconfig, None, tmp_path / "kube")


def test_a_second_holder_is_refused_naming_the_first_and_a_released_lease_is_gone(api: KubeAPI) -> None:
    stack = "lease-a"
    with KubeLease(api, NAMESPACE, stack, "promote v2") as first:
        versions = {first._version}
        # Renewals keep it held past its 3 s duration: wait until the lease was rewritten three times.
        wait_until(lambda: versions.add(first._version) or len(versions) >= 4, 30, "three heartbeats")
        with pytest.raises(LockBusy) as refused:
            KubeLease(api, NAMESPACE, stack, "rollback").__enter__()
        host = socket.gethostname()
        assert str(refused.value).startswith(f"stack {stack} is busy: promote v2 (pid {os.getpid()} on {host})")
        assert str(refused.value).endswith("wait for it to finish, then run rollback again")
        assert holder(api, NAMESPACE, stack)["operation"] == "promote v2"
    assert api.get(f"{LEASES}/{lease_name(stack)}") is None and holder(api, NAMESPACE, stack) is None


def test_a_killed_holder_is_taken_over_once_its_lease_has_expired(
    api: KubeAPI, cluster: Cluster, tmp_path: Path
) -> None:
    stack = "lease-b"
    argv = [sys.executable, "-c", HOLD, str(cluster.kubeconfig), str(tmp_path / "kube2"), NAMESPACE, stack]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, LEASE_ENV: "3"})
    try:
        assert proc.stdout.readline().strip() == "held"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    killed = time.monotonic()
    with pytest.raises(LockBusy, match=rf"promote v9 \(pid {proc.pid} on "):
        KubeLease(api, NAMESPACE, stack, "promote v3").__enter__()

    def taken() -> KubeLease | None:
        try:
            return KubeLease(api, NAMESPACE, stack, "promote v3").__enter__()
        except LockBusy:
            return None

    lease = wait_until(taken, 30, "the dead holder's lease to expire and be taken over", interval=0.5)
    try:
        assert time.monotonic() - killed >= 1.5  # not before its 3 s lease (less a renewal, whole-second stamps)
        assert lease.took_over is not None and lease.took_over["pid"] == proc.pid
        assert holder(api, NAMESPACE, stack)["operation"] == "promote v3"
    finally:
        lease.__exit__(None, None, None)
