"""The audit trail's hash chain: each verified checkpoint seals the one before it and the history since.

Pulumi's per-update files (``<stack>-<nanos>.history.json`` and ``.checkpoint.json``) are plain files anyone who
can write the state directory can edit without a trace. Every verified checkpoint therefore records:

- ``evidence_sha256``: the digest of the gate evidence it carries;
- ``history_sealed``: the name and sha256 of every per-update file written since the checkpoint before it
  (failed and blocked attempts included), in the order the engine wrote them;
- ``chain_previous_sha256``: the digest of the checkpoint record it follows (None for a stack's first one);
- ``chain_sha256``: the digest of its own sealed fields, the chain's head once it is the latest.

An edited or deleted update file, a reordered or removed checkpoint, or evidence that no longer matches breaks
a digest that a later record holds; ``automation.audit_verify`` walks them. Digests are over a canonical JSON
form, so a record reads the same after Pulumi's round trip through its state (numbers come back as float64:
a whole float and an int are one number here; an absent key and a null are one too).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

# Fields of a checkpoint record the chain covers: the release as recorded, its stamp and its own chain links.
SEALED_FIELDS = (
    "live",
    "previous",
    "config",
    "data_digests",
    "config_digest",
    "evidence",
    "verdicts",
    "environment",
    "previous_release",
    "restored_from",
    "verified_at",
    "evidence_sha256",
    "history_sealed",
    "chain_previous_sha256",
)
UPDATE_FILE = re.compile(r"^(?P<stack>.+)-(?P<nanos>\d+)\.(?P<kind>history|checkpoint)\.json(?:\.gz)?$")


def canonical(value: Any) -> Any:
    """``value`` as the chain digests it: whole floats as ints, dict keys sorted, null-valued keys dropped."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if v is not None}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    raise TypeError(f"a checkpoint record holds a {type(value).__name__}, which the audit chain cannot digest")


def digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON."""
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def record_digest(record: Mapping[str, Any]) -> str:
    """The digest of a checkpoint record's sealed fields (its ``chain_sha256`` when it was sealed)."""
    return digest({field: record.get(field) for field in SEALED_FIELDS})


class UpdateFiles(Protocol):
    """A stack's per-update files where its backend keeps them (a directory, a bucket prefix)."""

    def names(self) -> Iterable[str]: ...

    def read(self, name: str) -> bytes: ...


def update_files(history: UpdateFiles, stack: str) -> list[tuple[int, str]]:
    """``stack``'s per-update files as (nanos, name), in the order the engine wrote them."""
    found = []
    for name in history.names():
        match = UPDATE_FILE.match(name)
        if match and match["stack"] == stack:
            kind_order = 0 if match["kind"] == "checkpoint" else 1  # the engine saves the checkpoint first
            found.append((int(match["nanos"]), kind_order, name))
    return [(nanos, name) for nanos, _, name in sorted(found)]


def file_digest(history: UpdateFiles, name: str) -> str:
    return hashlib.sha256(history.read(name)).hexdigest()


def seal(
    record: Mapping[str, Any], previous: Mapping[str, Any] | None, history: UpdateFiles | None, stack: str
) -> dict:
    """The chain fields of a new checkpoint ``record`` that follows ``previous`` (None on a stack's first).

    ``history`` is the stack's per-update files when mlrelease can read its backend; the files sealed are
    those after the last one ``previous`` sealed (all of them when it sealed none, so files a record could not
    read are sealed by the next one).
    """
    sealed: list[dict[str, str]] | None = None
    if history is not None:
        after = ((previous or {}).get("history_sealed") or [{}])[-1].get("file")
        try:
            files = update_files(history, stack)
            if after is not None:
                names = [name for _, name in files]
                files = files[names.index(after) + 1 :] if after in names else files
            sealed = [{"file": name, "sha256": file_digest(history, name)} for _, name in files]
        except OSError:  # a release that passed is not failed by its audit trail: the next record seals these
            sealed = None
    fields = {
        "evidence_sha256": digest(record.get("evidence")) if record.get("evidence") is not None else None,
        "history_sealed": sealed,
        "chain_previous_sha256": record_digest(previous) if previous else None,
    }
    return {**fields, "chain_sha256": record_digest({**record, **fields})}
