"""A backend's own files, read without the engine: the stack's latest checkpoint, on ``file://`` and ``s3://``.

Every engine call costs a process start and a backend load (0.5-1 s each on a CI runner); a rollback's first
traffic move must not wait for three of them. Pulumi's DIY backends keep a stack's latest checkpoint at
``.pulumi/stacks/<project>/<stack>.json`` (``.json.gz`` under ``PULUMI_SELF_MANAGED_STATE_GZIP``) and, per
update, a history record and checkpoint under ``.pulumi/history/<project>/<stack>/``, at the same keys in a
directory or a bucket. Reading one is a file read or one GET; what it says is what ``pulumi stack output`` would
say, because the engine reads the same object.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from automation.stores.base import BackendStore
from automation.stores.factory import backend_root, backend_store

__all__ = ["PROJECT_NAME", "StackHistory", "backend_root", "decode", "stack_history", "stack_outputs"]

STACK_TYPE = "pulumi:pulumi:Stack"
PROJECT_NAME = "mlrelease"  # Pulumi.yaml's name: the backend keeps the project's stacks under it


def decode(name: str, data: bytes) -> Any:
    """A state file's JSON, gunzipped first when its name says so."""
    return json.loads(gzip.decompress(data) if name.endswith(".gz") else data)


def stack_outputs(backend_url: str, project: str, stack: str) -> dict[str, Any] | None:
    """The stack's outputs as its latest checkpoint holds them, or None when there is no readable checkpoint
    (another kind of backend, a stack never updated, a file being replaced, a bucket not answering): the caller
    then asks the engine."""
    store = backend_store(backend_url)
    if store is None:
        return None
    base = f".pulumi/stacks/{project}/{stack.rsplit('/', 1)[-1]}"
    for key in (f"{base}.json", f"{base}.json.gz"):
        try:
            checkpoint = decode(key, store.read(key))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
        resources = ((checkpoint.get("checkpoint") or {}).get("latest") or {}).get("resources") or []
        root_resource = next((r for r in resources if r.get("type") == STACK_TYPE), None)
        return dict((root_resource or {}).get("outputs") or {})
    return None


@dataclass(frozen=True)
class StackHistory:
    """One stack's per-update files (``<stack>-<nanos>.history.json`` and ``.checkpoint.json``) in its store."""

    store: BackendStore
    directory: str

    def names(self, start_after: str | None = None) -> Iterator[str]:
        """The directory's file names in name order (after ``start_after``), listed lazily."""
        return self.store.names(self.directory, start_after)

    def read(self, name: str) -> bytes:
        return self.store.read(f"{self.directory}/{name}")

    def where(self, name: str) -> str:
        """The file as a message names it."""
        return self.store.where(f"{self.directory}/{name}")


def stack_history(backend_url: str, project: str, stack: str) -> StackHistory | None:
    """The stack's history in its backend; None for a backend mlrelease cannot read."""
    store = backend_store(backend_url)
    if store is None:
        return None
    return StackHistory(store, f".pulumi/history/{project}/{stack.rsplit('/', 1)[-1]}")
