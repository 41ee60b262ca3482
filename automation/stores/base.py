"""The interface every backend store implements: list a directory, read an object. Nothing else is needed.

mlrelease reads the engine's own files without the engine (a rollback's first traffic move, ``audit``, the
audit chain's seal), and Pulumi's DIY backends keep them at the same keys on every store: ``.pulumi/stacks/``,
``.pulumi/history/<project>/<stack>/``. Only the factory names a concrete store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class StoreError(OSError):
    """The store did not answer, or refused: the message names the store and the key. Missing is
    ``FileNotFoundError`` instead (a stack never updated, a deleted history file)."""


class BackendStore(Protocol):
    """Read-only access to a backend's objects by slash-separated key, relative to the backend's root."""

    url: str  # the backend URL, for messages

    def names(self, directory: str, start_after: str | None = None) -> Iterator[str]:
        """The names of the objects directly under ``directory`` in name order, after ``start_after`` when given
        (none when the directory does not exist). Lazy: a bucket is listed a page at a time, as far as read."""
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when it does not exist, StoreError when it cannot be read."""
        ...

    def where(self, key: str) -> str:
        """The object as a message names it: a path on this machine, or ``s3://bucket/key``."""
        ...
