"""The release lock on the Kubernetes target: a ``coordination.k8s.io/v1`` Lease per stack in its namespace.

Runners that share a cluster share its API server, so the lock lives there, beside what it protects:

- **take**: create ``Lease mlrelease-<stack>``; the API server creates a name once, so of two runners exactly one
  gets 201 and the other 409;
- **hold**: a heartbeat replaces it every lease/3 with the ``resourceVersion`` last written, so only the holder
  can renew it (anyone else's replace is a 409);
- **expire**: a lease whose last write is older than ``leaseDurationSeconds`` belongs to a holder that died; the
  next runner replaces it with the stale ``resourceVersion``, so of two racing runners one wins. The age is the
  API server's own clock twice: the time it stamped on the last write (``managedFields``) against the ``Date``
  of the answer, so runners' clocks need not agree (a holder's ``renewTime`` is its own clock, kept for
  ``kubectl`` readers);
- **release**: delete it with the ``resourceVersion`` as a precondition, so only our own lease is removed.

The identity needs ``get``, ``create``, ``update`` and ``delete`` on ``leases`` in the namespace.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from automation.heartbeat import Heartbeat
from automation.lock import LockBusy, lease_seconds
from components.targets.base import TargetError
from components.targets.kube_api import KubeAPI

ANNOTATION = "mlrelease.dev/lock"


def lease_name(stack: str) -> str:
    return f"mlrelease-{stack.rsplit('/', 1)[-1].lower()}"[:63]


def _micro(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age(lease: dict[str, Any], response: httpx.Response) -> float:
    """Seconds since the lease's last write, by the API server's clock (its Date against its managedFields)."""
    stamps = [f.get("time") for f in lease["metadata"].get("managedFields") or [] if f.get("time")]
    written = max((datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps), default=None)
    date = response.headers.get("date")
    now = parsedate_to_datetime(date).timestamp() if date else time.time()
    if written is None:  # no server stamp (an API server that drops managedFields): the holder's own clock
        renew = lease["spec"].get("renewTime")
        written = datetime.fromisoformat(renew.replace("Z", "+00:00")).timestamp() if renew else 0.0
    return max(0.0, now - written)


def _record(lease: dict[str, Any]) -> dict[str, Any]:
    """Who holds it, as the holder wrote it in the lease's annotation."""
    try:
        return json.loads((lease["metadata"].get("annotations") or {}).get(ANNOTATION) or "{}")
    except ValueError:
        return {}


class KubeLease:
    """``with KubeLease(api, namespace, stack, "rollback"):`` — LockBusy at once if a live holder has the stack."""

    def __init__(self, api: KubeAPI, namespace: str, stack: str, operation: str) -> None:
        try:
            self.lease_s = lease_seconds()
        except ValueError as exc:
            raise LockBusy(f"{exc}; nothing was changed") from None
        self.api, self.stack, self.operation = api, stack, operation
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name, self.namespace = lease_name(stack), namespace
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.since = time.time()
        self.took_over: dict[str, Any] | None = None
        self._version: str | None = None
        self._beat: Heartbeat | None = None

    def _body(self, version: str | None = None, transitions: int = 0) -> dict[str, Any]:
        host, operation = socket.gethostname(), self.operation
        record = {"pid": os.getpid(), "host": host, "operation": operation, "since": self.since}
        metadata: dict[str, Any] = {"name": self.name, "annotations": {ANNOTATION: json.dumps(record)}}
        if version is not None:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.holder_id,
                "leaseDurationSeconds": max(1, round(self.lease_s)),
                "acquireTime": _micro(self.since),
                "renewTime": _micro(time.time()),
                "leaseTransitions": transitions,
            },
        }

    def __enter__(self) -> KubeLease:
        try:
            created = self.api.request("POST", self.path, json=self._body())
            if created.status_code == 409:
                self._take_over()
            else:
                self._version = self.api.checked(created, f"create Lease {self.namespace}/{self.name}")["metadata"][
                    "resourceVersion"
                ]
        except TargetError as exc:
            raise LockBusy(
                f"the release lock of stack {self.stack} (Lease {self.namespace}/{self.name}) could not be taken:"
                f" {exc}; then run {self.operation} again; nothing was changed"
            ) from None
        self._beat = Heartbeat(
            f"release lease of stack {self.stack}", "the API server", self.lease_s, self._renew, (TargetError,)
        )
        self._beat.start()
        return self

    def _take_over(self) -> None:
        response = self.api.request("GET", f"{self.path}/{self.name}")
        if response.status_code == 404:  # released between our create and our read: once more, the normal way
            created = self.api.request("POST", self.path, json=self._body())
            if created.status_code != 409:
                self._version = self.api.checked(created, "create Lease")["metadata"]["resourceVersion"]
                return
            response = self.api.request("GET", f"{self.path}/{self.name}")
        lease = self.api.checked(response, f"get Lease {self.namespace}/{self.name}")
        age, duration = _age(lease, response), float(lease["spec"].get("leaseDurationSeconds") or self.lease_s)
        if age > duration:
            transitions = int(lease["spec"].get("leaseTransitions") or 0) + 1
            body = self._body(lease["metadata"]["resourceVersion"], transitions)
            replaced = self.api.request("PUT", f"{self.path}/{self.name}", json=body)
            if replaced.status_code != 409:
                self._version = self.api.checked(replaced, "replace Lease")["metadata"]["resourceVersion"]
                self.took_over = {**_record(lease), "age_s": age}
                return
            response = self.api.request("GET", f"{self.path}/{self.name}")  # another runner took it over first
            lease = self.api.checked(response, f"get Lease {self.namespace}/{self.name}")
            age = _age(lease, response)
        raise LockBusy(busy_message(self.stack, lease, age, self.operation))

    def _renew(self) -> bool:
        """One heartbeat: replace the Lease on our resourceVersion; False once another runner has taken it over."""
        answer = self.api.request("PUT", f"{self.path}/{self.name}", json=self._body(self._version))
        if answer.status_code in (404, 409):
            return False
        self._version = self.api.checked(answer, "renew Lease")["metadata"]["resourceVersion"]
        return True

    def __exit__(self, *_exc: object) -> None:
        if self._beat is not None:
            self._beat.stop()
        try:
            lease = self.api.get(f"{self.path}/{self.name}")
            if lease is not None and lease["spec"].get("holderIdentity") == self.holder_id:
                preconditions = {"preconditions": {"resourceVersion": lease["metadata"]["resourceVersion"]}}
                self.api.request("DELETE", f"{self.path}/{self.name}", json=preconditions)
        except TargetError as exc:  # the lease ends by itself: the operation's outcome stands
            print(f"mlrelease: warning: the release lease of stack {self.stack} was not released ({exc}):"
                  f" it expires {self.lease_s:.0f}s after its last renewal", file=sys.stderr)  # fmt: skip


def busy_message(stack: str, lease: dict[str, Any], age: float, operation: str) -> str:
    record = _record(lease)
    since = record.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "an unknown time"
    left = max(0.0, float(lease["spec"].get("leaseDurationSeconds") or 0) - age)
    return (
        f"stack {stack} is busy: {record.get('operation', 'another operation')} (pid {record.get('pid')} on"
        f" {record.get('host', 'another runner')}) has held it since {when}; its lease ends {left:.0f}s after its last"
        f" renewal; wait for it to finish, then run {operation} again"
    )


def holder(api: KubeAPI, namespace: str, stack: str) -> dict[str, Any] | None:
    """Who holds the stack's lease (``{"pid", "host", "operation", "since"}``), or None when free or expired."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease_name(stack)}"
    try:
        response = api.request("GET", path)
        if response.status_code == 404:
            return None
        lease = api.checked(response, f"get Lease {namespace}/{lease_name(stack)}")
    except TargetError as exc:  # unknown is not free: a watcher pauses rather than fire into a promote
        return {"pid": None, "host": None, "operation": f"unknown (the lease could not be read: {exc})", "since": None}
    if _age(lease, response) > float(lease["spec"].get("leaseDurationSeconds") or 0):
        return None
    record = _record(lease)
    return {k: record.get(k) for k in ("pid", "host", "operation", "since")}
