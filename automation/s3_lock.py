"""The release lock on an ``s3://`` backend: one object per stack, taken with a conditional put, held by a lease.

Runners on different machines share nothing but the bucket, so the lock is an object there,
``.mlrelease/locks/<project>/<stack>.json``, beside Pulumi's own ``.pulumi/``:

- **take**: ``PutObject`` with ``If-None-Match: *``. S3 (and SeaweedFS) write it only if no object has that key,
  atomically, so of two runners exactly one gets ``200`` and the other ``412 Precondition Failed``;
- **hold**: a heartbeat thread rewrites the object every ``lease/3`` seconds with ``If-Match: <our ETag>``, so
  only the holder can renew it;
- **expire**: a lock whose object was last written more than ``lease`` seconds ago belongs to a holder that
  died (SIGKILL, a lost machine): the next runner takes it over with ``If-Match: <the stale ETag>``, so of two
  runners racing for a stale lock one wins. Age is the server's ``Last-Modified`` against the server's ``Date``
  on the same answer: runners' clocks do not have to agree;
- **release**: delete the object, after checking it is still ours.

Pulumi's own DIY-backend lock (``.pulumi/locks/``) has no lease (pulumi#8973, #9148): a crashed update leaves it
behind until ``pulumi cancel``. This lock covers the whole release operation (traffic moves before and during
the engine's update), and a dead holder's lock frees itself.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.exceptions

from automation.heartbeat import Heartbeat
from automation.lock import DEFAULT_LEASE_S, LockBusy, lease_seconds
from automation.stores.s3 import STORE_ERRORS, Bucket, error_code, missing

LOCK_PREFIX = ".mlrelease/locks"


def lock_key(project: str, stack: str) -> str:
    return f"{LOCK_PREFIX}/{project}/{stack.rsplit('/', 1)[-1]}.json"


def _conflict(exc: botocore.exceptions.ClientError) -> bool:
    """412: the condition did not hold; 409: another conditional write to the key was in flight."""
    return error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


@dataclass(frozen=True)
class Held:
    """A lock object as read: who holds it, and how old its last write is by the server's clock."""

    record: dict[str, Any]
    etag: str
    age_s: float

    def expired(self) -> bool:
        return self.age_s > float(self.record.get("lease_s") or DEFAULT_LEASE_S)


class S3Lease:
    """``with S3Lease(backend_url, project, stack, "rollback"):`` — LockBusy at once if a live holder has it."""

    def __init__(self, backend_url: str, project: str, stack: str, operation: str) -> None:
        self.bucket = Bucket.from_backend_url(backend_url)
        self.key = self.bucket.key(lock_key(project, stack))
        try:
            self.lease_s = lease_seconds()
        except ValueError as exc:
            raise LockBusy(f"{exc}; nothing was changed") from None
        self.stack, self.operation = stack, operation
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.since = time.time()
        self.took_over: dict[str, Any] | None = None
        self._client = self.bucket.client()
        self._etag: str | None = None
        self._beat: Heartbeat | None = None

    def _body(self) -> bytes:
        record = {
            "holder": self.holder_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "operation": self.operation,
            "since": self.since,
            "heartbeat": time.time(),
            "lease_s": self.lease_s,
        }
        return json.dumps(record).encode()

    def _put(self, **condition: str) -> str:
        answer = self._client.put_object(
            Bucket=self.bucket.name, Key=self.key, Body=self._body(), ContentType="application/json", **condition
        )
        return answer["ETag"]

    def __enter__(self) -> S3Lease:
        try:
            try:
                self._etag = self._put(IfNoneMatch="*")
            except botocore.exceptions.ClientError as exc:
                if not _conflict(exc):
                    raise
                self._take_over()
        except STORE_ERRORS as exc:
            raise LockBusy(
                f"the release lock of stack {self.stack} could not be taken at s3://{self.bucket.name}/{self.key}"
                f" ({exc}): check the bucket's endpoint and the AWS credentials, then run {self.operation} again;"
                " nothing was changed"
            ) from None
        self._beat = Heartbeat(
            f"release lock of stack {self.stack}", "the bucket", self.lease_s, self._renew, STORE_ERRORS
        )
        self._beat.start()
        return self

    def _take_over(self) -> None:
        held = read(self._client, self.bucket.name, self.key)
        if held is None:  # released between our put and our read: take it the normal way, once
            try:
                self._etag = self._put(IfNoneMatch="*")
                return
            except botocore.exceptions.ClientError as exc:
                if not _conflict(exc):
                    raise
                held = read(self._client, self.bucket.name, self.key)
        if held is not None and held.expired():
            try:
                self._etag = self._put(IfMatch=held.etag)
                self.took_over = {**held.record, "age_s": held.age_s}
                return
            except botocore.exceptions.ClientError as exc:
                if not _conflict(exc):
                    raise
                held = read(self._client, self.bucket.name, self.key)  # another runner took it over first
        raise LockBusy(busy_message(self.stack, held, self.operation))

    def _renew(self) -> bool:
        """One heartbeat: rewrite the object on our ETag; False once another runner has taken it over."""
        try:
            self._etag = self._put(IfMatch=self._etag or "")
        except botocore.exceptions.ClientError as exc:
            if _conflict(exc) or missing(exc):
                return False
            raise
        return True

    def __exit__(self, *_exc: object) -> None:
        if self._beat is not None:
            self._beat.stop()
        try:
            held = read(self._client, self.bucket.name, self.key)
            if held is not None and held.record.get("holder") == self.holder_id:
                self._client.delete_object(Bucket=self.bucket.name, Key=self.key)
        except STORE_ERRORS as exc:  # the lease ends by itself: the operation's outcome stands
            print(f"mlrelease: warning: the release lock of stack {self.stack} was not released ({exc}):"
                  f" it expires {self.lease_s:.0f}s after its last heartbeat", file=sys.stderr)  # fmt: skip


def read(client: Any, bucket: str, key: str) -> Held | None:
    """The lock object and its age by the server's clock, or None when there is none."""
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if missing(exc):
            return None
        raise
    try:
        record = json.loads(answer["Body"].read() or b"{}")
    except ValueError:
        record = {}
    headers = answer["ResponseMetadata"].get("HTTPHeaders", {})
    now = parsedate_to_datetime(headers["date"]).timestamp() if "date" in headers else time.time()
    return Held(record=record, etag=answer["ETag"], age_s=max(0.0, now - answer["LastModified"].timestamp()))


def busy_message(stack: str, held: Held | None, operation: str) -> str:
    record = held.record if held is not None else {}
    since = record.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "an unknown time"
    lease = float(record.get("lease_s") or DEFAULT_LEASE_S)
    left = f"; its lease ends {max(0.0, lease - held.age_s):.0f}s after its last heartbeat" if held else ""
    return (
        f"stack {stack} is busy: {record.get('operation', 'another operation')} (pid {record.get('pid')} on"
        f" {record.get('host', 'another runner')}) has held it since {when}{left}; wait for it to finish, then run"
        f" {operation} again"
    )


def holder(backend_url: str, project: str, stack: str) -> dict[str, Any] | None:
    """Who holds the stack's lock (``{"pid", "host", "operation", "since"}``), or None when it is free or expired."""
    bucket = Bucket.from_backend_url(backend_url)
    try:
        held = read(bucket.client(), bucket.name, bucket.key(lock_key(project, stack)))
    except STORE_ERRORS as exc:  # unknown is not free: a watcher pauses rather than fire into a promote
        return {
            "pid": None,
            "host": None,
            "operation": f"unknown (the lock's bucket did not answer: {exc})",
            "since": None,
        }
    if held is None or held.expired():
        return None
    return {k: held.record.get(k) for k in ("pid", "host", "operation", "since")}
