"""The renewal loop both cross-machine release locks share: the bucket's lock object and the cluster's Lease.

A lease is renewed every ``lease/3`` seconds with a condition only its holder can meet (the object's ETag, the
Lease's resourceVersion), so a holder whose lease expired and was taken over finds out at its next renewal. Two
ways to lose it, each warned about once, after which the loop stops: the condition was refused (another runner
holds it now), or no renewal reached the store for a whole lease. The operation itself carries on: what it
changes is still guarded by the engine's own lock and by the canary split's lease, and it ends as it would.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


class Heartbeat:
    """``renew()`` returns False when the lease is no longer ours and raises one of ``transient`` when the
    renewal did not reach ``where``; ``what`` names the lock in the warning."""

    def __init__(
        self,
        what: str,
        where: str,
        lease_s: float,
        renew: Callable[[], bool],
        transient: tuple[type[BaseException], ...],
    ) -> None:
        self.what, self.where, self.lease_s, self._renew, self._transient = what, where, lease_s, renew, transient
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _run(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self._renew():
                    self._lose("another runner took it over (our lease had expired)")
                    return
                last_ok = time.monotonic()
            except self._transient:
                pass
            if time.monotonic() - last_ok > self.lease_s:
                self._lose(f"no renewal reached {self.where} for {self.lease_s:g}s")
                return

    def _lose(self, why: str) -> None:
        self.lost = why
        print(f"mlrelease: warning: lost the {self.what}: {why}", file=sys.stderr)
