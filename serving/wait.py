"""Poll a condition with a deadline instead of sleeping.

Tests and process managers must never use a fixed sleep as synchronisation: a sleep is either too short
(flaky) or too long (slow). ``wait_until`` polls ``pred`` until it returns something truthy and raises a
``TimeoutError`` that names what was awaited when the deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    pred: Callable[[], T], timeout: float, what: str, interval: float = 0.02, max_interval: float = 0.25
) -> T:
    """Return the first truthy value of ``pred()``; raise TimeoutError naming ``what`` after ``timeout`` s.

    ``interval`` is the first polling period, doubled up to ``max_interval`` so long waits stay cheap.
    An exception raised by ``pred`` propagates: the condition decides what "not yet" means.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = pred()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)
