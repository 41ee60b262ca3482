"""One release operation per stack at a time: promote, rollback and drill never interleave.

Pulumi's own stack lock covers only the ``pulumi up`` itself, but a rollback moves traffic *before* its up
and a canary moves it during one, so mlrelease takes its own lock around the whole operation. It is an
``flock`` on a file under ``.mlrelease/locks/``: the kernel drops it when its holder dies, so a crashed
promote or rollback never leaves the stack locked, and the file says who holds it for the error message.
The watcher never holds it while watching; it looks (``holder``) to pause during a promote, and takes it
only to fire a rollback.

That holds on one machine. On an ``s3://`` backend runners share only the bucket, so there the lock is an
object in it, taken with a conditional put and held by a lease (``automation.s3_lock``); ``release_lock`` and
``holder`` pick by the backend URL. A target that runners share may hold a lock of its own as well (the
Kubernetes target: a ``coordination.k8s.io`` Lease in its namespace), taken after the backend's: runners on
separate backends that release to one cluster still exclude each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.targets.base import Target

from automation.backend_files import PROJECT_NAME

LOCK_DIR = Path(".mlrelease") / "locks"
DEFAULT_LEASE_S = 30.0
LEASE_ENV = "MLRELEASE_LOCK_LEASE_SECONDS"


class LockBusy(RuntimeError):
    """Another release operation holds the stack; the message says which, since when, and what to do."""


def lease_seconds() -> float:
    """The lease: ``MLRELEASE_LOCK_LEASE_SECONDS`` or 30 s. A dead holder's lock is taken over after it."""
    raw = os.environ.get(LEASE_ENV)
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        raise ValueError(f"{LEASE_ENV}={raw!r} is not a number of seconds: set it to e.g. 30") from None
    if not 1.0 <= value <= 3600.0:
        raise ValueError(f"{LEASE_ENV}={raw} is outside 1..3600 seconds: a lease must outlive a heartbeat")
    return value


def lock_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / LOCK_DIR / f"{stack}.lock"


def holder(project_dir: Path, stack: str, backend_url: str | None = None, target: Target | None = None) -> dict | None:
    """Who holds the stack's lock (``{"pid", "operation", "since"}``), or None when it is free: the backend's,
    or the target's own."""
    held = _backend_holder(project_dir, stack, backend_url)
    return held if held is not None or target is None else target.lock_holder(stack)


def _backend_holder(project_dir: Path, stack: str, backend_url: str | None) -> dict | None:
    if backend_url is not None and backend_url.startswith("s3://"):
        from automation import s3_lock  # boto3 is imported only where the backend is in S3

        return s3_lock.holder(backend_url, PROJECT_NAME, stack)
    path = lock_path(project_dir, stack)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # empty while a new holder is still writing who it is: held all the same
                return json.loads(path.read_text() or "{}") or {"pid": None, "operation": "unknown", "since": None}
            except (OSError, ValueError):
                return {"pid": None, "operation": "unknown", "since": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _exclusive(fd: int, patience_s: float = 2.0) -> bool:
    """Take the lock, waiting out a watcher's momentary shared look (microseconds), never a real holder."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


class ReleaseLock:
    """``with ReleaseLock(project_dir, stack, "rollback"):`` — LockBusy at once if another operation holds it."""

    def __init__(self, project_dir: Path, stack: str, operation: str) -> None:
        self.path, self.stack, self.operation = lock_path(project_dir, stack), stack, operation
        self._fd: int | None = None

    def __enter__(self) -> ReleaseLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _exclusive(fd):
            os.close(fd)
            held = holder(self.path.parents[2], self.stack) or {}
            since = held.get("since")
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "an unknown time"
            raise LockBusy(
                f"stack {self.stack} is busy: {held.get('operation', 'another operation')} (pid {held.get('pid')})"
                f" has held it since {when}; wait for it to finish, then run {self.operation} again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "operation": self.operation, "since": time.time()}).encode())
        self._fd = fd
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def release_lock(
    project_dir: Path, stack: str, operation: str, backend_url: str, target: Target | None = None
) -> AbstractContextManager:
    """The stack's release lock for ``backend_url`` (a lease in the bucket on ``s3://``, an ``flock`` otherwise),
    then ``target``'s own if it keeps one."""
    if backend_url.startswith("s3://"):
        from automation.s3_lock import S3Lease

        backend: AbstractContextManager = S3Lease(backend_url, PROJECT_NAME, stack, operation)
    else:
        backend = ReleaseLock(project_dir, stack, operation)
    return _both(backend, target, stack, operation) if target is not None else backend


@contextlib.contextmanager
def _both(backend: AbstractContextManager, target: Target, stack: str, operation: str) -> Iterator[None]:
    with backend:
        own = target.release_lock(stack, operation)  # taken only once the backend's is held
        with own if own is not None else contextlib.nullcontext():
            yield
